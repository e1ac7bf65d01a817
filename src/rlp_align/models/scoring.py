"""Reading a reward model: its linear head, and the score r(x, y) read off its final hidden states.

Two readouts (`READOUTS`), recorded in the checkpoint's config as ``rlp_reward_readout``:

- ``last`` (the default, what TRL, OpenRLHF and ``LlamaForSequenceClassification`` itself do): the head reads the
  last position whose attention mask is 1, so left and right padding agree;
- ``sum``: the head reads every real position and the scores are summed, r(x, y) = Σ_t w·h_t. With a causal
  backbone the prompt's positions do not see the response, so their part is a per-prompt constant that cancels in
  every comparison of two responses to one prompt; what is left is a per-token reward summed over the response.
  A small backbone that knows whether each digit is right cannot always gather that into one last state; summed
  per-token scores can (docs/decisions.md, "Reward readout"). Plain ``transformers`` ignores the setting and reads
  the last token, so a ``sum`` RM is scored correctly only through rlp-align.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlp_align.core.errors import UserError
from rlp_align.data.templates import collate, encode_pair, warn_cut_prompts


def reward_head(model: PreTrainedModel) -> torch.nn.Linear:
    """The linear head of a sequence classifier (``score`` in Llama-like models, ``classifier`` in BERT)."""
    model = unwrap_model(model)
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise UserError(f"{type(model).__name__} has no 'score' or 'classifier' head")
    return head


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP and PEFT wrappers (LoRA layers stay injected in the unwrapped modules)."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


READOUTS = ("last", "sum")


def readout_of(model: torch.nn.Module) -> str:
    """The reward model's readout: ``config.rlp_reward_readout``, ``"last"`` when unset (any HF classifier)."""
    readout = getattr(unwrap_model(model).config, "rlp_reward_readout", None) or "last"
    if readout not in READOUTS:
        raise UserError(f"reward model config has rlp_reward_readout {readout!r}; expected one of {READOUTS}")
    return readout


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is 1, for left or right padding alike."""
    flipped_first = attention_mask.flip(-1).long().argmax(-1)
    return attention_mask.shape[-1] - 1 - flipped_first


def reward_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores r(x, y) and the final-layer state the head reads: the last real token's, or (readout ``sum``) the
    sum of every real token's, so that the score is the head of that state either way.

    Returns ``(scores [B], hidden [B, H])``. The state is what RLP-UML's encoder reads, so its views come from the
    same readout as the reward.
    """
    inner = unwrap_model(model)
    backbone = inner.base_model
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state
    if readout_of(inner) == "sum":
        read = (hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)).sum(1)
    else:
        read = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
    return reward_head(inner)(read).squeeze(-1), read


@torch.no_grad()
def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    responses: list[str],
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
    warn: bool = True,
) -> torch.Tensor:
    """RM scores for (prompt, response) pairs, batched; returns a float tensor [N].

    ``max_prompt_length``: cut each prompt as the policy's sampler did (`templates.fit_prompt`), so an answer
    sampled by a policy is scored on the prompt tokens the policy read. ``warn``: log how many prompts were cut.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out, cut = [], 0
    for start in range(0, len(responses), batch_size):
        pairs = [encode_pair(tokenizer, p, r, max_length, max_prompt_length)
                 for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
        cut += sum(e.prompt_cut for e in pairs)
        ids, mask = collate([e.input_ids for e in pairs], tokenizer.pad_token_id)
        scores, _ = reward_scores(model, ids.to(device), mask.to(device))
        out.append(scores.float().cpu())
    model.train(was_training)
    if warn:
        warn_cut_prompts(cut, len(responses), max_prompt_length or max_length, "reward model")
    return torch.cat(out) if out else torch.zeros(0)
