"""Evaluation points along PPO: proxy reward, gold reward and KL to the reference on fixed held-out prompts.

Gao et al. (2023) plot gold and proxy reward against sqrt(KL) to the initial policy to see over-optimisation;
comparing methods "at matched KL" needs the same points for every run. Every ``eval_every`` PPO steps (and
before the first), the current policy answers the same eval prompts with the same random numbers (a fixed
generator, so points differ only by the policy), through the rollout path (`ppo_rollout.make_rollout`):
the proxy is the RM's score r(x, y) (before penalties), KL is the sequence sum of log pi - log pi_ref over
the sampled tokens (the PPO estimator), gold is the gold judge's score when one is given.
Per-prompt values are kept so that a point's mean has a bootstrap CI (`rlp_align.judge.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlp_align.data.records import Messages
from rlp_align.models.generation import seeded_generator
from rlp_align.train.ensemble import RewardFn
from rlp_align.train.ppo_rollout import ActorCritic, RolloutSettings, make_rollout
from rlp_align.train.training import shard

EVAL_STREAM = 7_777_777  # the eval points' own random stream, apart from the rollouts' (seed, step, rank)


def evaluation_point(
    actor_critic: ActorCritic, ref: nn.Module, tokenizer: PreTrainedTokenizerBase, reward_fn: RewardFn,
    gold_fn: Callable[[list[Messages], list[str]], Any] | None, prompts: list[Messages], cfg: RolloutSettings,
    seed: int, score_tokens: bool, accelerator: Accelerator,
) -> dict[str, Any]:
    """Means ``eval/proxy``, ``eval/gold``, ``eval/kl``, ``eval/sqrt_kl``, ``eval/truncated`` over ``prompts``,
    and ``eval/per_prompt`` (the per-prompt lists, in prompt order, gathered from every rank)."""
    indices = shard(list(range(len(prompts))), accelerator)
    local = [prompts[i] for i in indices]
    per_prompt: dict[str, list[float]] = {"proxy": [], "kl": [], "truncated": [], "gold": []}
    if local:
        generator = seeded_generator(seed, EVAL_STREAM, accelerator.process_index, device=accelerator.device)
        rollout, texts = make_rollout(actor_critic, ref, tokenizer, reward_fn, local, cfg, generator, score_tokens, {})
        per_prompt["proxy"] = rollout.raw_scores.float().cpu().tolist()
        per_prompt["kl"] = ((rollout.logprobs - rollout.ref_logprobs) * rollout.mask).sum(-1).cpu().tolist()
        per_prompt["truncated"] = rollout.truncated.float().cpu().tolist()
        if gold_fn is not None:
            per_prompt["gold"] = torch.as_tensor(gold_fn(local, texts), dtype=torch.float32).tolist()
    if accelerator.num_processes > 1:
        per_prompt = {k: [x for part in gather_object([v]) for x in part] for k, v in per_prompt.items()}
    if gold_fn is None:
        per_prompt.pop("gold")

    def mean(key: str) -> float:
        values = per_prompt.get(key) or []
        return sum(values) / len(values) if values else float("nan")

    out = {f"eval/{k}": mean(k) for k in per_prompt}
    out["eval/sqrt_kl"] = math.sqrt(max(out["eval/kl"], 0.0))
    out["eval/per_prompt"] = per_prompt
    return out
