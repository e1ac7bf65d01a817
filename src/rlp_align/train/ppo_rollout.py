"""PPO experience: sampling responses and scoring them once per step (steps 1-2 of `rlp_align.train.ppo`).

`ActorCritic` holds the policy and the value model so that one DDP wrapper and one optimiser cover both
(AlpacaFarm); under DDP one backward does too, while one process backpropagates them one after the other
(`rlp_align.train.ppo.ppo_update`). `make_rollout` samples with the KV cache (`rlp_align.models.generation.sample_tokens`),
keeping the log-probs and entropies of the distributions it sampled from (as TRL does), then computes, in
one batched forward each and under ``torch.inference_mode``, the frozen reference's log-probs and the
values, plus the reward r(x, y) at the last real token.
Nothing is read at a pad position: left-padded prompts get positions from the attention mask, and every
per-token quantity is multiplied by the response mask (1 up to and including EOS).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from rlp_align.data.records import Messages
from rlp_align.data.reward_path import append_eos, apply_missing_eos_penalty
from rlp_align.data.templates import collate, encode_prompt
from rlp_align.models.generation import sample_tokens, special_ids_but_eos
from rlp_align.models.logprobs import (
    entropy_from_logits,
    predicting_positions,
    response_logits,
    tempered,
    token_logprobs,
)
from rlp_align.models.scoring import reward_head, unwrap_model
from rlp_align.train.ensemble import RewardFn


class RolloutSettings(Protocol):
    """The settings `make_rollout` reads; `rlp_align.train.ppo.PPOConfig` has them (no import of ppo here)."""

    max_prompt_length: int
    max_new_tokens: int
    temperature: float
    rollout_chunk_size: int
    truncation_penalty: float | None
    missing_eos_penalty: float | None


class ActorCritic(nn.Module):
    """Policy and critic under one module: one DDP wrapper, one optimiser (AlpacaFarm).

    ``critic`` says where V(s_t) comes from (the memory each costs: docs/decisions.md):
      "separate": ``value`` is a sequence classifier of its own (initialised from the RM, AlpacaFarm);
      "lora":     ``value`` is a linear value head on the policy's frozen base running a second LoRA adapter
                  named "critic" (the policy is a peft model; adapters are switched, nothing is copied);
      "head":     ``value`` is a linear value head on the policy's own trunk (the value loss trains the trunk too);
      "none":     no critic (RLOO); ``values`` is all zeros and never trained.
    """

    def __init__(self, policy: nn.Module, value: nn.Module | None, critic: str = "separate"):
        super().__init__()
        self.policy, self.value, self.critic = policy, value, critic

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tempered logits predicting each response token [B, T, V] and values V(s_t) [B, T] for the last T
        positions."""
        if self.critic == "head":  # one pass of the shared trunk for both
            logits, hidden = self._policy_forward(input_ids, attention_mask, response_length, temperature,
                                                  hidden=True)
            return logits, self.value(hidden[:, -response_length - 1 : -1]).squeeze(-1)
        return self.logits(input_ids, attention_mask, response_length, temperature), \
            self.values(input_ids, attention_mask, response_length)

    def _policy_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int, temperature: float,
        hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not hidden:
            return response_logits(self.policy, input_ids, attention_mask, response_length, temperature), None
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        keep = predicting_positions(input_ids.shape[1], response_length, input_ids.device)
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          logits_to_keep=keep, use_cache=False, output_hidden_states=True)
        return tempered(out.logits, temperature), out.hidden_states[-1]

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
               temperature: float) -> torch.Tensor:
        """Logits of the sampling distribution for each of the last T tokens [B, T, V] (the policy alone)."""
        return self._policy_forward(input_ids, attention_mask, response_length, temperature)[0]

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int) -> torch.Tensor:
        """V(s_t) [B, T] for the last T positions (the critic alone)."""
        if self.critic == "none":
            return torch.zeros(input_ids.shape[0], response_length, device=input_ids.device)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if self.critic == "separate":
            inner = unwrap_model(self.value)
            head = reward_head(inner)
        else:
            inner, head = unwrap_model(self.policy), self.value
        with use_adapter(self.policy, "critic") if self.critic == "lora" else contextlib.nullcontext():
            hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=positions).last_hidden_state
        return head(hidden[:, -response_length - 1 : -1]).squeeze(-1)


