import math

import numpy as np
import pytest

from rlp_align.core.errors import UserError
from rlp_align.judge.stats import (
    head_to_head,
    hierarchical_bootstrap,
    hierarchical_draws,
    mcnemar_exact,
    paired_comparisons,
    paired_diff,
    recovered_share,
    rm_accuracy_vs,
    seed_summary,
    win_outcomes,
)


def test_constant_shift_of_one_standard_error_is_detected_paired_but_not_unpaired():
    rng = np.random.default_rng(0)
    n = 256
    a = rng.normal(0.4, 0.2, size=n)  # per-prompt gold scores of method A: the prompts differ a lot
    se = a.std(ddof=1) / math.sqrt(n)  # one standard error of a method's mean score
    b = a + se  # B is better by exactly one SE on every prompt
    res = paired_diff(b, a, n_boot=2000, seed=1)
    assert res["diff"] == pytest.approx(se)
    assert res["ci_low"] > 0  # the paired interval excludes 0 ...
    # ... while the usual unpaired (Welch) 95 % interval of the difference of means does not:
    half = 1.96 * math.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n)  # = 1.96 * sqrt(2) SE = 2.77 SE
    assert se - half < 0 < se + half
    assert head_to_head(b, a)["win_rate"] == 1.0


def test_paired_intervals_under_the_null_exclude_zero_at_about_five_percent():
    rng = np.random.default_rng(12345)
    excluded = 0
    for sim in range(200):
        prompt_effect = rng.normal(0, 1, size=200)
        a = prompt_effect + rng.normal(0, 0.5, size=200)
        b = prompt_effect + rng.normal(0, 0.5, size=200)
        res = paired_diff(a, b, n_boot=1000, seed=sim)
        excluded += res["ci_low"] > 0 or res["ci_high"] < 0
    # Bound: the 99th percentile of Binomial(200, 0.05) is 18 (P(X <= 18) = 0.994), so an exact 95 % procedure
    # fails this bound with probability < 1 %; the RNG is seeded, so the outcome is fixed.
    assert excluded <= 18, excluded
    # and power: a true shift of 0.15 (3 SE of the difference, sd 0.71 / sqrt(200) = 0.05) is found
    prompt_effect = rng.normal(0, 1, size=200)
    a = prompt_effect + rng.normal(0, 0.5, size=200)
    b = prompt_effect + rng.normal(0, 0.5, size=200) + 0.15
    assert paired_diff(b, a, n_boot=1000)["ci_low"] > 0


def test_paired_diff_rejects_unpaired_input():
    with pytest.raises(UserError):
        paired_diff([1.0, 2.0], [1.0])
    with pytest.raises(UserError):
        paired_diff([], [])
    with pytest.raises(UserError):
        paired_diff([1.0, float("nan")], [1.0, 2.0])


