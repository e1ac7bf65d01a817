"""Log-probabilities and entropies of sampled tokens, and the one place sampling temperature meets logits.

Sampling at temperature T draws from softmax(z / T). Every log-prob and entropy that PPO compares (the
sampler's, the policy's in the update, the reference's for the KL penalty) must be of that same tempered
distribution, so temperature is applied in exactly one function, `tempered`, at the point where logits
leave a model: the sampler (`rlp_align.models.generation.sample_tokens`) and `response_logits`. Everything
downstream (`token_logprobs`, `entropy_from_logits`, nucleus sampling, the PPO losses) receives the
logits of the distribution itself and takes no temperature.

Neutral on purpose: generation, PPO and anything else that scores tokens import it, not each other.
"""

from __future__ import annotations

import torch
from torch import nn


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits of the distribution sampled at ``temperature`` > 0, z / T, in fp32 (softmax in bf16 is too coarse).

    At T = 1 the division is skipped: z / 1 is z exactly, and on [B, T, V] logits it is a full pass over the
    largest tensor of a PPO update, forward and backward (issue 29).
    """
    logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


def response_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
    temperature: float,
) -> torch.Tensor:
    """Tempered logits predicting each of the last ``response_length`` tokens [B, T, V], in one forward.

    Positions come from the attention mask, so left padding changes nothing; logits are computed only at
    the ``response_length`` positions that predict a response token (`predicting_positions`), not the prompt.
    """
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   logits_to_keep=predicting_positions(input_ids.shape[1], response_length, input_ids.device),
                   use_cache=False).logits
    return tempered(logits, temperature)


def predicting_positions(width: int, response_length: int, device: torch.device) -> torch.Tensor:
    """The columns whose next-token logits predict the last ``response_length`` tokens of a ``width``-wide row.

    Passed as ``logits_to_keep`` (a 1-D tensor of positions), so the LM head projects exactly those: keeping the
    last T + 1 and dropping the final one cost a wasted row of the vocabulary matmul and, in backward, a zero-filled
    copy of the whole [B, T + 1, V] gradient (issue 29).
    """
    return torch.arange(width - response_length - 1, width - 1, device=device)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of the sampled tokens [B, T] (or [B] from logits [B, V]).

    ``logits`` are those of the sampling distribution (already `tempered`). The gradient is `_TokenLogprobs`'s.
    """
    return _TokenLogprobs.apply(logits.float(), tokens)


class _TokenLogprobs(torch.autograd.Function):
    """z_y - logsumexp(z), with its gradient onehot(y) - softmax(z) built in one [..., V] buffer.

    Autograd's own backward of the same expression allocates four tensors of the logits' size (z - lse, its exp,
    the product with the gradient, the zero-filled scatter of the gather) and adds two of them; on a PPO update's
    [B, T, V] logits (8 x 64 x 49,152 floats is 100 MB each) that is memory traffic and peak memory for nothing.
    The arithmetic is autograd's, operation for operation ((-g) * exp(z - lse), then + g at y), so the gradient is
    bitwise the same (tests/test_logprobs.py).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, tokens, lse)
        return logits.gather(-1, tokens[..., None]).squeeze(-1) - lse

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, tokens, lse = ctx.saved_tensors
        grad_logits = (logits - lse[..., None]).exp_().mul_(-grad[..., None])
        return grad_logits.scatter_add_(-1, tokens[..., None], grad[..., None]), None


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = logsumexp(z) - sum_v softmax(z)_v * z_v, for logits [..., V]."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)
