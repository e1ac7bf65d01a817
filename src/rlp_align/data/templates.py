"""Turning chat prompts and responses into token ids.

A prompt is rendered with the tokenizer's chat template when it has one, else with the AlpacaFarm
prompt. The response follows as its own tokens plus EOS, exactly as generation produces it, so the
tokens a reward model scores are the tokens the policy sampled.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from rlp_align.core.errors import UserError
from rlp_align.data.records import Messages
from rlp_align.data.reward_path import response_ids as _response_ids

log = logging.getLogger(__name__)

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


UNKNOWN_SHARE = 0.5  # a text read as more unknown tokens than this is not text the model can read


def check_readable(tokenizer: PreTrainedTokenizerBase, text: str, what: str) -> None:
    """Refuse ``text`` when ``tokenizer`` turns most of it into its unknown token.

    A tokenizer with a closed alphabet (the micro world's reads digits, '+', '=' and '.', and its unknown
    token is the pad) maps every English character to one id; samples, best-of-n picks and RM scores on such
    text come out meaningless, with no error. Byte-level tokenizers never produce an unknown token, so this
    costs them one count.
    """
    unk = tokenizer.unk_token_id
    if unk is None or not text.strip():
        return
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unknown = sum(1 for i in ids if i == unk)
    if unknown > UNKNOWN_SHARE * len(ids):
        raise UserError(
            f"the tokenizer of {tokenizer.name_or_path} reads {unknown} of the {len(ids)} tokens of a {what} as its "
            f"unknown token {tokenizer.unk_token!r} ({text[:60]!r}): this model cannot read this text, so its "
            "samples and scores on it would be meaningless. Give a model whose tokenizer covers the text in place "
            f"of {tokenizer.name_or_path}, or text in its alphabet.")


def _ids(tokenizer: PreTrainedTokenizerBase, prompt: Messages) -> list[int]:
    return tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def _with_user_text(prompt: Messages, index: int, text: str) -> Messages:
    return [dict(m, content=text) if i == index else m for i, m in enumerate(prompt)]


def _last_user(prompt: Messages) -> int:
    return max((i for i, m in enumerate(prompt) if m.get("role") == "user"), default=len(prompt) - 1)


_LONGEST_TOKEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def char_budget(tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> int:
    """Characters that surely hold more than ``max_tokens`` tokens: no token covers more characters than the
    longest vocabulary entry (byte-level entries count bytes, which is more), doubled for normalisers that
    drop characters. Text is cut to this many characters before tokenising, so a 50 MB field with
    ``max_length`` 64 costs what a short one does (issue 23 §3) and yields the same tokens."""
    if tokenizer not in _LONGEST_TOKEN:
        _LONGEST_TOKEN[tokenizer] = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return 2 * (max_tokens + 16) * max(1, _LONGEST_TOKEN[tokenizer])


def _cut_user_text(prompt: Messages, chars: int) -> Messages:
    """The prompt with its last user text cut to its last ``chars`` characters: `fit_prompt` keeps only an end of
    that text, and at most ``max_length`` tokens of it, which ``chars`` (`char_budget`) surely holds."""
    user = _last_user(prompt)
    if not prompt or len(prompt[user]["content"]) <= chars:
        return prompt
    return _with_user_text(prompt, user, prompt[user]["content"][-chars:])


def template_length(tokenizer: PreTrainedTokenizerBase, prompt: Messages) -> int:
    """Tokens the prompt takes without its last user text: the part `fit_prompt` never cuts."""
    return len(_ids(tokenizer, _with_user_text(prompt, _last_user(prompt), "")))


def _tail(tokenizer: PreTrainedTokenizerBase, text: str, keep: int) -> str:
    """The end of ``text`` from the start of its ``keep``-th last token (cut at a token boundary of the text)."""
    if keep <= 0:
        return ""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text[offsets[-keep][0]:] if keep < len(offsets) else text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[-keep:]) if keep < len(ids) else text


def fit_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Messages, max_length: int | None) -> tuple[list[int], bool]:
    """Prompt token ids, at most ``max_length`` of them, and whether the prompt had to be cut.

    An over-long prompt loses the start of its last user message's text (the end, nearest the answer, stays);
    the chat template around it (the turn headers and the generation prompt) is never cut, so the model always
    sees the structure it was trained on. A template longer than ``max_length`` on its own is a UserError.
    Every path that encodes a prompt (sampling, PPO's rollout, the reward model's text path) goes through here,
    so with the same ``max_length`` they read the same tokens.
    """
    if max_length is not None:
        prompt = _cut_user_text(prompt, char_budget(tokenizer, max_length))  # by characters first: char_budget
    check_readable(tokenizer, "\n".join(str(m.get("content", "")) for m in prompt), "prompt")
    ids = _ids(tokenizer, prompt)
    if max_length is None or len(ids) <= max_length:
        return ids, False
    user = _last_user(prompt)
    text = prompt[user]["content"]
    keep = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - (len(ids) - max_length)
    while keep > 0:  # re-tokenising at the junctions can merge tokens differently: shorten until it fits
        ids = _ids(tokenizer, _with_user_text(prompt, user, _tail(tokenizer, text, keep)))
        if len(ids) <= max_length:
            return ids, True
        keep -= max(1, len(ids) - max_length)
    empty = template_length(tokenizer, prompt)
    raise UserError(f"a prompt does not fit in {max_length} tokens even without any of its user text: the chat "
                    f"template and the other turns take {empty} tokens. Raise max_prompt_length (or the max_length "
                    "that bounds it) above that.")


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Messages, max_length: int | None = None) -> list[int]:
    """Prompt token ids; an over-long prompt loses the start of the user's text, never the template (`fit_prompt`)."""
    return fit_prompt(tokenizer, prompt, max_length)[0]


