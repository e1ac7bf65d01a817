"""A model's weights match its config in full, and tokenizers are compared by what their ids mean (issue 30 part 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlp_align.core.errors import UserError
from rlp_align.models import load_tokenizer
from rlp_align.models.load import check_weights_match
from rlp_align.models.tokens import same_tokenizer, tokenizer_fingerprint


def info(missing=(), unexpected=(), mismatched=()) -> dict:
    return {"missing_keys": set(missing), "unexpected_keys": set(unexpected), "mismatched_keys": list(mismatched)}


def test_only_the_two_legitimate_gaps_pass(tmp_path: Path):
    check_weights_match(tmp_path, info(missing=["lm_head.weight"]), "a model", tied=True)  # tied embeddings
    check_weights_match(tmp_path, info(missing=["score.weight"], unexpected=["lm_head.weight"]), "an RM",
                        new_head=True)  # a reward model on a causal-LM backbone
    for bad, kwargs in [(info(missing=["lm_head.weight"]), {}),  # untied: the LM head would start random
                        (info(missing=["score.weight"]), {}),  # a classifier folder without its head
                        (info(unexpected=["lm_head.weight"]), {}),  # dropped where no new head is built
                        (info(missing=["model.layers.2.mlp.up_proj.weight"]), {"new_head": True, "tied": True}),
                        (info(unexpected=["model.layers.1.mlp.up_proj.weight"]), {"new_head": True}),
                        (info(mismatched=[("model.embed_tokens.weight", (512, 64), (600, 64))]), {})]:
        with pytest.raises(UserError, match="does not match its weights"):
            check_weights_match(tmp_path, bad, "a model", **kwargs)


def test_fingerprint_is_what_the_ids_mean(tmp_path: Path):
    from rlp_align.worlds.micro import build_tokenizer

    tiny, again = load_tokenizer("tiny"), load_tokenizer("tiny")
    assert tiny is not again and same_tokenizer(tiny, again)
    assert tokenizer_fingerprint(tiny) == tokenizer_fingerprint(again)
    assert not same_tokenizer(tiny, build_tokenizer())
    swapped = build_tokenizer()
    swapped.eos_token = "<bos>"  # same vocabulary, another EOS: sequences would end elsewhere
    assert not same_tokenizer(build_tokenizer(), swapped)
