"""Paired statistics for comparing methods that share prompts, D and RM0 within a seed.

Every method of a seed answers the same eval prompts, so a comparison is made on the per-prompt difference
(paired design): the prompt-to-prompt spread of the gold score cancels, and only the spread of the difference
is left. Unpaired intervals (one per method, checked for overlap) ignore that and are far too wide.

- `paired_diff`: mean of a - b over the same items, percentile bootstrap 95 % CI over items
  (Efron & Tibshirani 1993, ch. 13).
- `head_to_head`: win-rate of A's answer against B's answer to the same prompt (ties 1/2), bootstrap CI.
- `rm_accuracy_vs`: accuracy of a refined RM minus RM0's on the same gold-labelled pairs: paired bootstrap of
  the per-pair correctness difference and the exact McNemar test on the discordant pairs (McNemar 1947).
- `hierarchical_bootstrap`: across seeds, resample seeds, then items within each resampled seed
  (two-stage bootstrap, Davison & Hinkley 1997, sec. 3.8); the pooled statistic weights seeds equally.
- `seed_summary`: the `{per_seed: [...], pooled: {...}}` shape of `benchmarks/results/quality.json`.
- `recovered_share`: (method - PPO) / (oracle - PPO), given only when the oracle's gain over PPO is significant.

Pure numpy; every function takes a `seed` so a result is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from rlp_align.core.errors import UserError

_CHUNK = 256  # bootstrap replicates drawn at once: memory stays at 256 x n indices


def _as_array(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise UserError(f"{name}: expected a non-empty 1-D sequence of numbers, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UserError(f"{name}: contains NaN or infinite values")
    return a


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(a, "a"), _as_array(b, "b")
    if a.shape != b.shape:
        raise UserError(f"paired comparison needs the same items on both sides, got {a.size} and {b.size}")
    return a, b


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise UserError(f"confidence level must be in (0, 1), got {level}")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` means of `x` resampled with replacement along axis 0 (x: (n,) or (n, k) for joint columns)."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for start in range(0, n_boot, _CHUNK):
        idx = rng.integers(0, x.shape[0], size=(min(_CHUNK, n_boot - start), x.shape[0]))
        out.append(x[idx].mean(axis=1))
    return np.concatenate(out)


def mean_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of per-item values and its percentile bootstrap CI over items."""
    x = _as_array(values, "values")
    low, high = _interval(bootstrap_means(x, n_boot, np.random.default_rng(seed)), level)
    return {"diff": float(x.mean()), "ci_low": low, "ci_high": high, "n": int(x.size)}


