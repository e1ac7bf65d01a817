"""RLP-SPG: synthetic preference generation from unlabelled policy samples (paper section "RLP-SPG").

For each instruction x with n policy samples:
1. cluster the samples by meaning (`rlp_align.rlp.clustering`: bidirectional entailment or embeddings);
2. confidence = |largest cluster| / n; keep x only if confidence >= gamma (selective generation, gamma = 0.5);
   on a tie for the largest cluster the first-formed one (the cluster of the earliest sample) is used;
3. chosen = the sample of the largest cluster with the highest score under the step-2 RM (first on a tie);
   rejected = a uniformly random sample from the other clusters (seeded). One pair per kept instruction.

Edge cases: all samples equivalent -> one cluster, confidence 1, but no other cluster to draw a rejected
answer from -> no pair (counted as ``no_rejected``). All samples different -> confidence 1/n -> dropped
whenever gamma > 1/n (counted as ``low_confidence``).

Table-5 variants (``selection``): ``spg`` (above), ``select_all`` (the same without selection, gamma = 0),
``rm_rank`` (no clustering: the RM orders a random pair of distinct samples, better one chosen),
``west_of_n`` (no clustering: the RM's best against its worst of the n samples, Pace et al. 2024).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

from rlp_align.core.errors import UserError
from rlp_align.data.records import Preference, SampleSet, prompt_text, without_empty_responses
from rlp_align.data.reward_path import pair_truncation
from rlp_align.rlp.clustering import DEFAULT_SIMILARITY_THRESHOLD, cluster_sizes, largest_cluster

Selection = Literal["spg", "rm_rank", "select_all", "west_of_n"]
DROP_REASONS = ("low_confidence", "no_rejected", "empty")


# ----------------------------------------------------------------------------------------------------------
# Pure selection logic


def synthesize_preferences(
    sample_sets: list[SampleSet],
    cluster_ids: list[list[int]],
    rm_scores: list[list[float]],
    gamma: float = 0.5,
    seed: int = 0,
) -> tuple[list[Preference], dict[str, Any]]:
    """SPG pairs and their statistics (see module docstring for the rule and edge cases).

    ``cluster_ids[i][j]`` / ``rm_scores[i][j]`` belong to ``sample_sets[i].responses[j]``. Scores of
    instructions that are dropped are never read (a caller may leave them NaN to skip scoring them).
    One ``random.Random(seed)`` draws the rejected answers in instruction order.
    """
    _check_aligned(sample_sets, cluster_ids, rm_scores)
    rng = random.Random(seed)
    prefs: list[Preference] = []
    confidences: list[float] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for s, ids, scores in zip(sample_sets, cluster_ids, rm_scores):
        if not ids:
            dropped["empty"] += 1
            continue
        top, size = largest_cluster(ids)
        confidence = size / len(ids)
        confidences.append(confidence)
        if confidence < gamma:
            dropped["low_confidence"] += 1
            continue
        others = [j for j, c in enumerate(ids) if c != top]
        if not others:
            dropped["no_rejected"] += 1
            continue
        members = [j for j, c in enumerate(ids) if c == top]
        chosen = max(members, key=lambda j: (scores[j], -j))  # highest score, earliest on a tie
        rejected = rng.choice(others)
        prefs.append(Preference(s.prompt, s.responses[chosen], s.responses[rejected], meta={
            **s.meta,
            **pair_truncation(s.meta.get("truncated"), chosen, rejected),
            "source": "spg",
            "confidence": confidence,
            "cluster_sizes": cluster_sizes(ids),
            "chosen_score": float(scores[chosen]),
            "rejected_score": float(scores[rejected]),
        }))
    return prefs, spg_stats(len(sample_sets), confidences, prefs, dropped, gamma)


def distinct_indices(responses: list[str]) -> list[int]:
    """The index of each distinct text's first occurrence, in order: identical samples count once."""
    first_of: dict[str, int] = {}
    for j, r in enumerate(responses):
        first_of.setdefault(r, j)
    return list(first_of.values())


