"""Paired statistics for comparing methods that share prompts, D and RM0 within a seed.

Every method of a seed answers the same eval prompts, so a comparison is made on the per-prompt difference
(paired design): the prompt-to-prompt spread of the gold score cancels, and only the spread of the difference
is left. Unpaired intervals (one per method, checked for overlap) ignore that and are far too wide.

- `paired_diff`: mean of a - b over the same items, percentile bootstrap 95 % CI over items
  (Efron & Tibshirani 1993, ch. 13).
- `head_to_head`: win-rate of A's answer against B's answer to the same prompt (ties 1/2), bootstrap CI.
- `rm_accuracy_vs`: accuracy of a refined RM minus RM0's on the same gold-labelled pairs: paired bootstrap of
  the per-pair correctness difference and the exact McNemar test on the discordant pairs (McNemar 1947).
- `pooled_t`: across seeds, the t-interval (S - 1 degrees of freedom) over the per-seed mean differences: the
  seeds are the replicates of training, so the pooled interval is over them. (A bootstrap over 3 seeds shrinks
  the between-seed variance by (S - 1)/S and uses normal-like quantiles: 13 % false positives at 3 seeds.)
- `seed_summary`: the `{per_seed: [...], pooled: {...}}` shape of `benchmarks/results/quality-micro.json`;
  a per-seed (bootstrap) CI says "these runs differ", the pooled (t) CI speaks to the method.
- `recovered_share`: (method - PPO) / (oracle - PPO), given only when the oracle's gain over PPO is significant
  (Fieller's interval over seeds).

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

    `correct_*` are per-pair credits under gold labels: 1 when r(chosen) > r(rejected), 1/2 on a tie (equal
    scores: a coin flip's expected credit), 0 otherwise (booleans work too). Returns the paired bootstrap CI of
    the per-pair credit difference and the exact McNemar p-value on the discordant pairs. A pair where one RM
    ties and the other decides counts as half a discordant pair (only_new and only_ref are then halves);
    the exact test needs whole counts, so they are rounded towards each other (the smaller up, the larger
    down), which can only raise p.
    """
    new, ref = _paired(np.asarray(correct_new, dtype=np.float64), np.asarray(correct_ref, dtype=np.float64))
    if np.any((new < 0) | (new > 1)) or np.any((ref < 0) | (ref > 1)):
        raise UserError("per-pair correctness must be 1 (right), 1/2 (tie) or 0 (wrong)")
    res = paired_diff(new, ref, n_boot, seed, level)
    d = new - ref
    only_new, only_ref = float(d.clip(min=0).sum()), float((-d).clip(min=0).sum())
    small, large = sorted((only_new, only_ref))
    return {**res, "accuracy": float(new.mean()), "accuracy_ref": float(ref.mean()),
            "only_new": only_new, "only_ref": only_ref,
            "mcnemar_p": mcnemar_exact(math.ceil(small), math.floor(large))}


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom (t_{df, (1+level)/2}).

    P(|T| <= t) has a closed form for integer df (Abramowitz & Stegun 1964, 26.7.3-4) with theta = atan(t / sqrt(df));
    the quantile is found by bisection on it (numpy has no t distribution and scipy is not a dependency).
    """
    if df < 1:
        raise UserError(f"a t-interval needs at least 1 degree of freedom (2 seeds), got {df}")
    if not 0 < level < 1:
        raise UserError(f"confidence level must be in (0, 1), got {level}")

    def central(t: float) -> float:  # P(|T| <= t)
        theta = math.atan(t / math.sqrt(df))
        c, term, total = math.cos(theta), 1.0, 1.0
        if df % 2 == 0:  # sin(theta) * sum_{j=0}^{(df-2)/2} prod_{i<=j} (2i-1)/(2i) * cos^{2j}
            for j in range(1, df // 2):
                term *= (2 * j - 1) / (2 * j) * c * c
                total += term
            return math.sin(theta) * total
        if df == 1:
            return 2 * theta / math.pi
        for j in range(1, (df - 1) // 2):  # cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 + ...
            term *= (2 * j) / (2 * j + 1) * c * c
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * c * total)

    low, high = 0.0, 1.0
    while central(high) < level:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if central(mid) < level else (low, mid)
    return (low + high) / 2


def pooled_t(seed_means: Sequence[float], level: float = 0.95) -> dict:
    """Pooled result over seeds: the mean of the per-seed means and its t-interval with S - 1 degrees of freedom.

    The seeds are the independent replicates of the whole training run, so the interval is over them:
    mean +- t_{S-1} * sd / sqrt(S) (sd with ddof = 1). It carries the between-seed variance in full, which a
    bootstrap over 3-5 seeds shrinks by (S - 1) / S and judges with normal-like quantiles. With one seed there is
    no between-seed spread to measure: ``ci_low``/``ci_high`` are None and nothing is called significant.
    """
    x = _as_array(seed_means, "seed_means")
    out = {"diff": float(x.mean()), "ci_low": None, "ci_high": None, "n_seeds": int(x.size),
           "interval": f"t-interval over seeds ({x.size - 1} dof)" if x.size > 1 else "one seed: no interval"}
    if x.size > 1:
        half = t_quantile(x.size - 1, level) * float(x.std(ddof=1)) / math.sqrt(x.size)
        out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    return out


def seed_summary(values_by_seed: Mapping[int, object], n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """`{per_seed: [{seed, diff, ci_low, ci_high}], pooled: {diff, ci_low, ci_high, n_seeds}}` for per-item values.

    The values are what the statistic averages: per-prompt gold differences, head-to-head outcomes
    (`win_outcomes`), or per-pair correctness differences of two RMs. A seed's CI is the bootstrap over its
    items: it says whether *these two runs* differ on these prompts, not whether the method is better (it does
    not resample training randomness). The pooled CI is `pooled_t` over the per-seed means: that one speaks to
    the method.
    """
    if not values_by_seed:
        raise UserError("seed_summary needs the values of at least one seed")
    per_seed = []
    for s, values in sorted(values_by_seed.items()):
        res = mean_ci(values, n_boot, seed, level)
        per_seed.append({"seed": int(s), "diff": res["diff"], "ci_low": res["ci_low"], "ci_high": res["ci_high"]})
    return {"per_seed": per_seed, "pooled": pooled_t([e["diff"] for e in per_seed], level)}


def significant(entry: Mapping) -> bool:
    """True when a `{diff, ci_low, ci_high}` interval exists and lies wholly above 0."""
    return entry.get("ci_low") is not None and entry["ci_low"] > 0


def fieller_interval(num: np.ndarray, den: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Fieller's interval for mean(num) / mean(den) over paired seed means (Fieller 1954).

    The set of theta with |mean(num - theta den)| <= t_{S-1} * se(num - theta den) is a quadratic inequality
    a theta^2 + b theta + c <= 0; it is a bounded interval exactly when mean(den) is significantly non-zero
    (a > 0), otherwise None.
    """
    s = num.size
    t2 = t_quantile(s - 1, level) ** 2
    cov = np.cov(np.stack([num, den]), ddof=1) / s  # covariance of the two means
    mn, md = num.mean(), den.mean()
    a = md * md - t2 * cov[1, 1]
    b = -2 * (mn * md - t2 * cov[0, 1])
    c = mn * mn - t2 * cov[0, 0]
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return None
    root = math.sqrt(disc)
    return float((-b - root) / (2 * a)), float((-b + root) / (2 * a))


