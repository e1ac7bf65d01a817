"""The one interface every annotator (rule, reward model, LLM judge) implements.

- ``score(instructions, responses) -> list[float]``: a scalar quality per response (score-based annotators).
- ``compare(instructions, a, b) -> list[float]``: P(a preferred over b) in [0, 1]; 0.5 is a tie.
- ``compare_with_details(...)`` returns the same probabilities plus one dict per pair for provenance
  (scores, presentation order, raw verdicts), which `annotate` and `evaluate` record.

Score-based annotators turn scores into preferences with the Bradley-Terry model
``P(a > b) = sigmoid((s_a - s_b) / temperature)``; temperature 0 means a hard argmax (ties give 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rlp_align.core.errors import UserError
from rlp_align.data.records import Instruction

TIE_EPS = 1e-9


def bradley_terry(s_a: float, s_b: float, temperature: float) -> float:
    """P(a > b) = sigmoid((s_a - s_b) / T) (Bradley & Terry 1952); T = 0 is the argmax (0.5 on a tie)."""
    diff = s_a - s_b
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return 0.5 if abs(diff) <= TIE_EPS else float(diff > 0)
    z = diff / temperature
    # numerically safe sigmoid
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class Annotator:
    """Base class. Subclasses implement `score` (and inherit `compare`) or override `compare_with_details`."""

    name: str = "annotator"
    can_score: bool = True

    def __init__(self, temperature: float = 0.0):
        self.temperature = temperature

    def describe(self) -> dict[str, Any]:
        """Metadata written next to every label: what judged it (never secrets)."""
        return {"annotator": self.name, "temperature": self.temperature}

    def score(self, instructions: list[Instruction], responses: list[str]) -> list[float]:
        raise UserError(f"the '{self.name}' annotator only compares pairs; it cannot score single responses")

    def compare_with_details(
        self, instructions: list[Instruction], a: list[str], b: list[str]
    ) -> tuple[list[float], list[dict[str, Any]]]:
        _check_lengths(instructions, a, b)
        n = len(instructions)
        # One batched scoring call for both sides (embedding / RM batches are the cost).
        scores = self.score(instructions + instructions, list(a) + list(b))
        s_a, s_b = scores[:n], scores[n:]
        probs = [bradley_terry(x, y, self.temperature) for x, y in zip(s_a, s_b)]
        details = [{"score_a": x, "score_b": y} for x, y in zip(s_a, s_b)]
        return probs, details

    def compare(self, instructions: list[Instruction], a: list[str], b: list[str]) -> list[float]:
        """P(a preferred over b) for each pair, in [0, 1]; 0.5 is a tie."""
        return self.compare_with_details(instructions, a, b)[0]


def without_verdict(details: list[dict[str, Any]]) -> list[int]:
    """Indices of the pairs a judge gave no verdict for (the `llm` judge after every retry: a refusal or another
    format). Callers leave them out with a counted warning instead of labelling them by a coin flip."""
    return [i for i, d in enumerate(details) if "verdict" in d and d["verdict"] is None]


def _check_lengths(instructions: list, a: list, b: list) -> None:
    if not (len(instructions) == len(a) == len(b)):
        raise UserError(
            f"compare needs as many instructions as responses: got {len(instructions)} instructions, "
            f"{len(a)} responses a and {len(b)} responses b"
        )


@dataclass
class AnnotatorConfig:
    """Which judge to use, for `rlp annotate` and `rlp eval winrate`. Only the fields of ``kind`` are read."""

    kind: str = "rule"  # rule | rm | llm
    temperature: float = 0.0  # Bradley-Terry temperature for compare() of score-based judges
    # rule
    encoder: str | None = None  # sentence-encoder folder; None = bundled all-MiniLM-L6-v2
    # rm
    rm_path: str | None = None
    batch_size: int = 8
    max_length: int = 1024
    # llm
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None  # the NAME of the environment variable holding the key
    cache_path: str | None = None
    max_workers: int = 4
    timeout_s: float = 60.0
    max_retries: int = 3
    seed: int = 0
