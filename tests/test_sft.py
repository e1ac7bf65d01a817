import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from rlp_align.core.errors import UserError
from rlp_align.data.records import Instruction, user_prompt
from rlp_align.models import load_tokenizer, resolve_model
from rlp_align.train import training
from rlp_align.train.sft import SFTConfig, encode_examples, sft_batch, sft_loss, train_sft
from rlp_align.train.training import LoraConfig, OptimConfig, read_metrics

pytestmark = pytest.mark.device  # also runs on RLP_TEST_DEVICE (benchmarks/gpu_check.sh)

ANSWERS = ["Paris is the capital of France.", "Water boils at 100 degrees Celsius at sea level.",
           "1. First 2. Second 3. Third", "The quick brown fox jumps over the lazy dog."]



def records(n: int) -> list[Instruction]:
    return [Instruction(user_prompt(f"Question {i}: say something true."), reference=ANSWERS[i % len(ANSWERS)])
            for i in range(n)]


def small_cfg(out, lora: LoraConfig | None = None, **optim) -> SFTConfig:
    """A tiny SFT run; keyword arguments are `optim` settings."""
    optim = OptimConfig(**{"learning_rate": 1e-3, "batch_size": 4, "max_steps": 8, **optim})
    return SFTConfig(model="tiny", output_dir=str(out), max_length=64, optim=optim, lora=lora or LoraConfig())


def test_sft_loss_is_cross_entropy_on_response_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 0, 1, 1]])  # tokens 4 and 5 are the response; predicted at positions 2 and 3
    expected = (F.cross_entropy(logits[0, 2:3], ids[0, 3:4]) + F.cross_entropy(logits[0, 3:4], ids[0, 4:5])) / 2
    assert sft_loss(logits, ids, mask).item() == pytest.approx(expected.item(), abs=1e-6)
    changed = logits.clone()
    changed[0, :2] += 100.0  # logits that predict prompt tokens do not matter
    changed[0, 4] += 100.0  # nor does the prediction after the last token
    assert sft_loss(changed, ids, mask).item() == pytest.approx(expected.item(), abs=1e-6)


def test_loss_mask_marks_exactly_the_reference_and_eos():
    tokenizer = load_tokenizer("tiny")
    examples = encode_examples(tokenizer, records(2), 64)
    ids, attention, loss_mask = sft_batch(examples, tokenizer.pad_token_id)
    for row, (seq, _) in enumerate(examples):
        target = tokenizer(ANSWERS[row], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert ids[row][loss_mask[row].bool()].tolist() == target
        assert attention[row].sum().item() == len(seq)


def test_records_without_reference_are_skipped_or_refused(tmp_path):
    tokenizer = load_tokenizer("tiny")
    with pytest.warns(RuntimeWarning, match="1 of 3 instructions have no reference"):
        assert len(encode_examples(tokenizer, records(2) + [Instruction(user_prompt("hi"))], 64)) == 2
    with pytest.raises(UserError, match="reference"), pytest.warns(RuntimeWarning):
        train_sft(small_cfg(tmp_path / "none"), [Instruction(user_prompt("hi"), reference="  ")])


def test_sft_loss_falls_and_parameters_change(tmp_path):
    out = tmp_path / "sft"
    summary = train_sft(small_cfg(out, max_steps=20, learning_rate=3e-3), records(8), records(4))
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert len(losses) == 20 and losses[-1] < 0.7 * losses[0]
    assert summary["eval"]["loss"] < losses[0]
    base = load_file(resolve_model("tiny") / "model.safetensors")
    tuned = load_file(out / "model/model.safetensors")
    assert not torch.equal(base["model.layers.0.mlp.up_proj.weight"], tuned["model.layers.0.mlp.up_proj.weight"])
    assert (out / "summary.json").exists() and not (out / "checkpoint").exists()


def test_sft_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    full = train_sft(small_cfg(tmp_path / "full", max_steps=6, save_every=3), records(12))
    original_log = training.MetricsLogger.log

    def crash_at_step_5(self, step, metrics):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")
        original_log(self, step, metrics)

    monkeypatch.setattr(training.MetricsLogger, "log", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_sft(small_cfg(tmp_path / "cut", max_steps=6, save_every=3), records(12))
    monkeypatch.setattr(training.MetricsLogger, "log", original_log)
    assert json.loads((tmp_path / "cut/checkpoint/trainer_state.json").read_text())["step"] == 3
    resumed = train_sft(small_cfg(tmp_path / "cut", max_steps=6, save_every=3), records(12))
    assert resumed["resumed_from_step"] == 3 and full["resumed_from_step"] == 0
    a, b = load_file(tmp_path / "full/model/model.safetensors"), load_file(tmp_path / "cut/model/model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-7), key


def test_gradient_accumulation_matches_full_batch(tmp_path):
    # equal-length examples, so the mean of per-micro-batch means is the full-batch mean
    same = [Instruction(user_prompt(f"Question {i}: say something true."), reference=ANSWERS[0]) for i in range(8)]
    train_sft(small_cfg(tmp_path / "one", max_steps=2), same)
    train_sft(small_cfg(tmp_path / "two", max_steps=2, gradient_accumulation_steps=2), same)
    a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "two/model/model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_lora_sft_saves_a_merged_causal_lm(tmp_path):
    out = tmp_path / "lora"
    train_sft(small_cfg(out, max_steps=3, lora=LoraConfig(enabled=True, r=4)), records(8))
    base = load_file(resolve_model("tiny") / "model.safetensors")
    tuned = load_file(out / "model/model.safetensors")
    assert set(tuned) == set(base)
    assert torch.equal(base["model.embed_tokens.weight"], tuned["model.embed_tokens.weight"])
    assert not torch.equal(base["model.layers.1.self_attn.v_proj.weight"],
                           tuned["model.layers.1.self_attn.v_proj.weight"])