def recovered_share(method_vs_ppo: Mapping[int, object], oracle_vs_ppo: Mapping[int, object],
                    n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Share of the oracle's gold gain over PPO that a method recovers: (method - PPO) / (oracle - PPO).

    Both arguments map seed -> per-prompt gold differences against PPO on the same prompts. The share is only
    meaningful when the denominator is known to be positive, so it is returned only when the oracle's gain is
    significant; otherwise `share` is None and `reason` says why. Over several seeds the gain is judged by
    `pooled_t` and the share's CI is Fieller's on the per-seed means; with one seed (a run's own report) both
    come from the joint bootstrap over its prompts, and ``scope`` says they describe these runs only.
    """
    if sorted(method_vs_ppo) != sorted(oracle_vs_ppo):
        raise UserError(f"recovered share needs the same seeds, got {sorted(method_vs_ppo)} and {sorted(oracle_vs_ppo)}")
    joint = [np.stack(_paired(method_vs_ppo[s], oracle_vs_ppo[s]), axis=1) for s in sorted(method_vs_ppo)]
    means = np.array([j.mean(axis=0) for j in joint])  # (S, 2): per-seed mean method and oracle differences
    if len(joint) == 1:
        scope = "within one seed: these runs, on these prompts"
        draws = bootstrap_means(joint[0], n_boot, np.random.default_rng(seed))
        low, high = _interval(draws[:, 1], level)
        oracle = {"diff": float(means[0, 1]), "ci_low": low, "ci_high": high, "n_seeds": 1}
    else:
        scope = f"pooled over {len(joint)} seeds"
        oracle = pooled_t(means[:, 1], level)
    if not significant(oracle):
        return {"share": None, "ci_low": None, "ci_high": None, "oracle_gain": oracle, "scope": scope,
                "reason": (f"the oracle's gain over PPO is not significant (diff {oracle['diff']:.4g}, "
                           f"{level:.0%} CI {_fmt_ci(oracle)} is not above 0), so there is no gain to recover a "
                           "share of")}
    share = float(means[:, 0].mean() / means[:, 1].mean())
    if len(joint) == 1:
        ok = draws[:, 1] > 0  # replicates without a gain have no share; at a significant gain they are rare
        interval = _interval(draws[ok, 0] / draws[ok, 1], level)
    else:
        interval = fieller_interval(means[:, 0], means[:, 1], level) or (None, None)
    return {"share": share, "ci_low": interval[0], "ci_high": interval[1], "oracle_gain": oracle, "scope": scope,
            "reason": None}


def _fmt_ci(entry: Mapping) -> str:
    return "none (one seed)" if entry["ci_low"] is None else f"[{entry['ci_low']:.4g}, {entry['ci_high']:.4g}]"


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
