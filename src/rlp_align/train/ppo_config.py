"""`PPOConfig`: every setting of PPO and RLOO, in one place.

Its own module so that `ppo` (the trainer) and `ppo_models` (which builds policy, reference and critic from
these settings) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rlp_align.core.config import UNIQUE
from rlp_align.train.training import LoraConfig, OptimConfig

__all__ = ["PPOConfig"]


@dataclass
class PPOConfig:
    policy: str = "tiny"  # the SFT policy pi_SFT; PPO starts from it
    reward_model: str = ""  # RM folder (or use reward_ensemble)
    output_dir: str = "runs/ppo"
    reference: str | None = None  # frozen pi_ref for the KL penalty; defaults to `policy`
    value_model: str | None = None  # defaults to the reward model (AlpacaFarm initialises V from the RM)
    prompts_file: str = ""  # unlabelled instructions U
    reward_ensemble: list[str] = field(default_factory=list, metadata=UNIQUE)  # member RM folders (Coste et al. 2024)
    ensemble_aggregate: Literal["mean", "wco", "uwo"] = "mean"
    uwo_lambda: float = 0.5
    steps: int = 20  # AlpacaFarm's best results: 20-80 steps of 512 rollouts
    rollout_batch_size: int = 16  # global prompts per PPO step (AlpacaFarm: 512)
    step_batch_size: int = 8  # global sequences per optimiser step (AlpacaFarm: 256)
    micro_batch_size: int | None = None  # per-rank chunk of a minibatch (gradient accumulation); None = all
    rollout_chunk_size: int = 64  # per-rank sequences per generation / scoring forward
    ppo_epochs: int = 2
    # advantages: "gae" = PPO with a critic (AlpacaFarm); "rloo" = REINFORCE leave-one-out, k samples per
    # prompt, no critic (Ahmadian et al. 2024); rollout_batch_size then counts sequences (prompts x rloo_k)
    estimator: Literal["gae", "rloo"] = "gae"
    rloo_k: int = 4
    # RLOO's importance ratio: "sequence" = one ratio per response, clipped and averaged over sequences (TRL's
    # RLOOTrainer: the response is one action); "token" = PPO's per-token ratio and clip, averaged over tokens
    rloo_ratio: Literal["sequence", "token"] = "sequence"
    # where V(s) comes from (ignored by RLOO): its own value model, a LoRA adapter on the policy's base
    # (needs lora.enabled), or a head on the policy's trunk; memory costs in docs/decisions.md
    critic: Literal["separate", "lora", "head"] = "separate"
    value_learning_rate: float | None = None  # defaults to optim.learning_rate
    clip_range: float = 0.2
    value_clip_range: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 1.0
    kl_coef: float = 0.0067  # AlpacaFarm, simulated preferences
    # charge max(0, log pi/pi_ref) per token, as AlpacaFarm (whose kl_coef this is) does; false: the plain
    # log-ratio (Ziegler et al., TRL); the logged `kl` is always the unclamped estimate (docs/decisions.md)
    kl_clamp: bool = True
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    whiten_rewards: bool = True
    truncation_penalty: float | None = None  # score given to responses without EOS (AlpacaFarm: -1.0)
    missing_eos_penalty: float | None = None  # subtracted from r(x, y) of a response without EOS (TRL's knob)
    eval_every: int = 0  # evaluation points (proxy, gold, KL on held-out prompts) every N steps; 0: off
    max_new_tokens: int = 64  # AlpacaFarm: 300
    max_prompt_length: int = 256
    temperature: float = 1.0
    seed: int = 0
    reward_batch_size: int = 8
    gradient_checkpointing: bool = False
    # warmup_steps counts optimiser updates (linear, then constant, independent of `steps`); keep_checkpoint
    # keeps checkpoint/ (3 GB for SmolLM2) after the run
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=1e-5, save_every=10))
    # adapters on the policy, whose base with adapters off is then the reference (one copy in memory)
    lora: LoraConfig = field(default_factory=LoraConfig)
    overwrite: bool = False  # start afresh even when output_dir holds a finished run or a checkpoint
    allow_pickle: bool = False
    trust_remote_code: bool = False
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)
