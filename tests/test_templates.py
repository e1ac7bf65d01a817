"""Encoding long fields (issue 23 §3): text is cut by characters before tokenising, with a bound derived from
max_length, and the tokens kept are those of tokenising the whole field."""

import random

import pytest

from rlp_align.data import user_prompt
from rlp_align.data.templates import char_budget, encode_pair, encode_prompt, format_prompt
from rlp_align.models import load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("tiny"))


def uncut_pair(tokenizer, prompt, response, max_length):
    """encode_pair's rule applied to the whole field, as before the cut (the reference)."""
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    min_prompt = min(len(prompt_ids), max(1, max_length // 4))
    response_ids = response_ids[: max_length - min_prompt]
    return prompt_ids[-(max_length - len(response_ids)):] + response_ids


@pytest.mark.parametrize("seed", range(2))
def test_cut_keeps_the_tokens_of_the_whole_field(tokenizer, seed):
    rng = random.Random(seed)
    words = ["a", "banana", " ", "\n", "é", "的", "!!", "tokens", "   ", "x" * 40]
    text = "".join(rng.choice(words) for _ in range(5_000))  # far longer than the budget
    max_length = rng.choice([8, 32, 64])
    assert len(text) > char_budget(tokenizer, max_length)
    for prompt, response in ((user_prompt("Name a fruit."), text), (user_prompt(text), "A banana."),
                             (user_prompt(text), text)):
        got = encode_pair(tokenizer, prompt, response, max_length)
        assert got.truncated and got.input_ids == uncut_pair(tokenizer, prompt, response, max_length)
    whole = tokenizer(format_prompt(tokenizer, user_prompt(text)), add_special_tokens=False)["input_ids"]
    assert encode_prompt(tokenizer, user_prompt(text), max_length) == whole[-max_length:]


def test_the_tokenizer_never_sees_a_huge_field(tokenizer, monkeypatch):
    seen = []
    real = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, text, **kw: seen.append(len(text)) or real(
        self, text, **kw))
    huge = "word " * 2_000_000  # 10 MB
    encode_pair(tokenizer, user_prompt(huge), huge, 64)
    assert seen and max(seen) <= char_budget(tokenizer, 64) + 1000  # + the chat template's own text
