"""Across seeds: the controls, every method against PPO1 (at the end and at matched KL), and the plots.

Input: the per-seed records `quality.py` writes (``<work>/seed<k>/quality_seed.json``). Every comparison is
paired: per-prompt (or per-pair) differences on the same eval prompts (pairs) within a seed; a seed's CI is the
bootstrap over its prompts ("these runs differ"), the pooled CI the t-interval over the per-seed means
(`rlp_align.judge.stats.seed_summary`), which is the one that speaks to a method.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rlp_align.judge.stats import mean_ci, pooled_t, recovered_share, seed_summary

JSD_FLOOR = -2 * math.log(2)  # I_JSD's lower bound (a collapsed encoder), issue 22 section 1
MI_MARGIN = 0.1
# method label -> the PPO stage whose evaluation points it has (matched-KL comparison)
PPO_STAGES = {"PPO": "04_ppo1", "RLP-UML": "08_ppo2_uml", "RLP-SPG": "08_ppo2_spg", "RLP-UML+SPG": "08_ppo2_uml_spg",
              "Oracle": "08_ppo2_oracle", "West-of-N": "08_ppo2_west_of_n", "Ensemble-MEAN": "10_ppo_ens_mean",
              "Ensemble-WCO": "10_ppo_ens_wco", "Ensemble-UWO": "10_ppo_ens_uwo"}
VS_PPO = ["RLP-UML", "RLP-SPG", "RLP-UML+SPG", "West-of-N", "Oracle", "Best-of-n", "Ensemble-MEAN", "Ensemble-WCO",
          "Ensemble-UWO"]
REFINED = ["RLP-UML", "RLP-SPG", "RLP-UML+SPG", "West-of-N", "Oracle"]


def summary(by_seed: dict[int, Any]) -> dict[str, Any] | None:
    """`seed_summary` of the seeds that have this comparison; None when none has."""
    values = {s: v for s, v in by_seed.items() if v is not None and len(v)}
    return seed_summary(values) if values else None


# ---------------------------------------------------------------------------------------------------------
# Matched KL


def crossing(kls: list[float], target: float) -> tuple[int, float]:
    """``(j, w)``: KL ``target`` lies ``w`` of the way from point j - 1 to point j, the first point that reaches it
    (a target below the first point's KL gives that point; callers keep the target within the run's final KL)."""
    for j in range(1, len(kls)):
        if kls[j] >= target:
            w = 0.0 if kls[j] == kls[j - 1] else (target - kls[j - 1]) / (kls[j] - kls[j - 1])
            return j, min(max(w, 0.0), 1.0)
    return len(kls) - 1, 1.0


def at_kl(points: list[dict[str, Any]], target: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-prompt gold at mean KL ``target``, linearly interpolated between the two evaluation points around it."""
    j, w = crossing([p["kl"] for p in points], target)
    gold = [np.asarray(points[i]["per_prompt"]["gold"], dtype=np.float64) for i in (j - 1, j)]
    return (1 - w) * gold[0] + w * gold[1], {"between_steps": [points[j - 1]["step"], points[j]["step"]]}


