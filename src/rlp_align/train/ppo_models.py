"""The models one PPO/RLOO run holds: policy, frozen reference, critic (`ppo.critic`), and their parameter groups.

Full fine-tuning holds two copies of the policy (the trained one and the frozen reference) plus a value model.
With LoRA (``lora.enabled: true``) the policy is the base model plus adapters, and the reference is the *same* base with
the adapters switched off (`AdaptersOff`), so only one copy of the base is in memory. The critic is a choice:
  separate  a value model of its own, initialised from the RM (AlpacaFarm; with LoRA it gets its own adapters);
  lora      a second LoRA adapter, "critic", on the policy's frozen base, plus a linear value head;
  head      a linear value head on the policy's trunk (the value loss also trains the policy's trunk/adapters).
RLOO (``estimator: rloo``) has no critic at all. Memory per mode: docs/decisions.md. The reward model is
always a separate frozen scorer (`rlp_align.train.ensemble`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rlp_align.core.errors import UserError
from rlp_align.models import apply_lora, load_policy, load_value_model
from rlp_align.models.dropout import disable_dropout
from rlp_align.models.tokens import check_same_tokenizer
from rlp_align.train.ppo_rollout import ActorCritic, AdaptersOff, checkpoint_with_active_adapter

if TYPE_CHECKING:
    from rlp_align.train.ppo_config import PPOConfig

CRITIC_ADAPTER = "critic"


def critic_mode(cfg: PPOConfig) -> str:
    """``cfg.critic``, or "none" for RLOO; a LoRA critic needs a LoRA policy to share the base with."""
    if cfg.estimator == "rloo":
        return "none"
    if cfg.critic == "lora" and not cfg.lora.enabled:
        raise UserError("critic 'lora' puts a second adapter on the policy's frozen base: it needs lora.enabled: true "
                        "(or choose critic 'separate' or 'head')")
    return cfg.critic


def shares_base(cfg: PPOConfig) -> bool:
    """The reference is the LoRA policy's base with adapters off when it is the policy's own starting point."""
    return cfg.lora.enabled and cfg.reference in (None, cfg.policy)


def check_tokenizers(cfg: PPOConfig) -> None:
    """The reference reads the policy's sampled ids (the KL term), and so does a separate critic (its values):
    both must tokenize as the policy does (`models.tokens.check_same_tokenizer`). Called before any work."""
    separate = critic_mode(cfg) == "separate"
    critic_advice = ("Set value_model to a model with the policy's tokenizer (the policy itself, or an RM trained "
                     "from it), or critic to head" + ("" if cfg.value_model else " (unset, value_model is the "
                                                       "reward model, which is read through text and may differ)"))
    check_same_tokenizer({"policy": cfg.policy, "reference": cfg.reference,
                          "value_model": value_model_path(cfg) if separate else None},
                         trust_remote_code=cfg.trust_remote_code, advice={"value_model": critic_advice + "."})


def value_model_path(cfg: PPOConfig) -> str:
    """The separate critic's starting point: ``value_model``, else the (first) reward model, else the policy."""
    return cfg.value_model or cfg.reward_model or (cfg.reward_ensemble or [cfg.policy])[0]


def value_head(policy: nn.Module) -> nn.Linear:
    """A scalar head on the policy's hidden size, starting at V = 0 (deterministic, so resume needs no RNG)."""
    head = nn.Linear(policy.config.hidden_size, 1, dtype=next(policy.parameters()).dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def build_models(
    cfg: PPOConfig, device: torch.device, **trust: Any
) -> tuple[ActorCritic, nn.Module | AdaptersOff, list[dict[str, Any]]]:
    """Policy + critic (`ActorCritic`), the reference, and the optimiser's parameter groups (policy, critic)."""
    critic = critic_mode(cfg)
    policy = load_policy(cfg.policy, **trust)
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if cfg.lora.enabled:
        policy = apply_lora(policy, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    if shares_base(cfg):
        ref: nn.Module | AdaptersOff = AdaptersOff(policy)
    else:
        ref = load_policy(cfg.reference or cfg.policy, **trust).to(device).eval().requires_grad_(False)

    value: nn.Module | None = None
    if critic == "separate":
        value = load_value_model(value_model_path(cfg), **trust)
        if cfg.gradient_checkpointing:
            value.gradient_checkpointing_enable()
        if cfg.lora.enabled:
            value = apply_lora(value, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    elif critic in ("lora", "head"):
        value = value_head(policy)
    if critic == "lora":
        policy.add_adapter(CRITIC_ADAPTER, policy.peft_config["default"])  # same rank/targets, its own weights
        for name, p in policy.named_parameters():
            if f".{CRITIC_ADAPTER}." in name:
                p.requires_grad_(True)  # peft freezes an adapter added while another is active
        if cfg.gradient_checkpointing:  # recompute each layer under the adapter its forward ran with
            checkpoint_with_active_adapter(policy)

    def is_critic(name: str) -> bool:
        return f".{CRITIC_ADAPTER}." in name

    policy_params = [p for n, p in policy.named_parameters() if p.requires_grad and not is_critic(n)]
    critic_params = [p for n, p in policy.named_parameters() if p.requires_grad and is_critic(n)]
    critic_params += [p for p in value.parameters() if p.requires_grad] if value is not None else []
    for m in (policy, value):  # rollouts and updates must compute one function: the first ratio is 1 (TRL)
        if m is not None:
            disable_dropout(m)
    groups = [{"params": policy_params, "lr": cfg.optim.learning_rate}]
    if critic_params:
        groups.append({"params": critic_params, "lr": cfg.value_learning_rate or cfg.optim.learning_rate})
    return ActorCritic(policy, value, critic), ref, groups
