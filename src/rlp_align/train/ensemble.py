"""Reward functions: one reward model, or a conservative ensemble of them (Coste et al., ICLR 2024).

A *reward function* is any callable ``reward_fn(prompts: list[Messages], responses: list[str]) -> Tensor [N]``;
PPO and best-of-n accept one, so tests plug in a rule and the pipeline an RM or an ensemble. RM-backed reward
functions also offer ``score_tokens(input_ids, attention_mask)``: PPO uses it to score the exact tokens the
policy sampled (no decode/re-encode round trip) when the RM shares the policy's tokenizer.

Ensembles ("Reward Model Ensembles Help Mitigate Overoptimization", Coste et al. 2024) aggregate k member
scores per response: ``mean``; worst-case optimisation ``wco`` = min over members; uncertainty-weighted
optimisation ``uwo`` = mean - lambda * variance over members (population variance, Coste et al. Eq. 3).
Members should be trained alike (same data, different seeds) so their scales are comparable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlp_align.core.device import default_device
from rlp_align.core.errors import UserError
from rlp_align.data.records import Instruction, Messages
from rlp_align.models import load_reward_model, load_tokenizer, reward_scores, score_texts
from rlp_align.models.tokens import same_tokenizer

RewardFn = Callable[[list[Messages], list[str]], torch.Tensor]
Aggregate = Literal["mean", "wco", "uwo"]
AGGREGATES = ("mean", "wco", "uwo")


def aggregate(member_scores: torch.Tensor, method: str = "mean", uwo_lambda: float = 0.5) -> torch.Tensor:
    """Combine member scores [k, N] into one score per response [N].

    mean: (1/k) sum_i r_i;  wco: min_i r_i;  uwo: mean - lambda * (1/k) sum_i (r_i - mean)^2.
    """
    if member_scores.dim() != 2 or member_scores.shape[0] < 1:
        raise ValueError(f"member_scores must be [k >= 1, N], got {tuple(member_scores.shape)}")
    if method == "mean":
        return member_scores.mean(0)
    if method == "wco":
        return member_scores.min(0).values
    if method == "uwo":
        return member_scores.mean(0) - uwo_lambda * member_scores.var(0, unbiased=False)
    raise UserError(f"unknown ensemble aggregate '{method}': choose one of {', '.join(AGGREGATES)}")


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether token ids mean the same thing under both tokenizers (`models.tokens.same_tokenizer`)."""
    return same_tokenizer(a, b)