@contextlib.contextmanager
def keep_trainable(model: nn.Module) -> Iterator[None]:
    """Undo, on exit, peft's freezing of inactive adapters.

    peft's ``set_adapter`` (also called when ``disable_adapter`` ends) sets requires_grad=False on every
    adapter but the active one, which would stop a second adapter (the LoRA critic) from training. Which
    parameters train is decided once, by the optimiser's groups.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


@contextlib.contextmanager
def use_adapter(peft_model: nn.Module, name: str) -> Iterator[None]:
    """Run the peft model's LoRA adapter ``name`` for the duration, then switch back."""
    model = getattr(peft_model, "module", peft_model)
    previous = model.base_model.active_adapter  # the LoRA model's (PeftModel's own attribute is not switched)
    with keep_trainable(model):
        model.base_model.set_adapter(name)
        try:
            yield
        finally:
            model.base_model.set_adapter(previous)


def checkpoint_with_active_adapter(peft_model: nn.Module) -> None:
    """Gradient checkpointing whose recompute runs under the adapter that was active in the forward.

    Checkpointing recomputes each layer during backward, when `use_adapter` has long switched back to the
    policy's adapter; the LoRA critic's layers would then be recomputed with the policy's adapter and the
    critic trained on the wrong activations. torch's non-reentrant checkpoint takes a ``context_fn``, called at
    forward time, whose second context manager wraps the recompute: it captures the active adapter there and
    switches to it for the recompute (and back), so a joint backward (DDP) gets both adapters right.
    """
    model = getattr(peft_model, "module", peft_model)

    def context_fn() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), _RecomputeUnder(model, model.base_model.active_adapter)

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                       "context_fn": context_fn})


class _RecomputeUnder(contextlib.AbstractContextManager):
    """Switch to adapter ``name`` for a recompute if another one is active by then (see above)."""

    def __init__(self, model: nn.Module, name: str):
        self.model, self.name = model, name
        self.inner: contextlib.AbstractContextManager = contextlib.nullcontext()

    def __enter__(self) -> None:
        if self.model.base_model.active_adapter != self.name:
            self.inner = use_adapter(self.model, self.name)
        self.inner.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


class AdaptersOff:
    """The frozen reference policy as the LoRA policy's own base with every adapter switched off.

    Called like a model; holds no weights of its own, so PPO keeps one copy of the base in memory.
    """

    def __init__(self, peft_model: nn.Module):
        self.model = peft_model

    def __call__(self, **kwargs: Any) -> Any:
        with keep_trainable(self.model), self.model.disable_adapter():
            return self.model(**kwargs)


