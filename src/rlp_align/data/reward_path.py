"""One reward path: what a reward model reads for a response, whether it ended with EOS or was cut.

The rule: the RM always scores prompt + response + EOS. A response that was cut at ``max_new_tokens``
is scored as if it had ended there (EOS appended), and the cut is carried beside it as a ``truncated``
flag (in `SampleSet.meta["truncated"]`, in a preference pair's meta as ``truncated_chosen`` /
``truncated_rejected``, in `Rollout.truncated`), to be penalised explicitly by `apply_missing_eos_penalty`.

Why EOS always (docs/decisions.md): every RM is trained on D encoded with EOS (`templates.encode_pair`),
and human-written answers in a preference file carry no cut flag, so the score at the EOS read-out is the
only one the head was fit on; scoring a cut answer at a mid-sentence token reads a state it never saw.
Text paths (`models.score_texts`, best-of-n, SPG, oracle labels, evaluation) and PPO's token path
(`ppo_rollout.make_rollout`, via `append_eos`) then feed the RM the same tokens for the same answer; the prompt
is cut to the policy's ``max_prompt_length`` the same way on both (`templates.fit_prompt`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


def response_ids(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Token ids the RM reads for a response given as text: its tokens, then EOS."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def append_eos(response: torch.Tensor, mask: torch.Tensor, eos_token_id: int,
               pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled responses [B, T] (right-padded) as the RM reads them: EOS appended to rows that lack one.

    Returns ``(response [B, T'], mask [B, T'], truncated [B])`` with T' = T + 1 when some row is cut
    (so every cut row has room for its EOS), else T.
    """
    lengths = mask.long().sum(-1)
    last = response.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    truncated = (last != eos_token_id) | (lengths == 0)
    if not bool(truncated.any()):
        return response, mask, truncated
    response = torch.nn.functional.pad(response, (0, 1), value=pad_token_id)
    mask = torch.nn.functional.pad(mask, (0, 1), value=0)
    rows = truncated.nonzero().squeeze(1)
    response[rows, lengths[rows]] = eos_token_id
    mask[rows, lengths[rows]] = 1
    return response, mask, truncated


def apply_missing_eos_penalty(scores: torch.Tensor, truncated: torch.Tensor | Sequence[bool],
                              penalty: float | None) -> torch.Tensor:
    """r - penalty for each response that did not end with EOS (TRL's ``missing_eos_penalty``).

    The single place where a cut answer is penalised: PPO's rollout scoring and best-of-n's re-ranking call it.
    ``None`` or 0 leaves the scores as they are.
    """
    if not penalty:
        return scores
    cut = torch.as_tensor(truncated, dtype=torch.bool, device=scores.device)
    return scores - penalty * cut.to(scores.dtype)


def pair_truncation(flags: Sequence[bool] | None, chosen: int, rejected: int) -> dict[str, bool]:
    """A preference pair's meta entries ``truncated_chosen`` / ``truncated_rejected`` from per-sample flags."""
    if not isinstance(flags, (list, tuple)) or max(chosen, rejected) >= len(flags):
        return {}
    return {"truncated_chosen": bool(flags[chosen]), "truncated_rejected": bool(flags[rejected])}


def truncated_share(flags: Sequence[bool]) -> float:
    """Fraction of answers that were cut (no EOS); 0 for no answers."""
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else 0.0
