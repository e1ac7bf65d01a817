"""Evaluation points along PPO: proxy, gold and KL on fixed eval prompts, without changing the training run."""

import math

import torch
from safetensors.torch import load_file

from rlp_align.data.records import user_prompt
from rlp_align.train.ppo import PPOConfig, train_ppo
from rlp_align.train.training import OptimConfig, read_metrics

PROMPTS = [user_prompt(f"Write about topic {i}") for i in range(16)]
EVAL = [user_prompt(f"Describe item {i}") for i in range(6)]


def count_e(prompts, responses):
    return torch.tensor([r.count("e") / 4.0 for r in responses])


def cfg(out, **kw) -> PPOConfig:
    return PPOConfig(**{**dict(policy="tiny", output_dir=str(out), steps=4, rollout_batch_size=8, step_batch_size=8,
                               max_new_tokens=12, kl_coef=0.0, seed=0,
                               optim=OptimConfig(learning_rate=1e-2, save_every=100)), **kw})


def test_evaluation_points_along_ppo(tmp_path):
    gold_calls = []

    def gold(prompts, responses):
        gold_calls.append([p[-1]["content"] for p in prompts])
        return [float(len(r)) for r in responses]

    train_ppo(cfg(tmp_path / "eval", eval_every=2), PROMPTS, count_e, gold_fn=gold, eval_prompts=EVAL)
    rows = read_metrics(tmp_path / "eval")
    points = [r for r in rows if "eval/kl" in r]
    assert [r["step"] for r in points] == [0, 2, 4]  # before the first step, then every 2 and the last
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4]
    for r in points:
        per = r["eval/per_prompt"]
        assert all(len(per[k]) == len(EVAL) for k in ("proxy", "gold", "kl", "truncated"))
        for k in ("proxy", "gold", "kl", "truncated"):
            assert r[f"eval/{k}"] == sum(per[k]) / len(per[k])
        assert r["eval/sqrt_kl"] == math.sqrt(max(r["eval/kl"], 0.0))
    assert abs(points[0]["eval/kl"]) < 1e-3  # the initial policy is the reference
    assert points[-1]["eval/kl"] > 0.1  # the policy moved, and the evaluation sees it
    assert points[-1]["eval/proxy"] != points[0]["eval/proxy"]
    assert [c for c in gold_calls if c == [p[-1]["content"] for p in EVAL]] == [[p[-1]["content"] for p in EVAL]] * 3

    # the points use their own random stream: training is exactly the run without them
    train_ppo(cfg(tmp_path / "plain"), PROMPTS, count_e)
    a = load_file(str(tmp_path / "eval/model/model.safetensors"))
    b = load_file(str(tmp_path / "plain/model/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