def warn_cut_prompts(cut: int, total: int, max_length: int | None, where: str) -> None:
    """One warning with the number of prompts `fit_prompt` had to cut (none: silent)."""
    if cut:
        log.warning("%s: %d of %d prompts are longer than %s tokens; the start of their user text was cut (the chat "
                    "template kept) so the model and the reward model read the same tokens; raise "
                    "max_prompt_length to keep them whole", where, cut, total, max_length)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Messages], max_length: int | None,
                   where: str) -> list[list[int]]:
    """`encode_prompt` for many prompts, with one warning counting those that were cut (``where``: who asks)."""
    fitted = [fit_prompt(tokenizer, p, max_length) for p in prompts]
    warn_cut_prompts(sum(cut for _, cut in fitted), len(prompts), max_length, where)
    return [ids for ids, _ in fitted]


@dataclass
class EncodedPair:
    input_ids: list[int]
    prompt_length: int
    truncated: bool  # the prompt or the response was cut
    prompt_cut: bool = False  # the prompt's user text was cut (`fit_prompt`)


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: Messages, response: str, max_length: int,
    max_prompt_length: int | None = None,
) -> EncodedPair:
    """Prompt + response + EOS, at most ``max_length`` tokens, the prompt at most ``max_prompt_length``.

    The prompt is first cut to ``max_prompt_length`` exactly as the sampler and PPO's rollout cut it
    (`fit_prompt`), so a reward model scoring a sampled answer as text reads the prompt the policy read.
    Then truncation keeps the whole response when it can (the prompt loses the start of its user text, never
    the template); a response longer than the budget keeps its beginning and loses the EOS. ``truncated``
    reports any cut.
    """
    budget = char_budget(tokenizer, max_length)  # cut by characters first: neither field keeps more than this
    prompt, response = _cut_user_text(prompt, budget), response[:budget]
    check_readable(tokenizer, response, "response")
    response_ids = _response_ids(tokenizer, response)  # the one reward path: EOS always (rlp_align.data.reward_path)
    prompt_ids, prompt_cut = fit_prompt(tokenizer, prompt, max_prompt_length)
    truncated = prompt_cut
    if len(prompt_ids) + len(response_ids) > max_length:
        # the prompt keeps at least a quarter of the budget, and never less than its template plus one token
        min_prompt = min(len(prompt_ids), max(template_length(tokenizer, prompt) + 1, max_length // 4))
        if len(response_ids) > max_length - min_prompt:
            response_ids = response_ids[: max(1, max_length - min_prompt)]
        if len(prompt_ids) + len(response_ids) > max_length:
            prompt_ids, _ = fit_prompt(tokenizer, prompt, max_length - len(response_ids))
            prompt_cut = True
        truncated = True
    return EncodedPair(prompt_ids + response_ids, len(prompt_ids), truncated, prompt_cut)


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
