"""`rlp rloo`: REINFORCE leave-one-out (Ahmadian et al. 2024) against a reward model, the critic-free optimiser.

RLOO is PPO's trainer (`rlp_align.train.ppo`) with step 3 replaced: ``rloo_k`` samples of each prompt, the
sequence-level reward minus the KL penalty beta * sum_t log(pi / pi_ref), and as each sample's baseline the mean
of the other k-1 samples' penalised rewards (`rlp_align.train.ppo_losses.rloo_advantages`). No value model is loaded
or trained, which saves one model's weights, gradients and optimiser state, and its forward passes.
The update is PPO's clipped surrogate with the whole response as one action, as TRL's RLOOTrainer does: one
importance ratio per response, the product of its tokens' ratios, clipped and averaged over sequences
(``rloo_ratio: sequence``); ``rloo_ratio: token`` keeps PPO's per-token ratio and clip instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from rlp_align.train.ppo import PPOConfig, run_ppo


@dataclass
class RLOOConfig(PPOConfig):
    """`PPOConfig` with RLOO's defaults; ``rollout_batch_size`` counts sequences, ``rloo_k`` per prompt."""

    output_dir: str = "runs/rloo"
    estimator: Literal["gae", "rloo"] = "rloo"


def run_rloo(cfg: RLOOConfig) -> dict[str, Any]:
    """`rlp rloo`: prompts from ``prompts_file``, reward from ``reward_model`` or ``reward_ensemble``."""
    return run_ppo(cfg)
