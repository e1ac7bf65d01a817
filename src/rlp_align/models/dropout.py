"""Dropout off for RL: the PPO ratio compares the policy with itself, so it must be deterministic.

PPO's first ratio pi(a|s) / pi_old(a|s) is 1 only if the update's forward pass computes the same function
as the rollout's. With dropout on in training mode it does not (TRL disables dropout in policy and value for
the same reason). The modules stay in training mode, because HF gradient checkpointing only runs there.
"""

from __future__ import annotations

from torch import nn


def disable_dropout(model: nn.Module) -> int:
    """Set every dropout in ``model`` to 0 in place; returns how many were on.

    Covers ``nn.Dropout`` modules (GPT-2's, LoRA's) and the float ``attention_dropout`` / ``dropout``
    attributes that HF attention modules pass to the functional dropout (Llama, Qwen, Mistral).
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            changed += module.p > 0
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            value = getattr(module, name, None)
            if isinstance(value, float) and not isinstance(module, nn.modules.dropout._DropoutNd):
                changed += value > 0
                setattr(module, name, 0.0)
    return changed