def test_head_to_head_counts_ties_as_half():
    res = head_to_head([3.0, 1.0, 2.0, 5.0], [1.0, 1.0, 4.0, 0.0], n_boot=500)
    assert (res["wins"], res["ties"], res["losses"]) == (2, 1, 1)
    assert res["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert res["ci_low"] <= res["win_rate"] <= res["ci_high"]
    assert win_outcomes([1, 2], [1, 1]).tolist() == [0.5, 1.0]


def test_mcnemar_exact_against_hand_computed_values():
    assert mcnemar_exact(0, 0) == 1.0
    # b=1, c=5: n=6, P(X <= 1) = (1 + 6) / 64, two-sided 14/64
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(3, 3) == 1.0  # 2 * P(X <= 3 | n=6) = 2 * 42/64 > 1, capped
    with pytest.raises(UserError):
        mcnemar_exact(-1, 2)


def test_rm_accuracy_vs_reference_on_the_same_pairs():
    new = [True] * 30 + [True] * 12 + [False] * 2 + [False] * 6
    ref = [True] * 30 + [False] * 12 + [True] * 2 + [False] * 6
    res = rm_accuracy_vs(new, ref, n_boot=2000)
    assert (res["only_new"], res["only_ref"]) == (12, 2)
    assert res["accuracy"] == pytest.approx(42 / 50) and res["accuracy_ref"] == pytest.approx(32 / 50)
    assert res["diff"] == pytest.approx(10 / 50)
    # p = 2 * sum_{k<=2} C(14, k) / 2^14 = 2 * (1 + 14 + 91) / 16384
    assert res["mcnemar_p"] == pytest.approx(2 * 106 / 16384)
    assert res["ci_low"] > 0


def test_hierarchical_bootstrap_over_seeds_alone_matches_hand_computation():
    # Constant values within each seed: only the seed draw varies. Two seeds with means 0 and 1 give replicate
    # means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1] around 1/2.
    res = hierarchical_bootstrap({0: [0.0] * 10, 1: [1.0] * 7}, n_boot=4000, seed=0)
    assert res == {"diff": 0.5, "ci_low": 0.0, "ci_high": 1.0}
    draws = hierarchical_draws([[0.0] * 10, [1.0] * 7], n_boot=4000, seed=0)
    assert set(np.unique(draws)) == {0.0, 0.5, 1.0}
    assert np.mean(draws == 0.5) == pytest.approx(0.5, abs=0.03)
    # one seed with constant values: no spread at all
    assert hierarchical_bootstrap({3: [0.2] * 5}, n_boot=200) == pytest.approx(
        {"diff": 0.2, "ci_low": 0.2, "ci_high": 0.2})


def test_hierarchical_bootstrap_variance_matches_two_stage_formula():
    rng = np.random.default_rng(7)
    seeds = [rng.normal(mu, sd, size=n) for mu, sd, n in [(0.1, 1.0, 40), (0.4, 0.5, 60), (-0.2, 2.0, 30)]]
    # Var(T) = (1/S) [ (1/S) sum_s (m_s - mbar)^2 + (1/S) sum_s var0_s / n_s ]   (var0: ddof = 0)
    means = np.array([x.mean() for x in seeds])
    within = np.array([x.var() / x.size for x in seeds])
    expected = (np.mean((means - means.mean()) ** 2) + within.mean()) / len(seeds)
    draws = hierarchical_draws(seeds, n_boot=8000, seed=1)
    assert draws.mean() == pytest.approx(means.mean(), abs=0.02)
    assert draws.var() == pytest.approx(expected, rel=0.06)
    # the pooled CI is wider than flattening all prompts into one sample (which ignores seed-to-seed spread)
    pooled = hierarchical_bootstrap(seeds, n_boot=2000)
    flat = paired_diff(np.concatenate(seeds), np.zeros(130), n_boot=2000)
    assert pooled["ci_high"] - pooled["ci_low"] > flat["ci_high"] - flat["ci_low"]


def test_seed_summary_has_the_quality_json_shape():
    rng = np.random.default_rng(3)
    values = {s: rng.normal(0.05 * s, 0.1, size=64) for s in (2, 0, 1)}
    out = seed_summary(values, n_boot=500)
    assert [e["seed"] for e in out["per_seed"]] == [0, 1, 2]
    for e in out["per_seed"]:
        assert set(e) == {"seed", "diff", "ci_low", "ci_high"}
        assert e["diff"] == pytest.approx(values[e["seed"]].mean())
        assert e["ci_low"] < e["diff"] < e["ci_high"]
    assert set(out["pooled"]) == {"diff", "ci_low", "ci_high"}
    assert out["pooled"]["diff"] == pytest.approx(np.mean([v.mean() for v in values.values()]))


def test_recovered_share_only_when_the_oracle_gain_is_significant():
    rng = np.random.default_rng(5)
    oracle = {s: 0.2 + rng.normal(0, 0.1, size=128) for s in range(3)}
    method = {s: 0.5 * oracle[s] + rng.normal(0, 0.02, size=128) for s in range(3)}
    res = recovered_share(method, oracle, n_boot=1000)
    assert res["reason"] is None
    assert res["share"] == pytest.approx(0.5, abs=0.02)
    assert res["ci_low"] < res["share"] < res["ci_high"] and res["ci_high"] - res["ci_low"] < 0.1

    noise = {s: rng.normal(0, 0.1, size=128) for s in range(3)}
    absent = recovered_share(method, noise, n_boot=1000)
    assert absent["share"] is None and "not significant" in absent["reason"]
    assert absent["oracle_gain"]["ci_low"] <= 0
    with pytest.raises(UserError):
        recovered_share({0: [0.1]}, {1: [0.1]})


def test_paired_comparisons_against_each_baseline():
    gold = {"SFT": [0.1, 0.2, 0.3, 0.4], "PPO": [0.2, 0.2, 0.5, 0.4], "RLP": [0.3, 0.1, 0.5, 0.6]}
    out = paired_comparisons(gold, n_boot=200)
    assert set(out) == {"PPO", "SFT"} and set(out["PPO"]) == {"SFT", "RLP"} and set(out["SFT"]) == {"PPO", "RLP"}
    rlp = out["PPO"]["RLP"]
    assert rlp["per_prompt_diff"] == pytest.approx([0.1, -0.1, 0.0, 0.2])
    assert rlp["gold_diff"]["diff"] == pytest.approx(0.05)
    assert (rlp["head_to_head"]["wins"], rlp["head_to_head"]["ties"], rlp["head_to_head"]["losses"]) == (2, 1, 1)
    assert paired_comparisons({"SFT": [1.0]}, baselines=("PPO",)) == {}