def rm_rank_preferences(
    sample_sets: list[SampleSet], rm_scores: list[list[float]], seed: int = 0
) -> tuple[list[Preference], dict[str, Any]]:
    """Table-5 "RM ranks a pair": a random pair of distinct samples, the RM's better one is chosen.

    Samples with identical text count once; an instruction with fewer than 2 distinct samples gives no
    pair (``no_rejected``). No clustering and no confidence filter; on equal scores the first drawn sample
    is chosen.
    """
    _check_aligned(sample_sets, [[0] * len(s.responses) for s in sample_sets], rm_scores)
    rng = random.Random(seed)
    prefs: list[Preference] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for s, scores in zip(sample_sets, rm_scores):
        if not s.responses:
            dropped["empty"] += 1
            continue
        distinct = distinct_indices(s.responses)
        if len(distinct) < 2:
            dropped["no_rejected"] += 1
            continue
        a, b = rng.sample(distinct, 2)
        chosen, rejected = (a, b) if scores[a] >= scores[b] else (b, a)
        prefs.append(Preference(s.prompt, s.responses[chosen], s.responses[rejected], meta={
            **s.meta,
            **pair_truncation(s.meta.get("truncated"), chosen, rejected),
            "source": "spg",
            "chosen_score": float(scores[chosen]),
            "rejected_score": float(scores[rejected]),
        }))
    return prefs, spg_stats(len(sample_sets), [], prefs, dropped, gamma=None)


def west_of_n_preferences(
    sample_sets: list[SampleSet], rm_scores: list[list[float]]
) -> tuple[list[Preference], dict[str, Any]]:
    """Table-5 "West-of-N" (Pace et al. 2024): the RM's highest-scored sample against its lowest-scored one.

    Samples with identical text count once (first occurrence); an instruction with fewer than 2 distinct
    samples gives no pair (``no_rejected``), and so does one whose distinct samples all score the same: the RM
    prefers none of them, and the best and the worst would be one sample paired with itself (issue 22). Among
    equal highest (lowest) scores the earlier sample is chosen (rejected).
    """
    _check_aligned(sample_sets, [[0] * len(s.responses) for s in sample_sets], rm_scores)
    prefs: list[Preference] = []
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for s, scores in zip(sample_sets, rm_scores):
        if not s.responses:
            dropped["empty"] += 1
            continue
        distinct = distinct_indices(s.responses)
        if len(distinct) < 2:
            dropped["no_rejected"] += 1
            continue
        chosen = max(distinct, key=lambda j: (scores[j], -j))
        rejected = min(distinct, key=lambda j: (scores[j], j))
        if scores[chosen] == scores[rejected]:  # all tied: chosen == rejected, no preference to learn
            dropped["no_rejected"] += 1
            continue
        prefs.append(Preference(s.prompt, s.responses[chosen], s.responses[rejected], meta={
            **s.meta,
            **pair_truncation(s.meta.get("truncated"), chosen, rejected),
            "source": "spg",
            "chosen_score": float(scores[chosen]),
            "rejected_score": float(scores[rejected]),
        }))
    return prefs, spg_stats(len(sample_sets), [], prefs, dropped, gamma=None)


def _check_aligned(sample_sets: list[SampleSet], cluster_ids: list[list[int]], rm_scores: list[list[float]]):
    if not (len(sample_sets) == len(cluster_ids) == len(rm_scores)):
        raise ValueError(f"{len(sample_sets)} sample sets, {len(cluster_ids)} clusterings, {len(rm_scores)} scores")
    for i, (s, ids, scores) in enumerate(zip(sample_sets, cluster_ids, rm_scores)):
        if not (len(s.responses) == len(ids) == len(scores)):
            raise ValueError(f"instruction {i}: {len(s.responses)} responses, {len(ids)} ids, {len(scores)} scores")


