"""Machine-checkable instruction constraints (in the spirit of IFEval, Zhou et al. 2023).

A constraint is a plain dict, e.g. ``{"kind": "max_words", "value": 50}``. For every kind this module has a
checker (``check(c, response) -> bool``) and an English rendering (``render(c) -> str``) that is appended to
the instruction the model sees. Checks are deliberately literal so that a gold annotator can verify them:

| kind | fields | satisfied when |
|---|---|---|
| max_words / min_words | value | word count <= / >= value |
| max_sentences | value | at most ``value`` sentences (split on . ! ? and line breaks; titles excluded) |
| include_words | words | every word occurs as a whole word (case-insensitive) |
| exclude_words | words | none of the words occurs as a whole word (case-insensitive) |
| numbered_list | value | exactly ``value`` lines start with ``1.``/``1)``-style numbering |
| num_paragraphs | value | exactly ``value`` non-empty blocks separated by blank lines |
| title | form | first non-empty line is ``<<Title>>`` (form "angle") or ``# Title`` (form "markdown") |
| lowercase | - | contains letters and no capital letter |
| no_commas | - | no comma anywhere |
| json | - | the whole answer (optionally inside a ```json fence) parses as JSON |
| starts_with / ends_with | value | answer starts / ends with the phrase (case-insensitive, outer whitespace ignored) |
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from rlp_align.core.errors import UserError

Constraint = dict[str, Any]

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S", re.MULTILINE)
_TITLE = re.compile(r"<<[^<>\n]*>>|#+\s+\S.*")
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def words(text: str) -> list[str]:
    """Words as a reader counts them: letters/digits, with inner apostrophes or hyphens."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Sentences: split after . ! ? (followed by space) and at line breaks; title lines and pieces without
    words are dropped."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if words(p) and not _TITLE.fullmatch(p.strip())]


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word.lower())}(?![A-Za-z0-9])", text.lower()) is not None


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _is_json(text: str) -> bool:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


# kind -> (required fields, checker, renderer)
_KINDS: dict[str, tuple[tuple[str, ...], Callable[[Constraint, str], bool], Callable[[Constraint], str]]] = {
    "max_words": (
        ("value",),
        lambda c, r: len(words(r)) <= c["value"],
        lambda c: f"Answer in at most {c['value']} words.",
    ),
    "min_words": (
        ("value",),
        lambda c, r: len(words(r)) >= c["value"],
        lambda c: f"Answer in at least {c['value']} words.",
    ),
    "max_sentences": (
        ("value",),
        lambda c, r: len(sentences(r)) <= c["value"],
        lambda c: f"Use no more than {c['value']} sentences.",
    ),
    "include_words": (
        ("words",),
        lambda c, r: all(_has_word(r, w) for w in c["words"]),
        lambda c: f"Include the word{'s' * (len(c['words']) > 1)} " + " and ".join(f"'{w}'" for w in c["words"])
        + " in your answer.",
    ),
    "exclude_words": (
        ("words",),
        lambda c, r: not any(_has_word(r, w) for w in c["words"]),
        lambda c: f"Do not use the word{'s' * (len(c['words']) > 1)} " + " or ".join(f"'{w}'" for w in c["words"]) + ".",
    ),
    "numbered_list": (
        ("value",),
        lambda c, r: len(_NUMBERED.findall(r)) == c["value"],
        lambda c: f"Format the answer as a numbered list of exactly {c['value']} items (1., 2., ...).",
    ),
    "num_paragraphs": (
        ("value",),
        lambda c, r: len(paragraphs(r)) == c["value"],
        lambda c: f"Write exactly {c['value']} paragraphs separated by blank lines.",
    ),
    "title": (
        ("form",),
        lambda c, r: (
            re.fullmatch(r"<<[^<>\n]*\w[^<>\n]*>>", _first_line(r)) is not None
            if c["form"] == "angle"
            else re.fullmatch(r"#\s+\S.*", _first_line(r)) is not None
        ),
        lambda c: (
            "Start with a title wrapped in double angular brackets on its own line, such as <<My Title>>."
            if c["form"] == "angle"
            else "Start with a Markdown title on its own line, such as # My Title."
        ),
    ),
    "lowercase": (
        (),
        lambda c, r: any(ch.isalpha() for ch in r) and r == r.lower(),
        lambda c: "Write the entire answer in lowercase letters; no capital letters are allowed.",
    ),
    "no_commas": (
        (),
        lambda c, r: "," not in r,
        lambda c: "Do not use any commas.",
    ),
    "json": (
        (),
        lambda c, r: _is_json(r),
        lambda c: "Answer only with valid JSON and no other text.",
    ),
    "starts_with": (
        ("value",),
        lambda c, r: _norm(r).startswith(_norm(c["value"])),
        lambda c: f"Begin your answer with the exact phrase '{c['value']}'.",
    ),
    "ends_with": (
        ("value",),
        lambda c, r: _norm(r).endswith(_norm(c["value"])),
        lambda c: f"End your answer with the exact phrase '{c['value']}'; nothing may follow it.",
    ),
}

KINDS: tuple[str, ...] = tuple(_KINDS)


def validate(c: Any) -> Constraint:
    """Return ``c`` if it is a well-formed constraint, else raise `UserError` saying what is wrong."""
    if not isinstance(c, dict) or "kind" not in c:
        raise UserError(f"a constraint must be a dict with a 'kind' field, got {c!r}")
    if c["kind"] not in _KINDS:
        raise UserError(f"unknown constraint kind {c['kind']!r}; known kinds: {', '.join(KINDS)}")
    fields, _, _ = _KINDS[c["kind"]]
    missing = [f for f in fields if f not in c]
    if missing:
        raise UserError(f"constraint {c!r} lacks field(s) {', '.join(missing)}")
    if "value" in fields and c["kind"] not in ("starts_with", "ends_with"):
        if not isinstance(c["value"], int) or c["value"] < 1:
            raise UserError(f"constraint {c!r}: 'value' must be a positive integer")
    if "words" in fields and (not isinstance(c["words"], list) or not c["words"]):
        raise UserError(f"constraint {c!r}: 'words' must be a non-empty list of strings")
    if c["kind"] == "title" and c["form"] not in ("angle", "markdown"):
        raise UserError(f"constraint {c!r}: 'form' must be 'angle' or 'markdown'")
    return c


def check(c: Constraint, response: str) -> bool:
    """True when ``response`` satisfies constraint ``c``."""
    return bool(_KINDS[validate(c)["kind"]][1](c, response))


def render(c: Constraint) -> str:
    """The constraint as one English sentence for the prompt."""
    return _KINDS[validate(c)["kind"]][2](c)


def render_all(constraints: list[Constraint]) -> str:
    return " ".join(render(c) for c in constraints)


def satisfied_fraction(constraints: list[Constraint], response: str) -> float:
    """Fraction of ``constraints`` that ``response`` satisfies (1.0 when there are none)."""
    if not constraints:
        return 1.0
    return sum(check(c, response) for c in constraints) / len(constraints)
