"""PPO: the pure pieces against hand-computed values, padding/EOS handling, learning, and exact resume."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlp_align.data.records import user_prompt
from rlp_align.data.templates import collate, encode_prompt
from rlp_align.models import (
    load_policy,
    load_reward_model,
    load_tokenizer,
    resolve_model,
    reward_scores,
    save_model,
)
from rlp_align.train.ensemble import RewardModelFn
from rlp_align.train.ppo import PPOConfig, run_ppo, shape_rewards, train_ppo
from rlp_align.train.ppo_losses import (
    AdaptiveKLController,
    gae,
    kl_penalty_rewards,
    masked_mean,
    policy_loss,
    rloo_advantages,
    value_loss,
    whiten,
)
from rlp_align.train.ppo_rollout import ActorCritic, Rollout, evaluate_responses, make_rollout
from rlp_align.train.training import LoraConfig, OptimConfig, read_metrics

pytestmark = pytest.mark.device  # also runs on RLP_TEST_DEVICE (benchmarks/gpu_check.sh)

# ---------------------------------------------------------------------------------------------------------
# Pure functions, by hand


def close(actual: torch.Tensor, expected: list, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def test_masked_mean_and_whiten_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    w = whiten(x, mask)
    # values 1, 2, 3: mean 2, unbiased variance 1
    close(w, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    scaled = whiten(x, mask, shift_mean=False)
    close(scaled, [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    # two ranks holding the same rows: statistics of the global batch (6 values), not of this rank's 3
    global_batch = whiten(torch.cat([x, x]), torch.cat([mask, mask]))[:2]
    close(whiten(x, mask, reduce=lambda t: 2 * t), global_batch.tolist())
    assert not torch.allclose(global_batch, w)


def test_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 7.0]])
    values = torch.tensor([[0.5, 0.5, 1.0, 9.0]])  # position 3 is padding: never read
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # delta2 = 2 - 1 = 1; delta1 = 0 + .9*1 - .5 = .4; delta0 = 1 + .9*.5 - .5 = .95
    # A2 = 1; A1 = .4 + .72*1 = 1.12; A0 = .95 + .72*1.12 = 1.7564
    close(adv, [[1.7564, 1.12, 1.0, 0.0]])
    close(ret, [[2.2564, 1.62, 2.0, 0.0]])


def test_gae_matches_the_backward_recursion():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5])
    adv, _ = gae(rewards, values, mask, gamma=0.95, lam=0.9)
    for b in range(3):
        n, running, expected = int(mask[b].sum()), 0.0, [0.0] * 6
        for t in reversed(range(n)):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            running = rewards[b, t].item() + 0.95 * next_v - values[b, t].item() + 0.95 * 0.9 * running
            expected[t] = running
        assert adv[b].tolist() == pytest.approx(expected, abs=1e-5)


def test_kl_penalty_rewards_by_hand():
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -9.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, kl = kl_penalty_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    close(kl, [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]])
    # -0.1 * kl, plus the score at the last real token
    close(rewards, [[-0.05, 0.1, 2.0], [-0.1 - 1.0, 0.0, 0.0]])


def test_kl_penalty_clamped_at_zero_per_token_by_hand():
    """AlpacaFarm's clamp (issue 22 section 6): a token less likely than under the reference earns nothing."""
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -9.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, kl = kl_penalty_rewards(scores, logprobs, ref, mask, kl_coef=0.1, clamp=True)
    close(kl, [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]])  # the log-ratio itself, as logged
    # -0.1 * max(0, kl): the -1.0 token is charged 0 instead of paid 0.1
    close(rewards, [[-0.05, 0.0, 2.0], [-0.1 - 1.0, 0.0, 0.0]])
    # RLOO's sequence penalty sums the same clamped terms: row sums 0.5 (not -0.5) and 1.0 (pad never read)
    adv, penalised = rloo_advantages(scores, logprobs, ref, mask, kl_coef=0.1, k=2, clamp=True)
    close(penalised, [2.0 - 0.05, -1.0 - 0.1])
    # the setting reaches PPO's shaping step (on by default): with V = 0, gamma = lam = 1 and no whitening the
    # return at t is the sum of the rewards from t on
    assert PPOConfig().kl_clamp is True
    zeros = torch.zeros(2, 3)
    for clamp, first_row in [(True, [1.95, 2.0, 2.0]), (False, [2.05, 2.1, 2.0])]:
        rollout = Rollout(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), torch.zeros(2, 3, dtype=torch.long),
                          mask, logprobs, ref, zeros, zeros, scores, scores, torch.zeros(2, dtype=torch.bool))
        shape_rewards(rollout, PPOConfig(kl_clamp=clamp, whiten_rewards=False), kl_coef=0.1)
        close(rollout.returns[0], first_row)


