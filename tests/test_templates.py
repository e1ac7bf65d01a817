"""Encoding long fields (issue 23 §3): text is cut by characters before tokenising, with a bound derived from
max_length, and the tokens kept are those of tokenising the whole field."""

import random

import pytest

from rlp_align.data import templates, user_prompt
from rlp_align.data.templates import char_budget, encode_pair, encode_prompt
from rlp_align.models import load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model("tiny"))


@pytest.mark.parametrize("seed", range(2))
def test_cut_keeps_the_tokens_of_the_whole_field(tokenizer, seed, monkeypatch):
    rng = random.Random(seed)
    words = ["a", "banana", " ", "\n", "é", "的", "!!", "tokens", "   ", "x" * 40]
    text = "".join(rng.choice(words) for _ in range(5_000))  # far longer than the budget
    max_length = rng.choice([80, 96, 128])  # (64: main's fit_prompt refuses a huge prompt + huge response)
    assert len(text) > char_budget(tokenizer, max_length)
    pairs = ((user_prompt("Name a fruit."), text), (user_prompt(text), "A banana."), (user_prompt(text), text))
    cut = [encode_pair(tokenizer, p, r, max_length) for p, r in pairs]
    prompt = encode_prompt(tokenizer, user_prompt(text), max_length)
    monkeypatch.setattr(templates, "char_budget", lambda tok, n: 10**12)  # the reference: no cut at all
    assert cut == [encode_pair(tokenizer, p, r, max_length) for p, r in pairs]
    assert all(c.truncated for c in cut)
    assert prompt == encode_prompt(tokenizer, user_prompt(text), max_length)


def test_the_tokenizer_never_sees_a_huge_field(tokenizer, monkeypatch):
    seen = []
    real = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, text, **kw: seen.append(len(text)) or real(
        self, text, **kw))
    huge = "word " * 2_000_000  # 10 MB
    encode_pair(tokenizer, user_prompt(huge), huge, 64)
    assert seen and max(seen) <= char_budget(tokenizer, 64) + 1000  # + the chat template's own text