def confidence_histogram(confidences: list[float], bins: int = 10) -> dict[str, list]:
    """Counts over ``bins`` equal bins of [0, 1]; bin k is [k/bins, (k+1)/bins), the last one includes 1."""
    counts = [0] * bins
    for c in confidences:
        counts[min(bins - 1, math.floor(c * bins + 1e-9))] += 1  # 1e-9: 0.3 * 10 must land in bin 3
    return {"edges": [round(k / bins, 6) for k in range(bins + 1)], "counts": counts}


def spg_stats(
    n_instructions: int,
    confidences: list[float],
    prefs: list[Preference],
    dropped: dict[str, int],
    gamma: float | None,
) -> dict[str, Any]:
    """Summary of one SPG run. ``acceptance_rate`` = pairs produced / instructions."""

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {
        "instructions": n_instructions,
        "pairs": len(prefs),
        "acceptance_rate": round(len(prefs) / n_instructions, 4) if n_instructions else 0.0,
        "gamma": gamma,
        "dropped": dict(dropped),
        "confidence_mean": mean(confidences),
        "confidence_histogram": confidence_histogram(confidences),
        "mean_chosen_chars": mean([len(p.chosen) for p in prefs]),
        "mean_rejected_chars": mean([len(p.rejected) for p in prefs]),
        "mean_chosen_score": mean([p.meta["chosen_score"] for p in prefs]),
        "mean_rejected_score": mean([p.meta["rejected_score"] for p in prefs]),
    }


def needs_scores(ids: list[int], gamma: float) -> bool:
    """Whether an instruction can give an SPG pair, i.e. whether its samples need RM scores at all."""
    if not ids:
        return False
    top, size = largest_cluster(ids)
    return size / len(ids) >= gamma and any(c != top for c in ids)


# ----------------------------------------------------------------------------------------------------------
# CLI entry point


@dataclass
class SPGConfig:
    # the three paths are required by run_spg; they default to "" so the pipeline can fill them in
    samples_file: str = ""  # JSONL {prompt, responses, meta} (or AlpacaFarm {instruction, input, output: [...]})
    reward_model: str = ""  # the step-2 RM folder (or "tiny" for tests)
    output_file: str = ""  # TRL-format JSONL {prompt, chosen, rejected, meta}; stats: <output_file>.stats.json
    gamma: float = 0.5
    selection: Selection = "spg"
    backend: Literal["embedding", "nli"] = "embedding"
    nli_model: str | None = None  # local NLI checkpoint folder, needed by backend "nli"
    rule: Literal["loose", "strict"] = "loose"
    similarity_threshold: float = DEFAULT_SIMILARITY_THRESHOLD
    nli_max_length: int = 256
    seed: int = 0
    batch_size: int = 8
    max_length: int = 1024
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


def _validate(cfg: SPGConfig) -> None:
    missing = [k for k in ("samples_file", "reward_model", "output_file") if not getattr(cfg, k)]
    if missing:
        raise UserError(f"spg needs {', '.join(missing)} (e.g. --samples_file samples.jsonl --reward_model rm/ "
                        "--output_file synthetic.jsonl)")
    if not 0.0 <= cfg.gamma <= 1.0:
        raise UserError(f"spg gamma must be in [0, 1], got {cfg.gamma}")
    if cfg.selection not in ("spg", "rm_rank", "select_all", "west_of_n"):
        raise UserError(f"unknown spg selection '{cfg.selection}': choose spg, rm_rank, select_all or west_of_n")
    if cfg.selection not in ("rm_rank", "west_of_n") and cfg.backend == "nli" and not cfg.nli_model:
        raise UserError("spg backend 'nli' needs nli_model: a local NLI checkpoint folder (e.g. a DeBERTa MNLI "
                        "model); or use backend 'embedding', which needs no download")
    if cfg.batch_size < 1 or cfg.max_length < 8:
        raise UserError(f"spg batch_size must be >= 1 and max_length >= 8 (got {cfg.batch_size}, {cfg.max_length})")


