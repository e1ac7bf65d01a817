"""RLOO: leave-one-out advantages by hand, learning a learnable reward with no critic, and exact resume."""

import math

import pytest
import torch
from safetensors.torch import load_file
from test_ppo import PROMPTS, count_e, run_then_crash_and_resume

from rlp_align.core.errors import UserError
from rlp_align.models import load_policy
from rlp_align.train.ppo import train_ppo
from rlp_align.train.ppo_losses import policy_loss, rloo_advantages, sequence_policy_loss
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


def test_sequence_and_token_ratios_by_hand():
    """Per-token ratios 1.5 and 0.7 (a third position is padding, never read), clip 0.2 (issue 22 section 5).

    token level (PPO): each token clipped on its own, the mean over tokens;
    sequence level (TRL's RLOOTrainer): one ratio 1.5 * 0.7 = 1.05 for the response, inside the clip range.
    """
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1, 1, 0]])
    for a, token_loss, seq_loss in [
        (2.0, (max(-2 * 1.5, -2 * 1.2) + max(-2 * 0.7, -2 * 0.8)) / 2, -2 * 1.05),  # -1.9 and -2.1
        (-1.0, (max(1.5, 1.2) + max(0.7, 0.8)) / 2, 1.05),  # 1.15 and 1.05
    ]:
        new = torch.tensor([[math.log(1.5), math.log(0.7), 9.0]], requires_grad=True)
        tok, tok_clip, _ = policy_loss(new, old, torch.full((1, 3), a), mask, clip=0.2)
        seq, seq_clip, seq_kl = sequence_policy_loss(new, old, torch.tensor([a]), mask, clip=0.2)
        assert tok.item() == pytest.approx(token_loss) and seq.item() == pytest.approx(seq_loss)
        assert tok.item() != pytest.approx(seq.item())
        assert seq_clip.item() == 0.0 and seq_kl.item() == pytest.approx(0.5 * math.log(1.05) ** 2)
        (grad,) = torch.autograd.grad(seq, new)  # d(-A * rho)/d log pi_t = -A * rho on every real token
        torch.testing.assert_close(grad, torch.tensor([[-a * 1.05, -a * 1.05, 0.0]]))
    # A = 2: the first token is clipped (no gradient), the second is not: -A * 0.7 / 2 tokens
    new = torch.tensor([[math.log(1.5), math.log(0.7), 9.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(policy_loss(new, old, torch.full((1, 3), 2.0), mask, clip=0.2)[0], new)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -2.0 * 0.7 / 2, 0.0]]))
    # a product of ratios outside the clip range: 1.5 * 1.5 = 2.25 is clipped to 1.2 for A > 0
    new = torch.tensor([[math.log(1.5), math.log(1.5), 0.0]])
    seq, seq_clip, _ = sequence_policy_loss(new, old, torch.tensor([2.0]), mask, clip=0.2)
    assert seq.item() == pytest.approx(-2 * 1.2) and seq_clip.item() == 1.0


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
    from rlp_align.pipeline.pipeline_config import world_config
    from rlp_align.pipeline.run import PipelineConfig, _validate, ppo_section, preset_path

    overrides = {"policy_optimizer": optimizer, "data": {"n_unlabelled": 8},
                 "ppo": {"steps": 2, "rollout_batch_size": 4, "step_batch_size": 4, "max_new_tokens": 6, **ppo}}
    cfg = load_config(PipelineConfig, preset_path("tiny"), overrides)
    _validate(cfg)
    pools = stages_impl.build_pools(cfg.data, world_config(cfg), cfg.seed, tmp_path / "pools")
    save_model(load_reward_model("tiny", new_head=True), load_tokenizer("tiny"), tmp_path / "rm")
    out = stages_impl.train_ppo(ppo_section(cfg), cfg.annotator, world_config(cfg), "tiny", [str(tmp_path / "rm")], pools,
                                cfg.seed,
                                tmp_path / "ppo")
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["config"]["estimator"] == ("rloo" if optimizer == "rloo" else "gae")
    assert math.isfinite(out["final_reward"])
    load_policy(out["model"])
    cfg.ppo.estimator = "rloo"  # the pipeline's one knob is policy_optimizer
    cfg.policy_optimizer = "ppo"
    with pytest.raises(UserError, match="policy_optimizer"):
        _validate(cfg)


@pytest.mark.parametrize("ratio", ["sequence", "token"])
def test_ppo_update_uses_the_chosen_rloo_ratio(tmp_path, ratio):
    """The update's policy loss is the sequence-level one (default) or the token-level one, per `rloo_ratio`:
    old log-probs set so that each response's two tokens have ratios 1.5 and 0.7 under the current policy."""
    from rlp_align.train.ppo import ppo_update
    from rlp_align.train.ppo_models import build_models
    from rlp_align.train.ppo_rollout import Rollout
    from rlp_align.train.training import adamw, make_accelerator

    cfg = rloo_cfg(tmp_path, rollout_batch_size=4, step_batch_size=4, ppo_epochs=1, rloo_ratio=ratio,
                   optim=OptimConfig(learning_rate=0.0, max_grad_norm=0.0))
    ac, _, groups = build_models(cfg, torch.device("cpu"))
    query, query_mask = torch.tensor([[0, 5, 6], [7, 8, 9]] * 2), torch.tensor([[0, 1, 1], [1, 1, 1]] * 2)
    response, mask = torch.tensor([[10, 11, 0], [12, 13, 14]] * 2), torch.tensor([[1, 1, 0], [1, 1, 0]] * 2)
    with torch.no_grad():
        logits = ac.logits(torch.cat([query, response], 1), torch.cat([query_mask, mask], 1), 3, 1.0)
        current = logits.log_softmax(-1).gather(-1, response[..., None]).squeeze(-1)
    old = (current - torch.tensor([math.log(1.5), math.log(0.7), 0.0])) * mask
    advantages = torch.tensor([2.0, -1.0, 2.0, -1.0])
    zeros = torch.zeros(4, 3)
    rollout = Rollout(query, query_mask, response, mask, old, old, zeros, zeros, advantages, advantages,
                      torch.zeros(4, dtype=torch.bool), advantages=advantages[:, None] * mask, returns=zeros)
    stats = ppo_update(ac, adamw(groups, weight_decay=0.0), make_accelerator(0), rollout, cfg, 0,
                       [g["lr"] for g in groups])
    # per response (A = 2, A = -1): sequence -2 * 1.05 and 1.05; token (-2.4 - 1.4) / 2 and (1.5 + 0.8) / 2
    expected = {"sequence": (-2.1 + 1.05) / 2, "token": (-1.9 + 1.15) / 2}[ratio]
    assert stats["policy_loss"] == pytest.approx(expected, abs=1e-4)