class RewardModelFn:
    """A reward model as a reward function: r(x, y) read at the last real token.

    ``max_prompt_length``: the policy's; prompts given as text are cut as the policy's sampler cut them
    (`templates.fit_prompt`), so the text path scores the same tokens as `score_tokens` on the sampled ids.
    The sampler already warned about cut prompts, so this does not warn again.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 8,
                 max_length: int = 1024, max_prompt_length: int | None = None):
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.batch_size, self.max_length, self.max_prompt_length = batch_size, max_length, max_prompt_length

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, device: torch.device | str | None = None, batch_size: int = 8,
                  max_length: int = 1024, max_prompt_length: int | None = None) -> RewardModelFn:
        return cls(load_reward_model(path).to(device or default_device()), load_tokenizer(path), batch_size=batch_size,
                   max_length=max_length, max_prompt_length=max_prompt_length)

    def __call__(self, prompts: list[Messages], responses: list[str]) -> torch.Tensor:
        return score_texts(self.model, self.tokenizer, prompts, responses, self.batch_size, self.max_length,
                           self.max_prompt_length, warn=False)

    @torch.inference_mode()
    def score_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores [B] of already-tokenised sequences (any padding side), batched."""
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, input_ids.shape[0], self.batch_size):
            ids = input_ids[start : start + self.batch_size].to(device)
            mask = attention_mask[start : start + self.batch_size].to(device)
            out.append(reward_scores(self.model, ids, mask)[0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


class JudgeReward:
    """A gold judge as the reward function: r(x, y) = ``judge.score([instruction of x], [y])``, no reward model.

    The ceiling of any refreshed RM (issue 28: PPO against the gold itself). ``judge`` is any annotator with
    ``score(instructions, responses)`` (`rlp_align.judge`, a world's program); ``instructions`` are the prompts
    it may be asked about, with the reference/meta the judge reads, looked up by their last user message. It
    scores text, so PPO decodes its samples for it (no ``score_tokens``).
    """

    tokenizer = None

    def __init__(self, judge: Any, instructions: list[Instruction]):
        if not getattr(judge, "can_score", True):
            raise UserError(f"the judge {type(judge).__name__} gives preferences, not scores: it cannot be a reward")
        self.judge, self.by_prompt = judge, {x.text: x for x in instructions}

    def __call__(self, prompts: list[Messages], responses: list[str]) -> torch.Tensor:
        missing = [p[-1]["content"] for p in prompts if p[-1]["content"] not in self.by_prompt]
        if missing:
            raise UserError(f"the gold reward knows no instruction for the prompt {missing[0]!r}")
        scores = self.judge.score([self.by_prompt[p[-1]["content"]] for p in prompts], responses)
        return torch.as_tensor(scores, dtype=torch.float32)


class EnsembleReward:
    """k reward models aggregated by `aggregate`; callable as a reward function."""

    def __init__(self, model_paths: list[str | os.PathLike | RewardModelFn], method: str = "mean",
                 uwo_lambda: float = 0.5, *, device: torch.device | str | None = None, batch_size: int = 8,
                 max_length: int = 1024, max_prompt_length: int | None = None):
        if not model_paths:
            raise UserError("a reward ensemble needs at least one member reward model")
        if method not in AGGREGATES:
            raise UserError(f"unknown ensemble aggregate '{method}': choose one of {', '.join(AGGREGATES)}")
        self.members = [m if isinstance(m, RewardModelFn) else RewardModelFn.from_path(
            m, device=device, batch_size=batch_size, max_length=max_length, max_prompt_length=max_prompt_length)
            for m in model_paths]
        self.method, self.uwo_lambda = method, uwo_lambda
        first = self.members[0].tokenizer
        # token ids can be shared only when every member reads them the same way
        self.tokenizer = first if all(same_vocabulary(first, m.tokenizer) for m in self.members) else None

    def member_scores(self, prompts: list[Messages], responses: list[str]) -> torch.Tensor:
        """Each member's scores, [k, N]."""
        return torch.stack([m(prompts, responses) for m in self.members])

    def __call__(self, prompts: list[Messages], responses: list[str]) -> torch.Tensor:
        return aggregate(self.member_scores(prompts, responses), self.method, self.uwo_lambda)

    def score_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.tokenizer is None:
            raise UserError("ensemble members use different tokenizers; score texts instead of token ids")
        scores = torch.stack([m.score_tokens(input_ids, attention_mask) for m in self.members])
        return aggregate(scores, self.method, self.uwo_lambda)


def make_reward_fn(
    reward_model: str | None,
    reward_ensemble: list[str] | None = None,
    ensemble_aggregate: str = "mean",
    uwo_lambda: float = 0.5,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
) -> RewardModelFn | EnsembleReward:
    """The reward function a config asks for: the ensemble when members are listed, else the single RM.

    ``max_prompt_length``: the policy's, so that prompts are cut as its sampler cut them (`RewardModelFn`)."""
    if reward_ensemble:
        return EnsembleReward(list(reward_ensemble), ensemble_aggregate, uwo_lambda, device=device,
                              batch_size=batch_size, max_length=max_length, max_prompt_length=max_prompt_length)
    if not reward_model:
        raise UserError("no reward model: set reward_model (an RM folder) or reward_ensemble (a list of them)")
    return RewardModelFn.from_path(reward_model, device=device, batch_size=batch_size, max_length=max_length,
                                   max_prompt_length=max_prompt_length)