def _score(cfg: SPGConfig, sample_sets: list[SampleSet], wanted: list[bool]) -> list[list[float]]:
    """RM scores of every response of the wanted instructions; NaN (never read) for the others.

    A sample set records the ``max_prompt_length`` its policy's prompts were cut to (`sample.sample_policy`);
    the RM reads each prompt cut the same way, i.e. the tokens the policy read (sets without it: whole prompts).
    """
    from rlp_align.core.device import default_device
    from rlp_align.models import load_reward_model, load_tokenizer, score_texts

    by_limit: dict[int | None, list[int]] = {}  # prompt limit -> indices into the flat list of responses
    prompts, responses = [], []
    for s, want in zip(sample_sets, wanted):
        if want:
            limit = s.meta.get("max_prompt_length")
            by_limit.setdefault(limit if isinstance(limit, int) else None, []).extend(
                range(len(responses), len(responses) + len(s.responses)))
            prompts += [s.prompt] * len(s.responses)
            responses += s.responses
    flat: list[float] = [math.nan] * len(responses)
    if responses:
        model = load_reward_model(cfg.reward_model)
        model.to(default_device())
        tokenizer = load_tokenizer(cfg.reward_model)
        for limit, rows in by_limit.items():
            scores = score_texts(model, tokenizer, [prompts[i] for i in rows], [responses[i] for i in rows],
                                 cfg.batch_size, cfg.max_length, max_prompt_length=limit).tolist()
            for i, score in zip(rows, scores):
                flat[i] = score
    out, k = [], 0
    for s, want in zip(sample_sets, wanted):
        n = len(s.responses)
        out.append(flat[k : k + n] if want else [math.nan] * n)
        k += n if want else 0
    return out


def run_spg(cfg: SPGConfig) -> dict[str, Any]:
    """Read samples, cluster, score with the RM, select pairs, write the preference and stats files."""
    from rlp_align.core.device import default_device
    from rlp_align.core.io import write_json
    from rlp_align.data.readers import read_sample_sets
    from rlp_align.data.writers import write_preferences
    from rlp_align.rlp.clustering import NLIEntailment, cluster_many

    _validate(cfg)
    sample_sets, empty = without_empty_responses(read_sample_sets(cfg.samples_file, skip_invalid=cfg.skip_invalid))
    if cfg.selection in ("rm_rank", "west_of_n"):
        scores = _score(cfg, sample_sets, [True] * len(sample_sets))
        prefs, stats = (rm_rank_preferences(sample_sets, scores, cfg.seed) if cfg.selection == "rm_rank"
                        else west_of_n_preferences(sample_sets, scores))
    else:
        gamma = 0.0 if cfg.selection == "select_all" else cfg.gamma
        entail_fn = None
        if cfg.backend == "nli":
            entail_fn = NLIEntailment(cfg.nli_model, max_length=cfg.nli_max_length, device=default_device())
        cluster_ids = cluster_many(
            [s.responses for s in sample_sets], cfg.backend,
            instructions=[prompt_text(s.prompt) for s in sample_sets], entail_fn=entail_fn, rule=cfg.rule,
            similarity_threshold=cfg.similarity_threshold,
        )
        scores = _score(cfg, sample_sets, [needs_scores(ids, gamma) for ids in cluster_ids])
        prefs, stats = synthesize_preferences(sample_sets, cluster_ids, scores, gamma, cfg.seed)
    stats["selection"] = cfg.selection
    stats["empty_samples_removed"] = empty
    stats["backend"] = None if cfg.selection in ("rm_rank", "west_of_n") else cfg.backend
    write_preferences(cfg.output_file, prefs)
    stats_file = f"{cfg.output_file}.stats.json"
    write_json(stats_file, stats)
    print(
        f"spg ({cfg.selection}): {stats['pairs']} pairs from {stats['instructions']} instructions "
        f"(acceptance {stats['acceptance_rate']:.2f}; dropped {stats['dropped']}); "
        f"mean chars chosen {stats['mean_chosen_chars']}, rejected {stats['mean_rejected_chars']} "
        f"-> {cfg.output_file}"
    )
    return {**stats, "output_file": cfg.output_file, "stats_file": stats_file}
