"""Model loading: tiny and built-in models, safety checks, scoring at the last real token."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlp_align import models
from rlp_align.core.errors import UserError
from rlp_align.data import user_prompt
from rlp_align.data.templates import collate, encode_pair, format_prompt


def test_tiny_tokenizer_gets_pad_and_left_padding():
    tok = models.load_tokenizer("tiny")
    assert tok.pad_token is not None and tok.pad_token != tok.eos_token and tok.padding_side == "left"
    assert "<|im_start|>assistant" in format_prompt(tok, user_prompt("hi"))


def test_reward_model_head_is_zero_and_scores_ignore_padding():
    tok = models.load_tokenizer("tiny")
    rm = models.load_reward_model("tiny", new_head=True)
    assert torch.count_nonzero(models.reward_head(rm).weight) == 0
    torch.nn.init.normal_(models.reward_head(rm).weight)
    pairs = [encode_pair(tok, user_prompt("Why is the sky blue?"), r, 128).input_ids for r in ["Rayleigh.", "x"]]
    alone = [models.reward_scores(rm, *collate([p], tok.pad_token_id))[0] for p in pairs]
    for side in ("left", "right"):
        both, hidden = models.reward_scores(rm, *collate(pairs, tok.pad_token_id, side))
        assert torch.allclose(both, torch.cat(alone), atol=1e-5) and hidden.shape == (2, 64)


def test_saved_reward_model_loads_with_auto_class(tmp_path):
    tok = models.load_tokenizer("tiny")
    rm = models.load_reward_model("tiny", new_head=True)
    torch.nn.init.normal_(models.reward_head(rm).weight)
    models.save_model(rm, tok, tmp_path / "rm")
    auto = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert auto.config.num_labels == 1
    ids, mask = collate([encode_pair(tok, user_prompt("q"), "answer", 64).input_ids], tok.pad_token_id)
    assert torch.allclose(auto(input_ids=ids, attention_mask=mask).logits[:, 0], models.reward_scores(rm, ids, mask)[0])
    reloaded = models.load_reward_model(tmp_path / "rm")
    assert torch.equal(models.reward_head(reloaded).weight, models.reward_head(rm).weight)


def test_refusals(tmp_path):
    with pytest.raises(UserError, match="not found"):
        models.resolve_model(tmp_path / "missing")
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        models.resolve_model(tmp_path / "notamodel")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(UserError, match="pickle"):
        models.resolve_model(pickled)
    assert models.resolve_model(pickled, allow_pickle=True) == pickled
    clf = tmp_path / "clf"
    models.save_model(models.load_reward_model("tiny", new_head=True), models.load_tokenizer("tiny"), clf)
    config = json.loads((clf / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    (clf / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="num_labels=1"):
        models.load_reward_model(clf)


def test_tokenizer_without_any_special_token_is_refused():
    class Bare:
        pad_token = eos_token = unk_token = None

        def get_vocab(self):
            return {}

    with pytest.raises(UserError, match="cannot pad"):
        models.ensure_pad_token(Bare())


@pytest.mark.slow
def test_builtin_smollm2_converts_loads_and_answers():
    path = models.resolve_model(models.BUILTIN_MODEL)
    assert (path / "model.safetensors").exists() and not list(path.glob("*.tmp"))
    tok = models.load_tokenizer(models.BUILTIN_MODEL)
    policy = models.load_policy(models.BUILTIN_MODEL)
    assert policy.dtype == torch.float32 and sum(p.numel() for p in policy.parameters()) == 134_515_008
    prompt = format_prompt(tok, user_prompt("What is the capital of France?"))
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = policy.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_build_once_builds_a_cached_model_once_when_asked_at_the_same_time(tmp_path):
    import threading
    import time

    from rlp_align.models.registry import build_once

    calls, start = [], threading.Barrier(3)

    def build(folder):
        calls.append(folder)
        time.sleep(0.5)  # long enough for the other callers to arrive while it builds
        folder.mkdir()
        (folder / "config.json").write_text("{}")

    def ask():
        start.wait()
        build_once(tmp_path / "cache" / "m", build)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [tmp_path / "cache" / "m"] and (tmp_path / "cache" / "m" / "config.json").exists()
