"""Simulated annotators behind one interface (`Annotator.score` / `Annotator.compare`).

- ``rule``: offline deterministic gold (reference similarity, constraints, degeneracy penalties);
- ``rm``: any Hugging Face reward model as gold;
- ``llm``: an AlpacaFarm-style pairwise judge over an OpenAI-compatible endpoint.
"""

from __future__ import annotations

from typing import Any

from rlp_align.core.errors import UserError
from rlp_align.judge.annotators.base import Annotator, AnnotatorConfig, bradley_terry, without_verdict

__all__ = ["Annotator", "AnnotatorConfig", "annotator_options", "bradley_terry", "make_annotator", "without_verdict"]


def annotator_options(cfg: AnnotatorConfig) -> dict[str, Any]:
    """The fields of ``cfg`` that its kind reads, as keyword arguments for `make_annotator`."""
    if cfg.kind == "rule":
        return {"temperature": cfg.temperature, "encoder": cfg.encoder}
    if cfg.kind == "rm":
        return {"path": cfg.rm_path, "temperature": cfg.temperature, "batch_size": cfg.batch_size,
                "max_length": cfg.max_length}
    if cfg.kind == "llm":
        return {"base_url": cfg.base_url, "model": cfg.model, "api_key_env": cfg.api_key_env,
                "cache_path": cfg.cache_path, "max_workers": cfg.max_workers, "timeout_s": cfg.timeout_s,
                "max_retries": cfg.max_retries, "seed": cfg.seed}
    return {}


def make_annotator(kind: str | AnnotatorConfig = "rule", **options: Any) -> Annotator:
    """Build an annotator from its kind and options, or from an `AnnotatorConfig`."""
    if isinstance(kind, AnnotatorConfig):
        kind, options = kind.kind, {**annotator_options(kind), **options}
    if kind == "rule":
        from rlp_align.judge.annotators.rule import RuleAnnotator

        return RuleAnnotator(**options)
    if kind == "rm":
        from rlp_align.judge.annotators.rm import RMAnnotator

        if not options.get("path"):
            raise UserError("the rm annotator needs a reward model: set annotator.rm_path")
        return RMAnnotator(**options)
    if kind == "llm":
        from rlp_align.judge.annotators.llm import LLMJudge

        return LLMJudge(**options)
    raise UserError(f"unknown annotator kind {kind!r}: use 'rule', 'rm' or 'llm'")
