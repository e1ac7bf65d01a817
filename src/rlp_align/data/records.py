"""The internal records every reader normalises to.

A prompt is always a list of chat messages ``[{"role": "user", "content": ...}, ...]`` ending with a user
turn: single-turn instructions are one user message, HH-RLHF dialogues keep their turns. Responses are
plain strings (the final assistant turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Messages = list[dict[str, str]]


def user_prompt(text: str) -> Messages:
    """A single-turn prompt."""
    return [{"role": "user", "content": text}]


def join_instruction(instruction: str, input_text: str = "") -> str:
    """Alpaca's instruction + optional input, as one user message."""
    instruction, input_text = instruction.strip(), (input_text or "").strip()
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def prompt_text(prompt: Messages) -> str:
    """The last user message: what a judge reads as "the instruction"."""
    return prompt[-1]["content"]


@dataclass
class Preference:
    """One preference pair: ``chosen`` is preferred over ``rejected`` for ``prompt``."""

    prompt: Messages
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instruction:
    """One instruction, with an optional reference answer and machine-checkable constraints."""

    prompt: Messages
    reference: str | None = None
    constraints: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return prompt_text(self.prompt)


@dataclass
class SampleSet:
    """n policy samples for one prompt (RLP step 4), with provenance in ``meta``."""

    prompt: Messages
    responses: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def without_empty_responses(sets: list[SampleSet]) -> tuple[list[SampleSet], int]:
    """The sample sets with empty or whitespace-only responses removed, and how many were removed.

    The one filter before samples become pairs (SPG, oracle labels): a preference with an empty side is
    invalid and the readers refuse it. A per-response list in ``meta["truncated"]`` is filtered alike.
    """
    out, removed = [], 0
    for s in sets:
        keep = [j for j, r in enumerate(s.responses) if r.strip()]
        removed += len(s.responses) - len(keep)
        meta = dict(s.meta)
        if isinstance(meta.get("truncated"), list) and len(meta["truncated"]) == len(s.responses):
            meta["truncated"] = [meta["truncated"][j] for j in keep]
        out.append(SampleSet(s.prompt, [s.responses[j] for j in keep], meta))
    return out, removed
