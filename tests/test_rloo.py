"""RLOO: leave-one-out advantages by hand, learning a learnable reward with no critic, and exact resume."""

import math

import pytest
import torch
from safetensors.torch import load_file
from test_ppo import PROMPTS, count_e, run_then_crash_and_resume

from rlp_align.core.errors import UserError
from rlp_align.models import load_policy
from rlp_align.train.ppo import train_ppo
from rlp_align.train.ppo_losses import rloo_advantages
from rlp_align.train.rloo import RLOOConfig
from rlp_align.train.training import OptimConfig, read_metrics


def test_rloo_advantages_by_hand():
    # two prompts, k = 3 samples each (rows 0-2, 3-5); the last token of row 1 is padding: never read
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    logprobs = torch.tensor([[-1.0, -1.0], [-2.0, -50.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.0], [-1.0, 0.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0], [-2.0, -1.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1]])
    adv, rewards = rloo_advantages(scores, logprobs, ref, mask, kl_coef=0.5, k=3)
    # KL sums: 1, -1, 0 | 0, 0, 2  ->  R = 1 - .5, 2 + .5, 6 | 0, 0, 3 - 1
    torch.testing.assert_close(rewards, torch.tensor([0.5, 2.5, 6.0, 0.0, 0.0, 2.0]))
    # A_i = R_i - mean of the other two: .5 - 4.25, 2.5 - 3.25, 6 - 1.5 | 0 - 1, 0 - 1, 2 - 0
    torch.testing.assert_close(adv, torch.tensor([-3.75, -0.75, 4.5, -1.0, -1.0, 2.0]))
    # equal rewards within a group: no signal at all
    same, _ = rloo_advantages(torch.full((4,), 7.0), torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(4, 2), 0.1, 2)
    assert same.abs().max().item() == 0.0
    with pytest.raises(ValueError, match="whole groups"):
        rloo_advantages(scores, logprobs, ref, mask, kl_coef=0.5, k=4)


def rloo_cfg(out, **kw) -> RLOOConfig:
    base = dict(policy="tiny", output_dir=str(out), rollout_batch_size=16, step_batch_size=8, rloo_k=4,
                max_new_tokens=16, kl_coef=0.0, seed=0)
    optim = OptimConfig(learning_rate=1e-2, save_every=kw.pop("save_every", 100))
    return RLOOConfig(**{**base, "optim": optim, **kw})


def test_rloo_raises_a_learnable_reward_without_a_critic(tmp_path):
    seen = []
    summary = train_ppo(rloo_cfg(tmp_path, steps=10, kl_coef=0.01), PROMPTS, count_e,
                        gold_fn=lambda p, r: seen.append([m[-1]["content"] for m in p]) or count_e(p, r))
    rows = read_metrics(tmp_path)
    first = sum(r["reward"] for r in rows[:2]) / 2
    last = sum(r["reward"] for r in rows[-2:]) / 2
    assert last > first + 1.0, (first, last)
    assert "value_loss" not in rows[0]  # no critic was trained
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["policy_loss"]) for r in rows)
    for prompts in seen:  # 16 sequences per step: 4 prompts, each sampled k = 4 times in a row
        assert len(prompts) == 16 and len(set(prompts)) == 4
        assert all(len(set(prompts[i : i + 4])) == 1 for i in range(0, 16, 4))
    assert summary["config"]["estimator"] == "rloo"
    load_policy(tmp_path / "model")


def test_rloo_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = dict(steps=4, save_every=2, rollout_batch_size=8, step_batch_size=4, rloo_k=2, max_new_tokens=8)
    run_then_crash_and_resume(rloo_cfg, tmp_path, 3, **cfg)
    train_ppo(rloo_cfg(tmp_path / "b", **cfg), PROMPTS, count_e)
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["reward"] for r in rows_a] == pytest.approx([r["reward"] for r in rows_b])


def test_rloo_rejects_groups_that_do_not_fit_the_batch(tmp_path):
    with pytest.raises(UserError, match="rloo_k"):
        train_ppo(rloo_cfg(tmp_path, rollout_batch_size=6, step_batch_size=3, rloo_k=4), PROMPTS, count_e)
    with pytest.raises(UserError, match="rloo_k"):
        train_ppo(rloo_cfg(tmp_path, rloo_k=1), PROMPTS, count_e)


@pytest.mark.parametrize("optimizer,ppo", [("rloo", {"rloo_k": 2}), ("ppo", {"lora": {"enabled": True}, "critic": "lora"})])
def test_pipeline_policy_stage_uses_the_chosen_optimiser(tmp_path, optimizer, ppo):
    """The pipeline's PPO stage (PPO1, PPO2 and the ensembles all call it) runs RLOO or LoRA PPO on request."""
    import json

    from rlp_align.core.config import load_config
    from rlp_align.models import load_reward_model, load_tokenizer, save_model
    from rlp_align.pipeline import stages_impl
    from rlp_align.pipeline.run import PipelineConfig, _validate, ppo_section, preset_path

    overrides = {"policy_optimizer": optimizer, "data": {"n_unlabelled": 8},
                 "ppo": {"steps": 2, "rollout_batch_size": 4, "step_batch_size": 4, "max_new_tokens": 6, **ppo}}
    cfg = load_config(PipelineConfig, preset_path("tiny"), overrides)
    _validate(cfg)
    pools = stages_impl.build_pools(cfg.data, cfg.seed, tmp_path / "pools")
    save_model(load_reward_model("tiny", new_head=True), load_tokenizer("tiny"), tmp_path / "rm")
    out = stages_impl.train_ppo(ppo_section(cfg), cfg.annotator, "tiny", [str(tmp_path / "rm")], pools, cfg.seed,
                                tmp_path / "ppo")
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["config"]["estimator"] == ("rloo" if optimizer == "rloo" else "gae")
    assert math.isfinite(out["final_reward"])
    load_policy(out["model"])
    cfg.ppo.estimator = "rloo"  # the pipeline's one knob is policy_optimizer
    cfg.policy_optimizer = "ppo"
    with pytest.raises(UserError, match="policy_optimizer"):
        _validate(cfg)
