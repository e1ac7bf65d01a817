"""Evaluation: win-rate under a judge (`rlp eval winrate`) and reward-model accuracy (`rlp eval rm-accuracy`).

Win-rate (AlpacaFarm): the mean over instructions of P(answer preferred over the baseline answer), where a
tie counts 1/2; the 95 % interval is the percentile bootstrap over instructions (Efron & Tibshirani 1993).
RM accuracy: the fraction of preference pairs with r(x, chosen) > r(x, rejected), a tie (equal scores) counting
1/2 -- what a coin flip between the two would score -- so an RM that cannot tell them apart scores 50 %, not 0 %;
the tie rate is reported beside it.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlp_align.core.errors import DataError, UserError
from rlp_align.core.io import is_malformed, read_rows, write_json, write_jsonl
from rlp_align.data.records import Instruction, Preference
from rlp_align.judge.annotate import _prompt
from rlp_align.judge.annotators import AnnotatorConfig, make_annotator, without_verdict


def win_rate(prefs: list[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of per-item preferences in [0, 1] (1 win, 0.5 tie, 0 loss) and its 95 % bootstrap CI."""
    x = np.asarray(prefs, dtype=np.float64)
    if x.size == 0:
        raise UserError("win-rate needs at least one judged pair")
    if np.any((x < 0) | (x > 1)) or not np.all(np.isfinite(x)):
        raise UserError("preferences must be probabilities in [0, 1]")
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_boot, 256):  # chunks keep memory at 256 x n
        idx = rng.integers(0, x.size, size=(min(256, n_boot - start), x.size))
        means.append(x[idx].mean(axis=1))
    boot = np.concatenate(means) if means else np.array([x.mean()])
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(x.size)}


@dataclass
class WinrateConfig:
    answers: str = ""  # answers file written by `rlp generate`
    baseline: str = "reference"  # "reference" or the path of another policy's answers file
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    n_boot: int = 2000
    seed: int = 0
    output_dir: str = "winrate"


def _read_answers(path: str) -> list[dict]:
    rows = []
    for i, row in read_rows(path):
        if is_malformed(row) or not isinstance(row, dict):
            raise DataError(path, i, None, getattr(row, "problem", "expected a JSON object"))
        if not isinstance(row.get("response"), str):
            raise DataError(path, i, "response", "expected a string")
        row = {**row, "prompt": _prompt(row.get("prompt"), path, i)}
        row["subset"] = row.get("subset") or (row.get("meta") or {}).get("subset") or "all"
        rows.append(row)
    return rows


def run_winrate(cfg: WinrateConfig) -> dict:
    """Judge every answer against its baseline; overall and per-subset win-rate with bootstrap CIs."""
    if not cfg.answers:
        raise UserError("eval winrate needs answers=<answers file>")
    rows = _read_answers(cfg.answers)
    if cfg.baseline == "reference":
        missing = sum(not isinstance(r.get("reference"), str) or not r["reference"].strip() for r in rows)
        if missing:
            raise UserError(
                f"{cfg.answers}: {missing} of {len(rows)} answers have no reference answer; "
                "give baseline=<another answers file> or generate on instructions with references"
            )
        baseline = [r["reference"] for r in rows]
    else:
        by_prompt = {json.dumps(r["prompt"], sort_keys=True): r["response"] for r in _read_answers(cfg.baseline)}
        keys = [json.dumps(r["prompt"], sort_keys=True) for r in rows]
        missing = sum(k not in by_prompt for k in keys)
        if missing:
            raise UserError(f"{cfg.baseline} lacks answers for {missing} of the {len(rows)} prompts in {cfg.answers}")
        baseline = [by_prompt[k] for k in keys]
    instructions = [
        Instruction(r["prompt"], r.get("reference"), list(r.get("constraints") or []), dict(r.get("meta") or {}))
        for r in rows
    ]
    annotator = make_annotator(cfg.annotator)
    responses = [r["response"] for r in rows]
    prefs, details = annotator.compare_with_details(instructions, responses, baseline)
    missing = set(without_verdict(details))
    if missing:  # not a tie: the judge did not judge them
        warnings.warn(f"the judge gave no valid verdict for {len(missing)} of {len(rows)} answers; they are left "
                      "out of the win-rate (not counted as ties)", RuntimeWarning, stacklevel=2)
        keep = [i for i in range(len(rows)) if i not in missing]
        rows, prefs, details = [rows[i] for i in keep], [prefs[i] for i in keep], [details[i] for i in keep]
        instructions, responses = [instructions[i] for i in keep], [responses[i] for i in keep]
        baseline = [baseline[i] for i in keep]
    subsets: dict[str, list[float]] = defaultdict(list)
    for row, p in zip(rows, prefs):
        subsets[row["subset"]].append(p)
    out = Path(cfg.output_dir)
    summary = {
        "answers": cfg.answers,
        "baseline": cfg.baseline,
        "annotator": annotator.describe(),
        "n_without_verdict": len(missing),
        "win_rate": win_rate(prefs, cfg.n_boot, cfg.seed),
        "by_subset": {name: win_rate(ps, cfg.n_boot, cfg.seed) for name, ps in sorted(subsets.items())},
        "mean_chars": {"answers": float(np.mean([len(r) for r in responses])),
                       "baseline": float(np.mean([len(r) for r in baseline]))},
        "paths": {"summary": str(out / "winrate.json"), "judgements": str(out / "judgements.jsonl")},
    }
    write_jsonl(summary["paths"]["judgements"], [
        {"instruction": inst.text, "subset": row["subset"], "p_answer": p, **d}
        for inst, row, p, d in zip(instructions, rows, prefs, details)
    ])
    write_json(summary["paths"]["summary"], summary)
    return summary


