"""``mixed_precision: bf16`` on the tiny model, on the CPU: every trainer and the sampler run 2 steps, the
matmuls run in bf16 (seen by a spy on ``F.linear``), the losses are finite, and the parameters stay fp32
(the optimiser's master weights) and change."""

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import marker_prefs, words
from safetensors.torch import load_file

from rlp_align.core.errors import UserError
from rlp_align.core.io import write_jsonl
from rlp_align.data.records import Instruction, SampleSet, user_prompt
from rlp_align.models import resolve_model
from rlp_align.train.training import LoraConfig, OptimConfig, make_accelerator, read_metrics

pytestmark = pytest.mark.device


@pytest.fixture
def linear_dtypes(monkeypatch):
    """(weight dtype, output dtype) of every ``F.linear`` call made during the test."""
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    real = F.linear

    def spy(input, weight, bias=None):
        out = real(input, weight, bias)
        seen.append((weight.dtype, out.dtype))
        return out

    monkeypatch.setattr(F, "linear", spy)
    yield seen
    make_accelerator(0)  # later tests in this process get a full-precision Accelerator again


def assert_bf16_compute_fp32_weights(seen: list[tuple[torch.dtype, torch.dtype]]) -> None:
    assert seen, "no linear layer ran"
    assert {w for w, _ in seen} == {torch.float32}  # master weights are never cast in place
    assert torch.bfloat16 in {o for _, o in seen}  # autocast did compute in bf16


def assert_finite_metrics(out, key: str) -> list[dict]:
    rows = read_metrics(out)
    values = [r[key] for r in rows if key in r]
    assert len(values) == 2 and all(math.isfinite(v) for v in values), values
    for row in rows:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float)), row
    return rows


def assert_saved_fp32_and_changed(folder, base: dict[str, torch.Tensor], skip: str = "score") -> None:
    tuned = load_file(folder / "model.safetensors")
    assert {t.dtype for t in tuned.values()} == {torch.float32}
    changed = [k for k in base if k in tuned and skip not in k and not torch.equal(base[k], tuned[k])]
    assert any("layers.0.mlp" in k for k in changed), changed


@pytest.fixture(scope="module")
def tiny_weights() -> dict[str, torch.Tensor]:
    return load_file(resolve_model("tiny") / "model.safetensors")


def test_sft_bf16(tmp_path, linear_dtypes, tiny_weights):
    from rlp_align.train.sft import SFTConfig, train_sft

    records = [Instruction(user_prompt(f"Question {i}: say something."), reference=f"Answer {i} is true.")
               for i in range(8)]
    optim = OptimConfig(learning_rate=1e-3, batch_size=4, max_steps=2, mixed_precision="bf16")
    train_sft(SFTConfig(model="tiny", output_dir=str(tmp_path), max_length=64, optim=optim), records)
    assert_bf16_compute_fp32_weights(linear_dtypes)
    assert_finite_metrics(tmp_path, "loss")
    assert_saved_fp32_and_changed(tmp_path / "model", tiny_weights)


def test_reward_bf16(tmp_path, linear_dtypes, tiny_weights):
    from rlp_align.train.reward import RewardConfig, train_reward_model

    optim = OptimConfig(learning_rate=1e-3, batch_size=8, max_steps=2, mixed_precision="bf16")
    train_reward_model(RewardConfig(model="tiny", output_dir=str(tmp_path), max_length=64, optim=optim),
                       marker_prefs(16))
    assert_bf16_compute_fp32_weights(linear_dtypes)
    assert_finite_metrics(tmp_path, "loss")
    assert_saved_fp32_and_changed(tmp_path / "model", tiny_weights)


def test_refine_uml_bf16(tmp_path, linear_dtypes, tiny_weights):
    from rlp_align.rlp.refine import RefineConfig, refine_reward_model

    rng = random.Random(0)
    samples = [SampleSet(user_prompt(f"Task {i}: {words(rng, 3)}."), [words(rng, rng.randint(3, 7)) for _ in range(4)])
               for i in range(6)]
    cfg = RefineConfig(method="uml", base_model="tiny", output_dir=str(tmp_path), max_length=64, uml_batch_size=4,
                       optim={"learning_rate": 1e-3, "batch_size": 8, "max_steps": 2, "mixed_precision": "bf16"})
    refine_reward_model(cfg, marker_prefs(16), samples=samples)
    assert_bf16_compute_fp32_weights(linear_dtypes)
    rows = assert_finite_metrics(tmp_path, "loss")
    assert any(k.startswith("l_m") or "uml" in k for k in rows[0]), rows[0]  # the L_M term ran too
    assert_saved_fp32_and_changed(tmp_path / "model", tiny_weights)


def count_e(prompts, responses):
    return torch.tensor([r.count("e") / 4.0 for r in responses])


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_ppo_bf16(tmp_path, linear_dtypes, tiny_weights, lora):
    from rlp_align.train.ppo import PPOConfig, train_ppo

    prompts = [user_prompt(f"Write about topic {i}") for i in range(8)]
    cfg = PPOConfig(policy="tiny", output_dir=str(tmp_path), rollout_batch_size=8, step_batch_size=4,
                    max_new_tokens=8, steps=2, lora=LoraConfig(enabled=lora),
                    optim=OptimConfig(learning_rate=1e-2, save_every=100, mixed_precision="bf16"))
    train_ppo(cfg, prompts, count_e)
    assert_bf16_compute_fp32_weights(linear_dtypes)
    rows = assert_finite_metrics(tmp_path, "policy_loss")
    assert all(math.isfinite(r["value_loss"]) and math.isfinite(r["kl"]) for r in rows)
    assert_saved_fp32_and_changed(tmp_path / "model", tiny_weights)


def test_sampling_bf16(tmp_path, linear_dtypes):
    from rlp_align.train.sample import SampleConfig, run_sample

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": user_prompt(f"Say {w}")} for w in ("hello", "goodbye")])
    out = tmp_path / "samples.jsonl"
    summary = run_sample(SampleConfig(policy="tiny", prompts_file=str(prompts), output_file=str(out), n=2,
                                      max_new_tokens=8, mixed_precision="bf16"))
    assert_bf16_compute_fp32_weights(linear_dtypes)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["samples"] == 4 and all(len(r["responses"]) == 2 for r in rows)


def test_precision_can_change_within_one_process_and_bad_values_are_refused():
    assert make_accelerator(0, mixed_precision="bf16").mixed_precision == "bf16"
    assert make_accelerator(0).mixed_precision == "no"
    with pytest.raises(UserError, match="mixed_precision"):
        make_accelerator(0, mixed_precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="fp16.*GPU"):
            make_accelerator(0, mixed_precision="fp16")


def test_the_launcher_may_ask_for_bf16(monkeypatch):
    """`accelerate launch --mixed_precision bf16` (configs/accelerate/*.yaml) sets ACCELERATE_MIXED_PRECISION:
    a config that says "no" follows it; a config that asks for a precision wins."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert make_accelerator(0).mixed_precision == "bf16"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert make_accelerator(0).mixed_precision == "no"
