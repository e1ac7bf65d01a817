"""The built-in world: constrained instructions (`rlp_align.instructions`) judged by the configured annotator
(rule, RM or LLM judge; `rlp_align.annotators`). Its answers are free text, so it has no canonical answer
for SPG's ``key`` backend: cluster by embedding or NLI."""

from __future__ import annotations

from typing import Any

from rlp_align.annotators import Annotator, AnnotatorConfig, make_annotator
from rlp_align.data.records import Instruction
from rlp_align.instructions import builtin_pool

NAME = "instructions"


def pool(n: int, seed: int = 0, max_constraints: int = 3) -> list[Instruction]:
    return builtin_pool(n, seed=seed, max_constraints=max_constraints)


def judge(cfg: AnnotatorConfig | None = None) -> Annotator:
    return make_annotator(cfg or AnnotatorConfig())


def cluster_key(instruction: Any, response: str) -> str | None:
    return None