def reference_logprobs(ref: nn.Module | AdaptersOff, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    return token_logprobs(response_logits(ref, input_ids, attention_mask, tokens.shape[1], temperature), tokens)


@dataclass
class Rollout:
    """One PPO step's experience, [B, ...] on this rank. ``mask`` covers response tokens up to EOS."""

    query: torch.Tensor  # [B, P] left-padded prompt ids
    query_mask: torch.Tensor
    response: torch.Tensor  # [B, T] right-padded response ids (pad after EOS)
    mask: torch.Tensor
    logprobs: torch.Tensor  # [B, T] under the policy that sampled them
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    scores: torch.Tensor  # [B] r(x, y), after the missing-EOS / truncation penalty
    raw_scores: torch.Tensor  # [B] r(x, y) as the reward function gave it
    truncated: torch.Tensor  # [B] bool: no EOS within max_new_tokens
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """A minibatch, with all-pad columns trimmed (left of the prompt, right of the responses)."""
        seq_mask = torch.cat([self.query_mask[index], self.mask[index]], dim=1)
        first = int(seq_mask.any(0).long().argmax())
        width = max(1, int(self.mask[index].sum(-1).max()))
        end = self.query.shape[1] + width
        return {
            "input_ids": torch.cat([self.query[index], self.response[index]], dim=1)[:, first : end],
            "attention_mask": seq_mask[:, first : end],
            **{k: getattr(self, k)[index][:, :width]
               for k in ("response", "mask", "logprobs", "values", "advantages", "returns")},
        }


@torch.inference_mode()
def evaluate_responses(
    actor_critic: ActorCritic, ref: nn.Module | AdaptersOff, query: torch.Tensor, query_mask: torch.Tensor,
    response: torch.Tensor, mask: torch.Tensor, temperature: float, chunk_size: int,
    sampled: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Policy log-probs, reference log-probs, values and entropies of given responses, once, in chunks.

    ``sampled`` holds the policy's log-probs and entropies as the sampler computed them; then the policy is
    not run again (TRL's PPOTrainer does the same), which saves one of the four forward passes.
    Everything read at a pad position is zeroed with ``mask``.
    """
    out: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "values": [], "entropy": []}
    for start in range(0, query.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        ids = torch.cat([query[rows], response[rows]], dim=1)
        attn = torch.cat([query_mask[rows], mask[rows]], dim=1)
        m = mask[rows].float()
        if sampled is None:
            logits, values = actor_critic(ids, attn, response.shape[1], temperature)
            out["logprobs"].append(token_logprobs(logits, response[rows]) * m)
            out["entropy"].append(entropy_from_logits(logits) * m)
        else:
            values = actor_critic.values(ids, attn, response.shape[1])
            out["logprobs"].append(sampled["logprobs"][rows].float() * m)
            out["entropy"].append(sampled["entropy"][rows].float() * m)
        out["values"].append(values.float() * m)
        out["ref_logprobs"].append(reference_logprobs(ref, ids, attn, response[rows], temperature) * m)
    return {k: torch.cat(v) for k, v in out.items()}


def make_rollout(
    actor_critic: ActorCritic, ref: nn.Module | AdaptersOff, tokenizer: PreTrainedTokenizerBase, reward_fn: RewardFn,
    prompts: list[Messages], cfg: RolloutSettings, generator: torch.Generator, score_tokens: bool,
    timings: dict[str, float],
) -> tuple[Rollout, list[str]]:
    """Steps 1-2 of a PPO step: sample, then score once (policy, reference, values, reward)."""
    device = next(actor_critic.parameters()).device
    was_training = actor_critic.training
    actor_critic.eval()  # no dropout (e.g. LoRA's) while sampling and scoring
    t0 = time.perf_counter()
    encoded = [encode_prompt(tokenizer, p, cfg.max_prompt_length) for p in prompts]
    query, query_mask = collate(encoded, tokenizer.pad_token_id, side="left")
    query, query_mask = query.to(device), query_mask.to(device)
    pieces = []
    for start in range(0, len(encoded), cfg.rollout_chunk_size):
        rows = slice(start, start + cfg.rollout_chunk_size)
        pieces.append(sample_tokens(
            actor_critic.policy, query[rows], query_mask[rows], max_new_tokens=cfg.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            temperature=cfg.temperature, generator=generator, with_logprobs=True,
            banned_token_ids=special_ids_but_eos(tokenizer)))
    width = max(p[0].shape[1] for p in pieces)

    def stack(i: int, fill: float) -> torch.Tensor:  # field i of every chunk, right-padded to ``width``
        return torch.cat([nn.functional.pad(p[i], (0, width - p[i].shape[1]), value=fill) for p in pieces])

    response, mask = stack(0, tokenizer.pad_token_id), stack(1, 0)
    sampled = {"logprobs": stack(2, 0.0), "entropy": stack(3, 0.0)}
    lengths = mask.sum(-1)
    last = response.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    truncated = last != tokenizer.eos_token_id
    texts = [tokenizer.decode(r[:n], skip_special_tokens=True) for r, n in zip(response.tolist(), lengths.tolist())]
    timings["time_rollout"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stats = evaluate_responses(actor_critic, ref, query, query_mask, response, mask, cfg.temperature,
                               cfg.rollout_chunk_size, sampled)
    actor_critic.train(was_training)
    if score_tokens:  # the exact sampled tokens + EOS on cut rows, as every text path reads them (reward_path)
        scored, scored_mask, _ = append_eos(response, mask, tokenizer.eos_token_id, tokenizer.pad_token_id)
        raw = reward_fn.score_tokens(torch.cat([query, scored], 1), torch.cat([query_mask, scored_mask], 1))
    else:
        raw = reward_fn(prompts, texts)
    raw = torch.as_tensor(raw, dtype=torch.float32).detach().to(device)
    scores = apply_missing_eos_penalty(raw.clone(), truncated, cfg.missing_eos_penalty)
    if cfg.truncation_penalty is not None:
        scores = torch.where(truncated, torch.full_like(scores, cfg.truncation_penalty), scores)
    timings["time_score"] = time.perf_counter() - t0
    # inference-mode tensors cannot enter autograd: clone them into ordinary tensors
    rollout = Rollout(query.clone(), query_mask.clone(), response.clone(), mask.clone(),
                      **{k: v.clone() for k, v in stats.items()}, scores=scores, raw_scores=raw,
                      truncated=truncated.clone())
    return rollout, texts
