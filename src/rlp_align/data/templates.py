"""Turning chat prompts and responses into token ids.

A prompt is rendered with the tokenizer's chat template when it has one, else with the AlpacaFarm
prompt. The response follows as its own tokens plus EOS, exactly as generation produces it, so the
tokens a reward model scores are the tokens the policy sampled.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from rlp_align.data.records import Messages
from rlp_align.data.reward_path import response_ids as _response_ids

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Messages) -> str:
    """The text the model continues: chat template with a generation prompt, or AlpacaFarm's prompt."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if len(prompt) == 1:
        return ALPACA_PROMPT.format(instruction=prompt[0]["content"])
    turns = [f"{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in prompt]
    return "\n\n".join(turns) + "\n\nAssistant:"


_LONGEST_TOKEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def char_budget(tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> int:
    """Characters that surely hold more than ``max_tokens`` tokens: no token covers more characters than the
    longest vocabulary entry (byte-level entries count bytes, which is more), doubled for normalisers that
    drop characters. Text is cut to this many characters before tokenising, so a 50 MB field with
    ``max_length`` 64 costs what a short one does (issue 23 §3) and yields the same first tokens."""
    if tokenizer not in _LONGEST_TOKEN:
        _LONGEST_TOKEN[tokenizer] = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return 2 * (max_tokens + 16) * max(1, _LONGEST_TOKEN[tokenizer])


def _keep_ends(prompt: Messages, chars: int) -> Messages:
    """The prompt with each message cut to its last ``chars`` characters (truncation keeps a prompt's end)."""
    return [{**m, "content": m["content"][-chars:]} if len(m["content"]) > chars else m for m in prompt]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Messages, max_length: int | None = None) -> list[int]:
    """Prompt token ids; an over-long prompt keeps its end (the instruction nearest the answer)."""
    if max_length is not None:
        prompt = _keep_ends(prompt, char_budget(tokenizer, max_length))
    ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:]
    return ids


@dataclass
class EncodedPair:
    input_ids: list[int]
    prompt_length: int
    truncated: bool


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: Messages, response: str, max_length: int
) -> EncodedPair:
    """Prompt + response + EOS, at most ``max_length`` tokens.

    Truncation keeps the whole response when it can (the prompt loses its start); a response longer
    than the budget keeps its beginning and loses the EOS. ``truncated`` reports either case.
    """
    budget = char_budget(tokenizer, max_length)  # cut by characters first: see char_budget
    response_ids = _response_ids(tokenizer, response[:budget])  # the one reward path: EOS always (data.reward_path)
    prompt_ids = encode_prompt(tokenizer, _keep_ends(prompt, budget))
    truncated = False
    min_prompt = min(len(prompt_ids), max(1, max_length // 4))
    if len(response_ids) > max_length - min_prompt:
        response_ids = response_ids[: max_length - min_prompt]
        truncated = True
    if len(prompt_ids) + len(response_ids) > max_length:
        prompt_ids = prompt_ids[-(max_length - len(response_ids)) :]
        truncated = True
    return EncodedPair(prompt_ids + response_ids, len(prompt_ids), truncated)


def collate(
    sequences: list[list[int]], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists into ``(input_ids, attention_mask)`` tensors."""
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if not seq:
            continue
        if side == "right":
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        else:
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
    return ids, mask
