"""Simulated preference collection (`rlp annotate`), as AlpacaFarm's simulated annotators do it.

For a pair (a, b) of policy samples the annotator gives P(a > b): for score-based annotators the
Bradley-Terry probability ``sigmoid((s_a - s_b) / temperature)`` (temperature 0 = deterministic argmax,
a tie is a fair coin), for the LLM judge its verdict. A label is drawn from that probability and then
flipped with probability ``noise`` (AlpacaFarm: 25 %), so the reward model sees human-like noisy labels.
Output: TRL rows (prompt/chosen/rejected) and AlpacaFarm rows (instruction/input/output_1/output_2/
preference), both carrying annotator metadata and whether the label was flipped.
"""

from __future__ import annotations

import itertools
import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlp_align.core.errors import DataError, UserError
from rlp_align.core.io import is_malformed, read_rows, write_json
from rlp_align.data.readers import read_sample_sets
from rlp_align.data.records import Instruction, Preference, user_prompt
from rlp_align.data.writers import write_preferences
from rlp_align.judge.annotators import (
    Annotator,
    AnnotatorConfig,
    bradley_terry,
    make_annotator,
    without_verdict,
)


@dataclass
class AnnotateConfig:
    input: str = ""  # SampleSet JSONL ({prompt, responses, meta}) or an answers file ({prompt, response, ...})
    output_dir: str = "annotated"
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    noise: float = 0.25  # label-flip probability (AlpacaFarm's simulated annotators: 0.25)
    temperature: float = 0.0  # Bradley-Terry temperature; 0 = argmax
    pairs_per_prompt: int = 1
    seed: int = 0
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