def paired_diff(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean per-item difference a_i - b_i with a paired bootstrap CI: {diff, ci_low, ci_high, n}."""
    a, b = _paired(a, b)
    return mean_ci(a - b, n_boot, seed, level)


def win_outcomes(score_a, score_b) -> np.ndarray:
    """Per-prompt outcome of A against B: 1 if A scores higher, 1/2 on a tie, 0 otherwise."""
    a, b = _paired(score_a, score_b)
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def head_to_head(score_a, score_b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Win-rate of A's answer against B's answer to the same prompt (ties 1/2), with a bootstrap CI over prompts."""
    w = win_outcomes(score_a, score_b)
    res = mean_ci(w, n_boot, seed, level)
    return {"win_rate": res["diff"], "ci_low": res["ci_low"], "ci_high": res["ci_high"], "n": res["n"],
            "wins": int((w == 1).sum()), "ties": int((w == 0.5).sum()), "losses": int((w == 0).sum())}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c are the discordant counts (only A right, only B right).

    Under H0 each discordant pair falls either way with probability 1/2, so min(b, c) ~ Binomial(b + c, 1/2);
    p = min(1, 2 P(X <= min(b, c))).
    """
    if b < 0 or c < 0:
        raise UserError(f"McNemar counts must be non-negative, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def rm_accuracy_vs(correct_new, correct_ref, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Accuracy of a refined RM minus the reference RM's (RM0) on the same gold-labelled pairs.

    `correct_*` are per-pair booleans (r(chosen) > r(rejected) under gold labels). Returns the paired bootstrap
    CI of the per-pair correctness difference and the exact McNemar p-value on the discordant pairs.
    """
    new = np.asarray(correct_new, dtype=bool)
    ref = np.asarray(correct_ref, dtype=bool)
    res = paired_diff(new.astype(np.float64), ref.astype(np.float64), n_boot, seed, level)
    only_new, only_ref = int((new & ~ref).sum()), int((~new & ref).sum())
    return {**res, "accuracy": float(new.mean()), "accuracy_ref": float(ref.mean()),
            "only_new": only_new, "only_ref": only_ref, "mcnemar_p": mcnemar_exact(only_new, only_ref)}


def _per_seed_arrays(values_by_seed: Mapping[int, object] | Sequence[object]) -> tuple[list[np.ndarray], bool]:
    """Per-seed (n_s, k) arrays, and whether the input was 1-D per seed (k = 1, squeeze on return)."""
    items = list(values_by_seed.values()) if isinstance(values_by_seed, Mapping) else list(values_by_seed)
    if not items:
        raise UserError("a hierarchical bootstrap needs at least one seed")
    arrays, flat = [], all(np.ndim(v) == 1 for v in items)
    for i, v in enumerate(items):
        a = np.asarray(v, dtype=np.float64)
        a = a[:, None] if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[0] == 0 or not np.all(np.isfinite(a)):
            raise UserError(f"seed {i}: expected a non-empty array of finite per-item values, got shape {a.shape}")
        arrays.append(a)
    if len({a.shape[1] for a in arrays}) != 1:
        raise UserError("every seed must hold the same number of value columns")
    return arrays, flat


def hierarchical_draws(values_by_seed, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Two-stage bootstrap draws of the seed-weighted mean: (n_boot,) or (n_boot, k) for k joint columns.

    One replicate draws S seeds with replacement, then, for each drawn seed independently, its items with
    replacement, and averages the S resampled seed means. Columns of a seed (e.g. method and oracle diffs on
    the same prompts) are resampled jointly, so ratios of them keep their pairing.
    """
    arrays, flat = _per_seed_arrays(values_by_seed)
    rng = np.random.default_rng(seed)
    n_seeds, k = len(arrays), arrays[0].shape[1]
    total = np.zeros((n_boot, k))
    for _slot in range(n_seeds):
        picked = rng.integers(0, n_seeds, size=n_boot)
        # A fresh within-seed resample for every slot, so a seed drawn twice contributes two independent resamples.
        slot_means = np.stack([bootstrap_means(a, n_boot, rng) for a in arrays])  # (S, n_boot, k)
        total += slot_means[picked, np.arange(n_boot)]
    draws = total / n_seeds
    return draws[:, 0] if flat else draws


def hierarchical_bootstrap(values_by_seed, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Seed-weighted mean of per-item values (e.g. per-prompt differences) with a two-stage bootstrap CI."""
    arrays, _ = _per_seed_arrays(values_by_seed)
    point = float(np.mean([a[:, 0].mean() for a in arrays]))
    low, high = _interval(hierarchical_draws([a[:, 0] for a in arrays], n_boot, seed), level)
    return {"diff": point, "ci_low": low, "ci_high": high}


def seed_summary(values_by_seed: Mapping[int, object], n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """`{per_seed: [{seed, diff, ci_low, ci_high}], pooled: {diff, ci_low, ci_high}}` for per-item values.

    The values are what the statistic averages: per-prompt gold differences, head-to-head outcomes
    (`win_outcomes`), or per-pair correctness differences of two RMs.
    """
    if not values_by_seed:
        raise UserError("seed_summary needs the values of at least one seed")
    per_seed = []
    for s, values in sorted(values_by_seed.items()):
        res = mean_ci(values, n_boot, seed, level)
        per_seed.append({"seed": int(s), "diff": res["diff"], "ci_low": res["ci_low"], "ci_high": res["ci_high"]})
    return {"per_seed": per_seed, "pooled": hierarchical_bootstrap(values_by_seed, n_boot, seed, level)}


def significant(entry: Mapping) -> bool:
    """True when a `{diff, ci_low, ci_high}` interval lies wholly above 0."""
    return entry["ci_low"] > 0


def recovered_share(method_vs_ppo: Mapping[int, object], oracle_vs_ppo: Mapping[int, object],
                    n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Share of the oracle's gold gain over PPO that a method recovers: (method - PPO) / (oracle - PPO).

    Both arguments map seed -> per-prompt gold differences against PPO on the same prompts. The share is only
    meaningful when the denominator is known to be positive, so it is returned only when the oracle's pooled
    gain has a CI above 0; otherwise `share` is None and `reason` says why. The CI of the share comes from the
    same two-stage resamples for numerator and denominator.
    """
    if sorted(method_vs_ppo) != sorted(oracle_vs_ppo):
        raise UserError(f"recovered share needs the same seeds, got {sorted(method_vs_ppo)} and {sorted(oracle_vs_ppo)}")
    joint = []
    for s in sorted(method_vs_ppo):
        m, o = _paired(method_vs_ppo[s], oracle_vs_ppo[s])
        joint.append(np.stack([m, o], axis=1))
    oracle = hierarchical_bootstrap([j[:, 1] for j in joint], n_boot, seed, level)
    if not significant(oracle):
        return {"share": None, "ci_low": None, "ci_high": None, "oracle_gain": oracle,
                "reason": (f"the oracle's gain over PPO is not significant (pooled diff {oracle['diff']:.4g}, "
                           f"{level:.0%} CI [{oracle['ci_low']:.4g}, {oracle['ci_high']:.4g}] is not above 0), "
                           "so there is no gain to recover a share of")}
    draws = hierarchical_draws(joint, n_boot, seed)
    method_point = float(np.mean([j[:, 0].mean() for j in joint]))
    # Replicates with a non-positive oracle gain have no share; at a significant gain they are < (1 - level) / 2.
    ok = draws[:, 1] > 0
    low, high = _interval(draws[ok, 0] / draws[ok, 1], level)
    return {"share": method_point / oracle["diff"], "ci_low": low, "ci_high": high, "oracle_gain": oracle,
            "reason": None}


def paired_comparisons(gold_by_method: Mapping[str, Sequence[float]], baselines: Sequence[str] = ("PPO", "SFT"),
                       n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Within one seed: every method against each baseline on the same prompts.

    ``gold_by_method`` maps a method to its per-prompt gold scores, in one prompt order. For each baseline
    present: ``{baseline: {method: {gold_diff: paired_diff, head_to_head: head_to_head, per_prompt_diff}}}``
    where ``per_prompt_diff`` (method - baseline, per prompt) is what `seed_summary` pools across seeds.
    """
    out: dict[str, dict] = {}
    for base in baselines:
        if base not in gold_by_method:
            continue
        b = np.asarray(gold_by_method[base], dtype=np.float64)
        out[base] = {}
        for method, scores in gold_by_method.items():
            if method == base:
                continue
            a = np.asarray(scores, dtype=np.float64)
            out[base][method] = {"gold_diff": paired_diff(a, b, n_boot, seed, level),
                                 "head_to_head": head_to_head(a, b, n_boot, seed, level),
                                 "per_prompt_diff": (a - b).tolist()}
    return out