# --------------------------------------------------------------------------------------------------
# Reward-model accuracy


def rm_accuracy(model, tokenizer, prefs: list[Preference], batch_size: int = 8, max_length: int = 1024,
                per_pair: bool = False) -> dict:
    """Fraction of pairs with r(x, chosen) > r(x, rejected), a tie (equal scores) counting 1/2; ``ties`` and
    ``tie_rate`` say how many pairs tied.

    ``per_pair`` adds ``correct`` (per pair: 1 right, 0.5 tie, 0 wrong), for paired comparisons of RMs
    (`rlp_align.judge.stats.rm_accuracy_vs`).
    """
    from rlp_align.models import score_texts

    if not prefs:
        raise UserError("rm-accuracy needs at least one preference pair")
    prompts = [p.prompt for p in prefs]
    chosen = score_texts(model, tokenizer, prompts, [p.chosen for p in prefs], batch_size, max_length)
    rejected = score_texts(model, tokenizer, prompts, [p.rejected for p in prefs], batch_size, max_length)
    margin = (chosen - rejected).double()
    credit = (margin > 0).double() + 0.5 * (margin == 0).double()
    ties = int((margin == 0).sum())
    return {"accuracy": float(credit.mean()), "ties": ties, "tie_rate": ties / len(prefs),
            "mean_margin": float(margin.mean()), "n": len(prefs),
            **({"correct": credit.tolist()} if per_pair else {})}


@dataclass
class RMAccuracyConfig:
    rm_path: str = ""
    preferences: str = ""  # any preference format `rlp_align.data.readers` reads (TRL, AlpacaFarm, LLMBar, HH)
    batch_size: int = 8
    max_length: int = 1024
    limit: int | None = None
    output_dir: str | None = None
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


def run_rm_accuracy(cfg: RMAccuracyConfig) -> dict:
    from rlp_align.core.device import default_device
    from rlp_align.data.readers import read_preferences
    from rlp_align.models import load_reward_model, load_tokenizer

    if not cfg.rm_path or not cfg.preferences:
        raise UserError("eval rm-accuracy needs rm_path=<reward model> and preferences=<preference file>")
    prefs = read_preferences(cfg.preferences, skip_invalid=cfg.skip_invalid)[: cfg.limit]
    model, tokenizer = load_reward_model(cfg.rm_path).to(default_device()), load_tokenizer(cfg.rm_path)
    result = {"rm_path": cfg.rm_path, "preferences": cfg.preferences,
              **rm_accuracy(model, tokenizer, prefs, cfg.batch_size, cfg.max_length)}
    if cfg.output_dir:
        write_json(Path(cfg.output_dir) / "rm_accuracy.json", result)
    return result