def test_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.tensor([[math.log(1.5), math.log(0.5), 5.0]])  # third position is padding
    adv = torch.tensor([[1.0, 1.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac, approx_kl = policy_loss(new, old, adv, mask, clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5
    assert loss.item() == pytest.approx(-0.85)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(0.25 * (math.log(1.5) ** 2 + math.log(0.5) ** 2))


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 50.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac = value_loss(values, old, returns, mask, clip=0.2)
    # token 0: max((1-2)^2, (0.2-2)^2) = 3.24 (clipped); token 1: max(1, 1) = 1
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, n_steps=512) == pytest.approx(0.1 * (1 + 0.2 * 512 / 10000))  # error clipped at 0.2
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(5.4, n_steps=100) == pytest.approx(0.1 * (1 - 0.1 * 100 / 10000))
    fixed = AdaptiveKLController(0.1)
    assert fixed.update(100.0, n_steps=512) == 0.1


# ---------------------------------------------------------------------------------------------------------
# Padding and EOS on the tiny model


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Larger random weights: the stock tiny model is near-uniform, which would make equalities trivial."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    return model


@pytest.fixture(scope="module")
def tiny():
    tokenizer = load_tokenizer("tiny")
    rm = randomised(load_reward_model("tiny", new_head=True), 1)  # a non-trivial RM (and value model)
    return tokenizer, randomised(load_policy("tiny"), 0), randomised(load_policy("tiny"), 0), rm


def test_logprobs_and_values_do_not_depend_on_padding(tiny):
    tokenizer, policy, ref, rm = tiny
    ac = ActorCritic(policy, rm).eval()
    eos = tokenizer.eos_token_id
    prompts = [user_prompt("hi"), user_prompt("a much longer prompt about the water cycle, clouds and rain")]
    queries = [encode_prompt(tokenizer, p) for p in prompts]
    responses = [[70, 71, eos], [80, 81, 82, 83, 84]]  # the first stops early with EOS
    response, mask = collate(responses, tokenizer.pad_token_id, side="right")
    query, query_mask = collate(queries, tokenizer.pad_token_id, side="left")
    both = evaluate_responses(ac, ref, query, query_mask, response, mask, temperature=1.0, chunk_size=8)
    q0, m0 = collate(queries[:1], tokenizer.pad_token_id, side="left")
    r0, rm0 = collate(responses[:1], tokenizer.pad_token_id, side="right")
    alone = evaluate_responses(ac, ref, q0, m0, r0, rm0, temperature=1.0, chunk_size=8)
    for key in ("logprobs", "ref_logprobs", "values", "entropy"):
        assert torch.allclose(both[key][0, :3], alone[key][0], atol=1e-5), key
        assert (both[key][0, 3:] == 0).all(), f"{key} read after EOS"
        assert torch.isfinite(both[key]).all()
    assert (both["logprobs"][1] < 0).all()


def test_rollout_never_samples_pad_or_bos(tiny):
    """Issue 28 N7: PPO/RLOO rollouts mask every special token but EOS (gold never sees them, the RM does)."""
    tokenizer, _, ref, rm = tiny
    policy = load_policy("tiny")
    bias = torch.zeros(policy.config.vocab_size)
    bias[[tokenizer.pad_token_id, tokenizer.bos_token_id]] = 8.0  # left free: PAD/BOS ~99.9 % of the time
    policy.lm_head.register_forward_hook(lambda module, inputs, logits: logits + bias)
    prompts = [user_prompt("hi"), user_prompt("a much longer prompt about the water cycle")] * 4
    rollout, _ = make_rollout(ActorCritic(policy, rm), ref, tokenizer, RewardModelFn(rm, tokenizer), prompts,
                              PPOConfig(max_new_tokens=8, rollout_chunk_size=8), torch.Generator().manual_seed(0),
                              True, {})
    drawn = set(rollout.response[rollout.mask.bool()].tolist())
    assert drawn and not drawn & {tokenizer.pad_token_id, tokenizer.bos_token_id}


def test_rollout_scores_the_last_real_token_and_penalises_truncation(tiny):
    tokenizer, policy, ref, rm = tiny
    ac = ActorCritic(policy, rm)
    prompts = [user_prompt("hi"), user_prompt("a much longer prompt about the water cycle")]
    cfg = PPOConfig(max_new_tokens=6, rollout_chunk_size=8, truncation_penalty=-3.0)
    reward_fn = RewardModelFn(rm, tokenizer)
    gen = torch.Generator().manual_seed(0)
    rollout, texts = make_rollout(ac, ref, tokenizer, reward_fn, prompts, cfg, gen, True, {})
    assert len(texts) == 2 and rollout.truncated.all()  # a random model never says EOS within 6 tokens
    assert rollout.scores.tolist() == [-3.0, -3.0]
    for i, prompt in enumerate(prompts):  # the same sequence + EOS (cut rows: rlp_align.data.reward_path), alone
        n = int(rollout.mask[i].sum())
        ids = torch.tensor([encode_prompt(tokenizer, prompt) + rollout.response[i, :n].tolist()
                            + [tokenizer.eos_token_id]])
        alone, _ = reward_scores(rm, ids, torch.ones_like(ids))
        assert rollout.raw_scores[i].item() == pytest.approx(alone.item(), abs=1e-5)
    # the log-probs and entropies kept from sampling are those a full forward pass gives
    again = evaluate_responses(ac, ref, rollout.query, rollout.query_mask, rollout.response, rollout.mask,
                               temperature=1.0, chunk_size=8)
    for key in ("logprobs", "entropy"):
        torch.testing.assert_close(getattr(rollout, key), again[key], atol=1e-5, rtol=0)
    assert (rollout.logprobs[rollout.mask == 1] < 0).all()
    kl = shape_rewards(rollout, cfg, kl_coef=0.1)
    assert torch.allclose(kl, torch.zeros_like(kl), atol=1e-5)  # policy == reference before any update
    assert masked_mean(rollout.advantages, rollout.mask).abs().item() < 1e-5


def test_temperature_reaches_sampler_update_and_reference_alike(tiny):
    """At T != 1 the sampler's log-probs, a full forward of the policy (as the PPO update computes them) and
    the reference's log-probs are all of softmax(z / T): the policy ratio is 1 and the KL 0 before any update."""
    from rlp_align.models.logprobs import token_logprobs

    tokenizer, policy, ref, rm = tiny
    temperature = 0.6
    ac = ActorCritic(policy, rm)
    cfg = PPOConfig(max_new_tokens=6, rollout_chunk_size=8, temperature=temperature)
    prompts = [user_prompt("hi"), user_prompt("a much longer prompt about the water cycle")]
    rollout, _ = make_rollout(ac, ref, tokenizer, RewardModelFn(rm, tokenizer), prompts, cfg,
                              torch.Generator().manual_seed(0), True, {})
    ids = torch.cat([rollout.query, rollout.response], 1)
    attn = torch.cat([rollout.query_mask, rollout.mask], 1)
    width = rollout.response.shape[1]
    with torch.no_grad():  # by hand: one plain forward, divided by T here and nowhere else
        z = policy(input_ids=ids, attention_mask=attn,
                   position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits[:, -width - 1 : -1] / temperature
        by_hand = torch.log_softmax(z, -1).gather(-1, rollout.response[..., None]).squeeze(-1) * rollout.mask
        update = token_logprobs(ac.logits(ids, attn, width, temperature), rollout.response) * rollout.mask
        untempered = torch.log_softmax(z * temperature, -1).gather(-1, rollout.response[..., None]).squeeze(-1)
    torch.testing.assert_close(rollout.logprobs, by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(update, by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(rollout.ref_logprobs, by_hand, atol=1e-5, rtol=0)  # ref == policy here
    # and temperature matters: at T = 1 the same tokens have other log-probs
    assert (untempered * rollout.mask - by_hand).abs().max() > 1e-2


def test_split_backward_gives_the_joint_update(tiny):
    """Backpropagating the policy loss before the value forward (one process) updates every parameter as
    the single backward of the summed loss does (DDP)."""
    import copy

    from rlp_align.train.ppo import ppo_update
    from rlp_align.train.training import adamw, make_accelerator

    tokenizer, policy, ref, rm = tiny
    cfg = PPOConfig(max_new_tokens=6, rollout_chunk_size=8, rollout_batch_size=4, step_batch_size=2,
                    micro_batch_size=1, ppo_epochs=2, vf_coef=0.5)
    prompts = [user_prompt(f"prompt number {i}" + " and more" * i) for i in range(4)]
    rollout, _ = make_rollout(ActorCritic(policy, rm), ref, tokenizer, RewardModelFn(rm, tokenizer), prompts, cfg,
                              torch.Generator().manual_seed(0), True, {})
    shape_rewards(rollout, cfg, kl_coef=0.1)
    rollout.advantages = torch.randn_like(rollout.advantages) * rollout.mask  # a non-trivial policy gradient
    accelerator = make_accelerator(0)
    updated, stats = [], []
    for split in (False, True):
        model = ActorCritic(copy.deepcopy(policy), copy.deepcopy(rm)).requires_grad_(True)  # RewardModelFn froze rm
        optimizer = adamw(model.parameters(), lr=1e-3)
        stats.append(ppo_update(model, optimizer, accelerator, rollout, cfg, 0, [1e-3], split_backward=split))
        updated.append(model.state_dict())
    assert stats[0] == pytest.approx(stats[1], abs=1e-6)
    start = ActorCritic(policy, rm).state_dict()
    assert any(not torch.equal(updated[0][k], start[k]) for k in start if k.startswith("policy."))
    assert any(not torch.equal(updated[0][k], start[k]) for k in start if k.startswith("value."))
    for key in start:
        torch.testing.assert_close(updated[1][key], updated[0][key], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Training


def count_e(prompts, responses):
    """A learnable reward for a random model: how often it writes the letter 'e' (per 4 characters)."""
    return torch.tensor([r.count("e") / 4.0 for r in responses])


PROMPTS = [user_prompt(f"Write about topic {i}") for i in range(32)]


def small_cfg(out, save_every: int = 100, lora: LoraConfig | None = None, **kw) -> PPOConfig:
    base = dict(policy="tiny", output_dir=str(out), rollout_batch_size=16, step_batch_size=8, max_new_tokens=16,
                kl_coef=0.0, seed=0, optim=OptimConfig(learning_rate=1e-2, save_every=save_every),
                lora=lora or LoraConfig())
    return PPOConfig(**{**base, **kw})


def test_ppo_raises_a_learnable_reward(tmp_path):
    gold = []
    summary = train_ppo(small_cfg(tmp_path, steps=10, kl_coef=0.01), PROMPTS, count_e,
                        gold_fn=lambda p, r: gold.append(len(r)) or count_e(p, r))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 11))
    first = sum(r["reward"] for r in rows[:2]) / 2
    last = sum(r["reward"] for r in rows[-2:]) / 2
    assert last > first + 1.0, (first, last)  # ~0.8 -> ~4 on seeds 0, 1, 2
    for key in ("kl", "entropy", "response_length", "clip_fraction", "value_loss", "approx_kl", "time_rollout",
                "time_score", "time_update", "gold_reward"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[-1]["kl"] > 0.1  # the policy moved away from the reference, and the KL says so
    assert gold == [16] * 10  # called once per step on the rollout texts
    assert summary["final"]["reward"] == rows[-1]["reward"]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 10
    assert (tmp_path / "tensorboard").is_dir()
    load_policy(tmp_path / "model")  # a plain HF folder


class Crash(Exception):
    pass


def run_then_crash_and_resume(make_cfg, tmp_path, crash_at_step: int, **cfg) -> None:
    """Train ``a`` straight through, and ``b`` until the gold judge raises at ``crash_at_step``; the callers
    then rerun ``b`` (it resumes from its checkpoint) and compare the two."""
    train_ppo(make_cfg(tmp_path / "a", **cfg), PROMPTS, count_e)
    calls = []

    def crash(prompts, responses):
        calls.append(1)
        if len(calls) == crash_at_step:
            raise Crash
        return torch.zeros(len(responses))

    with pytest.raises(Crash):
        train_ppo(make_cfg(tmp_path / "b", **cfg), PROMPTS, count_e, gold_fn=crash)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = dict(steps=4, save_every=2, rollout_batch_size=8, step_batch_size=4, max_new_tokens=8)
    run_then_crash_and_resume(small_cfg, tmp_path, 3, **cfg)
    assert not (tmp_path / "b" / "model").exists()
    assert (tmp_path / "b" / "checkpoint").is_dir()  # the step-2 checkpoint it resumes from
    train_ppo(small_cfg(tmp_path / "b", **cfg), PROMPTS, count_e)
    assert not (tmp_path / "b" / "checkpoint").exists()  # dropped once model/ is written (no keep_checkpoint)
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    start = load_file(resolve_model("tiny") / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # training did change the parameters
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["reward"] for r in rows_a] == pytest.approx([r["reward"] for r in rows_b])


@pytest.mark.multiprocess
def test_two_ranks_with_torchrun(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from accelerate import PartialState
        from rlp_align.data.records import user_prompt
        from rlp_align.train.ppo import PPOConfig, train_ppo
        from rlp_align.train.training import OptimConfig
        def reward(prompts, responses):
            return torch.tensor([r.count("e") / 4.0 for r in responses])
        prompts = [user_prompt(f"Write about topic {{i}}") for i in range(16)]
        cfg = PPOConfig(policy="tiny", output_dir={str(tmp_path / "out")!r}, steps=2, rollout_batch_size=8,
                        step_batch_size=4, max_new_tokens=8, optim=OptimConfig(learning_rate=1e-3, save_every=1))
        seen = []
        train_ppo(cfg, prompts, reward, gold_fn=lambda p, r: seen.append(len(r)) or reward(p, r))
        state = PartialState()
        assert state.num_processes == 2, "the ranks did not join"
        open({str(tmp_path)!r} + f"/rank{{state.process_index}}.json", "w").write(str(seen))
    """))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)],
                          env=env, capture_output=True, text=True, timeout=240)
    # a failing rank's traceback can sit far above the launcher's own report: keep every rank's error lines
    ranks = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank") and "Error" in line)
    assert proc.returncode == 0, ranks + "\n...\n" + proc.stderr[-3000:]
    rows = read_metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2]  # one row per step, written by the main process only
    for rank in (0, 1):  # each rank generated its half of the 8 rollouts per step
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [4, 4]
    assert (tmp_path / "out" / "model" / "config.json").exists()


def test_run_ppo_with_an_rm_ensemble_and_lora(tmp_path):
    tokenizer = load_tokenizer("tiny")
    members = []
    for seed in (0, 1):
        rm = randomised(load_reward_model("tiny", new_head=True), seed)
        save_model(rm, tokenizer, tmp_path / f"rm{seed}")
        members.append(str(tmp_path / f"rm{seed}"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:8]))
    cfg = small_cfg(tmp_path / "out", steps=2, rollout_batch_size=4, step_batch_size=2, micro_batch_size=1,
                    max_new_tokens=6, prompts_file=str(prompts), reward_ensemble=members, ensemble_aggregate="wco",
                    lora=LoraConfig(enabled=True, r=4), truncation_penalty=-1.0, adaptive_kl=True, kl_coef=0.05)
    summary = run_ppo(cfg)
    rows = read_metrics(tmp_path / "out")
    assert len(rows) == 2 and rows[-1]["kl_coef"] != 0.05  # the adaptive controller moved beta
    assert all(math.isfinite(r["reward"]) and math.isfinite(r["value_loss"]) for r in rows)
    assert rows[0]["truncated_fraction"] == 1.0 and rows[0]["score"] == -1.0  # the penalty replaced r(x, y)
    assert summary["steps"] == 2
    merged = load_policy(tmp_path / "out" / "model")  # LoRA merged back into a plain model
    assert not any("lora" in name for name, _ in merged.named_parameters())