def label_pairs(
    annotator: Annotator,
    instructions: list[Instruction],
    responses_a: list[str],
    responses_b: list[str],
    noise: float = 0.25,
    temperature: float = 0.0,
    seed: int = 0,
    truncated_a: list[bool] | None = None,
    truncated_b: list[bool] | None = None,
) -> list[Preference]:
    """Label each pair: y ~ Bernoulli(P(a > b)), then flip y with probability ``noise``.

    ``truncated_a/b`` (cut at max_new_tokens, per response) go to meta as ``truncated_chosen/rejected``.
    """
    if not 0.0 <= noise <= 1.0:
        raise UserError(f"label noise must be in [0, 1], got {noise}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if annotator.can_score:
        n = len(instructions)
        if not (n == len(responses_a) == len(responses_b)):
            raise UserError("label_pairs needs as many instructions as responses on each side")
        scores = annotator.score(instructions + instructions, list(responses_a) + list(responses_b))
        probs = [bradley_terry(x, y, temperature) for x, y in zip(scores[:n], scores[n:])]
        details = [{"score_a": x, "score_b": y} for x, y in zip(scores[:n], scores[n:])]
    else:
        probs, details = annotator.compare_with_details(instructions, responses_a, responses_b)
    missing = set(without_verdict(details))
    if missing:
        warnings.warn(f"the judge gave no valid verdict for {len(missing)} of {len(details)} pairs; they are left "
                      "out of the preferences (not labelled by a coin flip)", RuntimeWarning, stacklevel=2)
    rng = random.Random(seed)
    about = annotator.describe()
    prefs = []
    for i, (inst, a, b, p, extra) in enumerate(zip(instructions, responses_a, responses_b, probs, details)):
        a_wins = rng.random() < p
        flipped = rng.random() < noise
        if i in missing:  # after the draws, so the other pairs' labels do not depend on it
            continue
        a_wins ^= flipped
        meta = {**about, **extra, "p_a": p, "chosen": "a" if a_wins else "b", "flipped": flipped,
                "noise": noise, "label_temperature": temperature, "seed": seed}
        if truncated_a is not None and truncated_b is not None:
            cut = (truncated_a[i], truncated_b[i]) if a_wins else (truncated_b[i], truncated_a[i])
            meta["truncated_chosen"], meta["truncated_rejected"] = bool(cut[0]), bool(cut[1])
        if inst.meta.get("subset"):
            meta["subset"] = inst.meta["subset"]
        chosen, rejected = (a, b) if a_wins else (b, a)
        prefs.append(Preference(prompt=inst.prompt, chosen=chosen, rejected=rejected, meta=meta))
    return prefs


def _prompt(value: Any, path: str, row: int) -> list[dict[str, str]]:
    if isinstance(value, str) and value.strip():
        return user_prompt(value)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value
    raise DataError(path, row, "prompt", "expected a non-empty string or a list of chat messages")


def read_candidates(path: str, skip_invalid: bool = False) -> list[tuple[Instruction, list[str]]]:
    """(instruction, candidate responses) per prompt from a SampleSet file or an answers file.

    Answers files (one response per row, as `rlp generate` writes them) are grouped by prompt; reference,
    constraints and subset ride along. SampleSet rows may carry ``reference``/``constraints`` in ``meta``.
    """
    first = next((row for _, row in read_rows(path) if not is_malformed(row)), None)
    if isinstance(first, dict) and "responses" in first:
        return [
            (Instruction(s.prompt, s.meta.get("reference"), list(s.meta.get("constraints") or []), s.meta),
             s.responses)
            for s in read_sample_sets(path, skip_invalid=skip_invalid)
        ]
    if not (isinstance(first, dict) and "response" in first):
        raise UserError(
            f"{path}: expected sample sets ({{prompt, responses: [...]}}) or answers ({{prompt, response}}) rows"
        )
    groups: dict[str, tuple[Instruction, list[str]]] = {}
    for i, row in read_rows(path):
        if is_malformed(row) or not isinstance(row, dict):
            raise DataError(path, i, None, getattr(row, "problem", "expected a JSON object"))
        if not isinstance(row.get("response"), str):
            raise DataError(path, i, "response", "expected a string")
        prompt = _prompt(row.get("prompt"), path, i)
        key = json.dumps(prompt, sort_keys=True)
        if key not in groups:
            meta = dict(row.get("meta") or {})
            if row.get("subset"):
                meta["subset"] = row["subset"]
            groups[key] = (Instruction(prompt, row.get("reference"), list(row.get("constraints") or []), meta), [])
        groups[key][1].append(row["response"])
    return list(groups.values())


def make_pairs(
    candidates: list[tuple[Instruction, list[str]]], pairs_per_prompt: int, seed: int
) -> tuple[list[Instruction], list[str], list[str], int]:
    """Up to ``pairs_per_prompt`` random pairs of distinct non-empty responses per prompt; also the number
    of prompts skipped for having fewer than two."""
    rng = random.Random(seed)
    instructions, a, b, skipped = [], [], [], 0
    for inst, responses in candidates:
        # Empty samples are dropped: preference readers refuse empty responses.
        distinct = [r for r in dict.fromkeys(responses) if r.strip()]
        if len(distinct) < 2:
            skipped += 1
            continue
        combos = list(itertools.combinations(range(len(distinct)), 2))
        for i, j in rng.sample(combos, k=min(pairs_per_prompt, len(combos))):
            if rng.random() < 0.5:  # do not let the sample order decide which side is "a"
                i, j = j, i
            instructions.append(inst)
            a.append(distinct[i])
            b.append(distinct[j])
    return instructions, a, b, skipped


def run_annotate(cfg: AnnotateConfig) -> dict:
    """Read samples, pair them, label the pairs, write TRL + AlpacaFarm files and a summary."""
    if not cfg.input:
        raise UserError("annotate needs input=<sample-set or answers file>")
    if cfg.pairs_per_prompt < 1:
        raise UserError("pairs_per_prompt must be >= 1")
    candidates = read_candidates(cfg.input, cfg.skip_invalid)
    instructions, a, b, skipped = make_pairs(candidates, cfg.pairs_per_prompt, cfg.seed)
    if not instructions:
        raise UserError(f"{cfg.input}: no prompt has two distinct responses, so there is nothing to compare")
    annotator = make_annotator(cfg.annotator)
    prefs = label_pairs(annotator, instructions, a, b, cfg.noise, cfg.temperature, cfg.seed)
    out = Path(cfg.output_dir)
    paths = {"trl": str(out / "preferences.jsonl"), "alpacafarm": str(out / "preferences_alpacafarm.jsonl"),
             "summary": str(out / "summary.json")}
    write_preferences(paths["trl"], prefs, fmt="trl")
    write_preferences(paths["alpacafarm"], prefs, fmt="alpacafarm")
    n = len(prefs)
    summary = {
        "input": cfg.input,
        "n_prompts": len(candidates),
        "n_prompts_skipped": skipped,
        "n_pairs": n,
        "n_pairs_without_verdict": len(instructions) - n,  # the judge named neither output: left out
        "flip_rate": sum(p.meta["flipped"] for p in prefs) / n,
        "tie_rate": sum(p.meta["p_a"] == 0.5 for p in prefs) / n,
        "noise": cfg.noise,
        "temperature": cfg.temperature,
        "annotator": annotator.describe(),
        "paths": paths,
    }
    write_json(paths["summary"], summary)
    return summary
