"""Do two models read token ids the same way? Tokenizer fingerprints, compared wherever ids cross models.

PPO hands the policy's sampled ids to the reference (the KL term), to the critic and, when they match, to the
reward model (`ensemble.RewardModelFn.score_tokens`). Under another tokenizer the same id is another token:
a reference with a 49,152-token vocabulary against a 512-token policy gives a KL between unrelated token
spaces, and a smaller one an index error. So every pair that exchanges ids compares fingerprints when it is
loaded, and a mismatch is refused with both folders named.
"""

from __future__ import annotations

import hashlib
import json
import os

from transformers import PreTrainedTokenizerBase

from rlp_align.core.errors import UserError


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of what an id means: the vocabulary (token -> id, added tokens included) and the EOS id."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    data = json.dumps({"vocab": vocab, "eos": tokenizer.eos_token_id}, ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether token ids mean the same thing under both tokenizers (so ids can be passed across)."""
    return a is b or tokenizer_fingerprint(a) == tokenizer_fingerprint(b)


def check_same_tokenizer(models: dict[str, str | os.PathLike | None], *, trust_remote_code: bool = False,
                         advice: dict[str, str] | None = None) -> None:
    """Refuse models that exchange token ids but tokenize differently. ``models``: setting -> model (None: not
    used); the first entry (the policy) is the one the others must match. ``advice``: setting -> what to do
    instead, where the default (a model from the same base, or the setting left unset) is not right."""
    from rlp_align.models.load import load_tokenizer

    (first_key, first), *others = [(k, v) for k, v in models.items() if v is not None]
    base = load_tokenizer(first, trust_remote_code=trust_remote_code)
    for key, model in others:
        if str(model) == str(first):
            continue
        other = load_tokenizer(model, trust_remote_code=trust_remote_code)
        if not same_tokenizer(base, other):
            raise UserError(
                f"{key} {model} uses another tokenizer than {first_key} {first} (vocabularies of {len(other)} and "
                f"{len(base)} tokens, fingerprints {tokenizer_fingerprint(other)} and {tokenizer_fingerprint(base)}): "
                f"they exchange token ids, which would mean different tokens in each. "
                + (advice or {}).get(key, f"Set {key} to a model trained from the same base as {first_key} (or "
                                          f"leave it unset to use {first_key}'s own)."))