def bon_at_kl(curve: dict[str, Any], target: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Best-of-n's per-prompt expected gold at plug-in KL ``target`` (`quality.best_of_k_kl`), interpolated
    between neighbouring n."""
    j, w = crossing(curve["kl"], target)
    gold = np.asarray(curve["per_prompt_gold"], dtype=np.float64)  # (n_max, prompts)
    return (1 - w) * gold[j - 1] + w * gold[j], {"n": j + w}  # index j holds n = j + 1


def matched_to_ppo(points: list[dict[str, Any]] | None, ppo: list[dict[str, Any]],
                   bon_curve: dict[str, Any] | None = None) -> tuple[list[float], dict[str, Any]]:
    """Per-prompt gold of a run (its evaluation points, or best-of-n's curve) minus PPO1's, both at
    min(the run's final KL, PPO1's final KL), and where that was (N1)."""
    ppo_final = ppo[-1]["kl"]
    if points is not None:
        final = points[-1]["kl"]
        gold, info = at_kl(points, kl := min(final, ppo_final))
    else:
        final = bon_curve["kl"][-1]
        gold, info = bon_at_kl(bon_curve, kl := min(final, ppo_final))
    base, base_info = at_kl(ppo, kl)
    return (gold - base[: gold.size]).tolist(), {"kl": kl, "reached": final >= ppo_final, "method_final_kl": final,
                                                 "ppo1_final_kl": ppo_final, **info,
                                                 "ppo1_between_steps": base_info["between_steps"]}


def matched_summary(matched: dict[int, Any], where: dict[int, Any]) -> dict[str, Any] | None:
    """`summary` of the matched-KL differences, with where each seed was compared and in how many seeds the run
    reached PPO1's final KL ("k/S")."""
    entry = summary(matched)
    if entry:
        reached = sum(w["reached"] for w in where.values())
        entry.update(where=where, reached_seeds=reached, reached=f"{reached}/{len(where)}")
    return entry


def vs_ppo(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each method minus PPO1 in gold, per prompt: at the end (the evaluation stage's answers) and at matched KL,
    with the recovered share (method - PPO) / (oracle - PPO) only where the oracle's pooled gain is significant.

    Matched KL (issue 28, N1): both runs at min(the method's final KL, PPO1's final KL), each interpolated along its
    own evaluation points (best-of-n along its plug-in KL curve), so neither is read past where it went. Per seed
    the KL used and whether the method reached PPO1's final KL; ``reached`` says in how many seeds it did."""
    end = {m: {r["seed"]: ((r["evaluation"].get("paired") or {}).get("PPO", {}).get(m) or {}).get("per_prompt_diff")
               for r in records} for m in VS_PPO}
    matched: dict[str, dict[int, Any]] = {m: {} for m in VS_PPO}
    where: dict[str, dict[int, Any]] = {m: {} for m in VS_PPO}
    for r in records:
        points = r.get("eval_points", {})
        if not points.get("PPO"):
            continue
        for m in VS_PPO:
            if points.get(m):
                got = matched_to_ppo(points[m], points["PPO"])
            elif m == "Best-of-n" and (r.get("bon_curve") or {}).get("kl"):  # records before N4 have the bound only
                got = matched_to_ppo(None, points["PPO"], r["bon_curve"])
            else:
                continue
            matched[m][r["seed"]], where[m][r["seed"]] = got
    out: dict[str, Any] = {}
    for m in VS_PPO:
        entry = {"end": summary(end[m]), "matched_kl": matched_summary(matched[m], where[m])}
        if not entry["end"] and not entry["matched_kl"]:
            continue
        if m != "Oracle":
            entry["recovered_share"] = {when: share(values, oracle) for when, values, oracle in
                                        (("end", end[m], end["Oracle"]), ("matched_kl", matched[m], matched["Oracle"]))}
        out[m] = entry
    return out


def share(method: dict[int, Any], oracle: dict[int, Any]) -> dict[str, Any] | None:
    seeds = sorted(s for s in method if method[s] is not None and oracle.get(s) is not None)
    if not seeds:
        return None
    # best-of-n's matched-KL curve covers the first eval prompts only: the oracle is taken on the same ones
    res = recovered_share({s: method[s] for s in seeds}, {s: oracle[s][: len(method[s])] for s in seeds})
    return {k: v for k, v in res.items() if k != "oracle_gain"}  # share None (with the reason) unless significant


# ---------------------------------------------------------------------------------------------------------
# Controls


def overoptimisation(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Gold and proxy against sqrt(KL) along PPO1 (each point with its CI), and whether gold's final value is below
    its peak beyond the CI while the proxy rises after the peak; plus best-of-n's gold and proxy against its KL.

    The peak is chosen on one half of the eval prompts and the drop tested on the other (issue 28, N3): picked and
    tested on the same prompts, a flat curve "drops" in 13 % of 5-seed studies, not the nominal 2.5 %. The split
    removes the prompts' sampling noise from the choice; a run's own wander between points, shared by both
    halves, it cannot remove."""
    per_seed, curves = [], []
    for r in records:
        points = (r.get("eval_points") or {}).get("PPO-long") or (r.get("eval_points") or {}).get("PPO") or []
        if len(points) < 2 or "gold" not in points[0]["per_prompt"]:
            continue
        curves.append((r["seed"], points))
        per_seed.append({"seed": r["seed"], "points": [
            {"step": p["step"], "kl": p["kl"], "sqrt_kl": math.sqrt(max(p["kl"], 0.0)),
             "gold": mean_ci(p["per_prompt"]["gold"]), "proxy": mean_ci(p["per_prompt"]["proxy"])} for p in points]})
    out: dict[str, Any] = {"per_seed": per_seed, "pooled": None, "best_of_n": best_of_n_curve(records),
                           "run": "the long PPO1 (quality.py: long_ppo1)" if any("PPO-long" in (r.get("eval_points") or {})
                                                                                for r in records) else "PPO1"}
    if not curves:
        return out
    n_points = min(len(p) for _, p in curves)
    pooled_points = [{"step": curves[0][1][j]["step"],
                      "sqrt_kl": float(np.mean([math.sqrt(max(p[j]["kl"], 0.0)) for _, p in curves])),
                      "gold": pooled_t([np.mean(p[j]["per_prompt"]["gold"]) for _, p in curves]),
                      "proxy": pooled_t([np.mean(p[j]["per_prompt"]["proxy"]) for _, p in curves])}
                     for j in range(n_points)]

    def half(seed_points: list[dict[str, Any]], j: int, key: str, parity: int) -> np.ndarray:
        return np.asarray(seed_points[j]["per_prompt"][key], dtype=np.float64)[parity::2]

    # the peak of the pooled curve on the even-indexed prompts; the change after it on the odd-indexed ones
    peak = int(np.argmax([np.mean([half(p, j, "gold", 0).mean() for _, p in curves]) for j in range(n_points)]))
    last = n_points - 1

    def change(key: str, seed_points: list[dict[str, Any]]) -> np.ndarray:  # final minus at peak, test half
        return half(seed_points, last, key, 1) - half(seed_points, peak, key, 1)

    gold_drop = seed_summary({s: change("gold", p) for s, p in curves})
    proxy_rise = seed_summary({s: change("proxy", p) for s, p in curves})
    for e, g, x in zip(per_seed, gold_drop["per_seed"], proxy_rise["per_seed"]):
        e.update(gold_final_minus_peak=g, proxy_final_minus_at_peak=x,
                 shown=g["ci_high"] < 0 and x["ci_low"] > 0)
    pooled = {"points": pooled_points, "peak_step": pooled_points[peak]["step"],
              "selection": "peak chosen on the even-indexed eval prompts, its drop and the proxy's rise after it "
                           "measured on the odd-indexed ones",
              "gold_final_minus_peak": gold_drop["pooled"], "proxy_final_minus_at_peak": proxy_rise["pooled"]}
    g, x = gold_drop["pooled"], proxy_rise["pooled"]
    pooled["shown"] = g["ci_high"] is not None and g["ci_high"] < 0 and x["ci_low"] > 0  # both None with 1 seed
    out["pooled"] = pooled
    return out


def best_of_n_curve(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best-of-n's pooled gold and proxy for n = 1 ... n_max against its plug-in KL (`quality.best_of_k_kl`, the
    mean over seeds; None for records made before it) and the analytic upper bound log n - (n - 1) / n."""
    curves = [(r["seed"], r["bon_curve"]) for r in records if r.get("bon_curve")]
    if not curves:
        return None
    n_max = min(len(c["kl_analytic"]) for _, c in curves)
    exact = all(c.get("kl") for _, c in curves)
    rows = []
    for j in range(n_max):
        rows.append({"n": j + 1, "kl": float(np.mean([c["kl"][j] for _, c in curves])) if exact else None,
                     "kl_analytic": curves[0][1]["kl_analytic"][j],
                     "gold": pooled_t([np.mean(c["per_prompt_gold"][j]) for _, c in curves]),
                     "proxy": pooled_t([np.mean(c["per_prompt_proxy"][j]) for _, c in curves])})
    return {"per_seed": [{"seed": s, "gold": [float(np.mean(g)) for g in c["per_prompt_gold"]],
                          "proxy": [float(np.mean(x)) for x in c["per_prompt_proxy"]], "kl": c.get("kl"),
                          "prompts": c["prompts"]} for s, c in curves], "pooled": rows,
            "kl": "plug-in KL(best-of-n || SFT) on each prompt's empirical sample distribution, mean over prompts "
                  "(quality.best_of_k_kl); kl_analytic: the upper bound log n - (n - 1) / n (Beirami et al. 2024)"}


def uml_mi(records: list[dict[str, Any]]) -> dict[str, Any]:
    """RLP-UML's final I_JSD minus its baseline's: the same UML head trained alone on the frozen RM0 (issue 28).

    The floor -2 ln 2 cannot judge it: both views contain the prompt, so a frozen random-init RM already ends
    ~0.9 above it. Passed: at least 0.1 above the baseline in every seed, and the pooled t-interval above 0."""
    per_seed = []
    for r in records:
        value, base = (r.get("uml_i_jsd") or {}).get("RLP-UML"), r.get("uml_baseline_i_jsd")
        per_seed.append({"seed": r["seed"], "final_i_jsd": value, "baseline_i_jsd": base,
                         "above_floor": None if value is None else value - JSD_FLOOR,
                         "margin": None if value is None or base is None else value - base})
    margins = [e["margin"] for e in per_seed if e["margin"] is not None]
    complete = bool(per_seed) and len(margins) == len(per_seed)
    pooled = pooled_t(margins) if margins else None
    passed = complete and min(margins) >= MI_MARGIN and (pooled["ci_low"] is None or pooled["ci_low"] > 0)
    return {"baseline": "RLP-UML's head (same steps, view batches, beta schedule) on the frozen RM0",
            "floor": JSD_FLOOR, "required_margin": MI_MARGIN, "per_seed": per_seed, "pooled": pooled,
            "passed": passed, **({} if complete else {"reason": "a seed lacks RLP-UML's or the baseline's I_JSD"})}


def gold_ppo_diffs(records: list[dict[str, Any]]) -> dict[int, Any]:
    """Gold PPO minus PPO1, per eval prompt, on the evaluation stage's answers (quality_ceilings.gold_ppo)."""
    return {r["seed"]: np.subtract(g["per_prompt_gold"], g["ppo_per_prompt_gold"]).tolist()
            for r in records if (g := r.get("gold_ppo"))}


def rm_capacity(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The RM capacity's accuracy on the on-policy pairs, per seed and pooled over seeds."""
    per_seed = [{"seed": r["seed"], "accuracy": float(np.mean(ok)), "pairs": len(ok),
                 "train_pairs": (r.get("rm_capacity") or {}).get("pairs")}
                for r in records if (ok := (r.get("onpolicy_correct") or {}).get("RM capacity"))]
    return {"per_seed": per_seed, "pooled": pooled_t([e["accuracy"] for e in per_seed])} if per_seed else None


def onpolicy_accuracy(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Every RM's on-policy accuracy and its paired difference from RM0 on the same pairs: the refined RMs' from
    the evaluation stage, the RM capacity's and the ensembles' from quality_ceilings.onpolicy_correct."""
    diffs: dict[str, dict[int, Any]] = {}
    accuracy: dict[str, dict[int, float]] = {}
    for r in records:
        ev = r["evaluation"]
        for label, e in (ev.get("rm_accuracy_vs_rm0") or {}).items():
            diffs.setdefault(label, {})[r["seed"]] = e.get("per_pair_diff")
            accuracy.setdefault(label, {})[r["seed"]] = (ev.get("rm_accuracy_on_policy") or {}).get(label, {}).get(
                "accuracy")
        correct = r.get("onpolicy_correct") or {}
        for label, ok in correct.items():
            accuracy.setdefault(label, {})[r["seed"]] = float(np.mean(ok)) if ok else None
            if label != "RM0" and "RM0" in correct:
                diffs.setdefault(label, {})[r["seed"]] = np.subtract(ok, correct["RM0"]).tolist()
    out = {}
    for label in sorted(set(diffs) | set(accuracy)):
        acc = {s: a for s, a in accuracy.get(label, {}).items() if a is not None}
        out[label] = {"accuracy": {"per_seed": acc, "pooled": pooled_t(list(acc.values())) if acc else None},
                      "vs_rm0": summary(diffs.get(label, {}))}
    return out


def add_gold_ppo(vs: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """`vs_ppo` with gold PPO beside every method, and each method's recovered share of gold PPO's gain at the end
    (the share against the oracle stays `recovered_share`)."""
    gold = gold_ppo_diffs(records)
    if not gold:
        return vs
    out = dict(vs)
    entry: dict[str, Any] = {"end": summary(gold), "matched_kl": None}
    matched, where = {}, {}
    for r in records:
        points = r.get("eval_points") or {}
        if points.get("Gold-PPO") and points.get("PPO"):
            matched[r["seed"]], where[r["seed"]] = matched_to_ppo(points["Gold-PPO"], points["PPO"])
    entry["matched_kl"] = matched_summary(matched, where)
    out["Gold-PPO"] = entry
    for m, e in vs.items():
        end = {r["seed"]: ((r["evaluation"].get("paired") or {}).get("PPO", {}).get(m) or {}).get("per_prompt_diff")
               for r in records}
        out[m] = {**e, "recovered_share_gold_ppo": {"end": share(end, gold)}}
    return out


def controls(records: list[dict[str, Any]]) -> dict[str, Any]:
    def paired(base: str, m: str):
        return {r["seed"]: ((r["evaluation"].get("paired") or {}).get(base, {}).get(m) or {}).get("per_prompt_diff")
                for r in records}

    def rm(key: str, m: str):
        return {r["seed"]: ((r["evaluation"].get(key) or {}).get(m) or {}).get("per_pair_diff") for r in records}

    return {"ppo_vs_sft_gold": summary(paired("SFT", "PPO")),
            "oracle_rm_vs_rm0_accuracy": summary(rm("rm_accuracy_vs_rm0", "Oracle")),
            "oracle_vs_ppo_gold": summary(paired("PPO", "Oracle")),
            "overoptimisation": overoptimisation(records),
            "refined_fit_d": {m: s for m in REFINED if (s := summary(rm("refined_fit_d", m)))},
            "uml_mi_above_baseline": uml_mi(records),
            "gold_ppo_vs_ppo_gold": summary(gold_ppo_diffs(records)),
            "rm_capacity_onpolicy_accuracy": rm_capacity(records)}


def label_accuracy(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Table 5: agreement with gold of each synthetic-pair selection, per seed and pooled over seeds."""
    out = {}
    for sel in sorted({k for r in records for k in r.get("table5", {})}):
        per_seed = [{"seed": r["seed"], **r["table5"][sel]} for r in records if sel in r.get("table5", {})]
        acc = [e["accuracy"] for e in per_seed if e["accuracy"] is not None]
        out[sel] = {"label": per_seed[0]["label"], "per_seed": per_seed, "pooled": pooled_t(acc) if acc else None}
    return out


def majority(records: list[dict[str, Any]]) -> dict[str, Any]:
    """P(the majority answer of n SFT samples is correct) minus P(one sample is correct), paired per prompt."""
    got = {r["seed"]: r["majority"] for r in records if r.get("majority")}
    if not got:
        reasons = {r.get("majority_reason") for r in records} - {None}
        return {"per_seed": [], "pooled": None, "reason": "; ".join(sorted(reasons)) or "not measured"}
    diff = seed_summary({s: np.subtract(m["majority_correct"], m["single_correct"]) for s, m in got.items()})
    per_seed = [{"seed": s, "n_samples": m["n"], "p_majority": float(np.mean(m["majority_correct"])),
                 "p_single": float(np.mean(m["single_correct"])), "majority_minus_single": d}
                for (s, m), d in zip(sorted(got.items()), diff["per_seed"])]
    return {"per_seed": per_seed, "pooled": {
        "p_majority": pooled_t([e["p_majority"] for e in per_seed]),
        "p_single": pooled_t([e["p_single"] for e in per_seed]), "majority_minus_single": diff["pooled"]}}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    given = [r.get("sizes") or {} for r in records]  # stage 00_instructions' own count of its eval pool
    out = {"n_seeds": len(records), "controls": controls(records), "vs_ppo": add_gold_ppo(vs_ppo(records), records),
           "onpolicy_accuracy": onpolicy_accuracy(records),
           "label_accuracy": label_accuracy(records), "majority_vs_single": majority(records),
           "sizes": {"n_eval": min(r["evaluation"].get("n_eval") or 0 for r in records),
                     "eval_distinct": min(g["eval_distinct"] for g in given) if all("eval_distinct" in g
                                                                                     for g in given) else None,
                     "eval_in_training": max(g["eval_in_training"] for g in given) if all(
                         "eval_in_training" in g for g in given) else None,
                     "n_onpolicy_pairs": min(r["evaluation"].get("on_policy_pairs") or 0 for r in records),
                     "n_heldout_d_pairs": min(r["evaluation"].get("heldout_d_pairs") or 0 for r in records),
                     "spg_pairs_per_seed": [r.get("spg_pairs") for r in records]},
           "seconds_per_seed": [r["seconds"] for r in records]}
    out["checks"] = checks(out)
    return out


def checks(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 21's "How it is checked", judged on the aggregate: ``passed`` True/False, or None where the figure
    cannot be judged yet (a pooled interval needs 2 seeds)."""
    c, n = d["controls"], d["n_seeds"]

    def seeds_above(entry: dict | None) -> int:
        return sum(s["ci_low"] > 0 for s in entry["per_seed"]) if entry else 0

    def pooled_low(entry: dict | None) -> float | None:
        return entry["pooled"]["ci_low"] if entry else None

    def judged(ok: bool | None, measured: str, target: str) -> dict[str, Any]:
        return {"target": target, "measured": measured, "passed": ok}

    out = {}
    for key, extra in (("ppo_vs_sft_gold", None), ("oracle_rm_vs_rm0_accuracy", 0.10)):
        e, low = c[key], pooled_low(c[key])
        ok = None if low is None else (low > 0 and seeds_above(e) >= math.ceil(0.8 * n)
                                       and (extra is None or e["pooled"]["diff"] >= extra))
        out[key] = judged(ok, f"CI above 0 in {seeds_above(e)} of {n} seeds; pooled "
                          f"{_fmt(e['pooled']) if e else 'not measured'}",
                          "CI above 0 in at least 4 of 5 seeds and pooled" + (", pooled gain >= 10 points"
                                                                               if extra else ""))
    e = c["oracle_vs_ppo_gold"]
    out["oracle_vs_ppo_gold"] = judged(None if pooled_low(e) is None else pooled_low(e) > 0,
                                       f"pooled {_fmt(e['pooled']) if e else 'not measured'}", "pooled CI above 0")
    over = c["overoptimisation"]["pooled"]
    out["overoptimisation"] = judged(
        None if not over or over["gold_final_minus_peak"]["ci_high"] is None else over["shown"],
        "not measured" if not over else f"gold final − peak {_fmt(over['gold_final_minus_peak'])}, proxy final − "
        f"at peak {_fmt(over['proxy_final_minus_at_peak'])}",
        "gold's final value below its peak beyond the CI while the proxy still rises")
    fits = c["refined_fit_d"]
    highs = {m: e["pooled"]["ci_high"] for m, e in fits.items()}
    out["refined_fit_d"] = judged(None if not highs or None in highs.values() else min(highs.values()) >= -0.03,
                                  ", ".join(f"{m} {_fmt(e['pooled'])}" for m, e in fits.items()) or "not measured",
                                  "pooled CI high >= -0.03 for every refined RM")
    mi = c["uml_mi_above_baseline"]
    margins = [f"seed {e['seed']} " + ("–" if e["margin"] is None else f"{e['margin']:+.3f}") for e in mi["per_seed"]]
    out["uml_mi_above_baseline"] = judged(mi["passed"], ", ".join(margins) or mi.get("reason", "–"),
                                          "RLP-UML's final I_JSD >= the frozen-RM0 baseline's + 0.1 in every seed, "
                                          "pooled CI above 0")
    e = c["gold_ppo_vs_ppo_gold"]
    out["gold_ppo_vs_ppo_gold"] = judged(
        None if pooled_low(e) is None else (e["pooled"]["diff"] >= 0.10 and pooled_low(e) > 0),
        f"pooled {_fmt(e['pooled']) if e else 'not measured'}", "pooled gain >= 0.10 and CI above 0")
    cap = c["rm_capacity_onpolicy_accuracy"]
    accs = [x["accuracy"] for x in cap["per_seed"]] if cap else []
    out["rm_capacity_onpolicy_accuracy"] = judged(
        None if not cap else len(accs) == n and min(accs) >= 0.85,
        ", ".join(f"seed {x['seed']} {x['accuracy']:.3f} ({x['train_pairs']} pairs)" for x in cap["per_seed"])
        if cap else "not measured", "on-policy accuracy >= 0.85 in every seed")
    sizes = d["sizes"]
    spg = [x for x in sizes["spg_pairs_per_seed"] if x is not None]
    distinct, leaked = sizes.get("eval_distinct"), sizes.get("eval_in_training")
    out["sizes"] = judged(sizes["n_eval"] >= 512 and distinct == sizes["n_eval"] and leaked == 0
                          and sizes["n_onpolicy_pairs"] >= 1000 and bool(spg) and min(spg) >= 128,
                          f"n_eval {sizes['n_eval']} ({distinct} distinct, {leaked} in training), on-policy pairs "
                          f"{sizes['n_onpolicy_pairs']}, SPG pairs per seed {sizes['spg_pairs_per_seed']}",
                          ">= 512 distinct eval prompts, none in training, >= 1000 on-policy pairs, >= 128 SPG "
                          "pairs per seed")
    worst = max(d["seconds_per_seed"])
    out["budget"] = judged(worst * 5 <= 2700, f"slowest seed {worst / 60:.1f} min (x 5 = {worst / 12:.0f} min)",
                           "5 seeds within 45 minutes")
    return out


def _fmt(p: dict[str, Any]) -> str:
    ci = "no CI (one seed)" if p["ci_low"] is None else f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]"
    return f"{p['diff']:+.4f} {ci}"
