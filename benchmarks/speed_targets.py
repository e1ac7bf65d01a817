"""The targets of `speed.py` and how each is judged: PPO vs TRL, update-phase MFU, RLP's overhead, the cheaper
optimisers (LoRA PPO, RLOO) in episodes per second; for a missed target, the measured evidence of where time goes.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from common import median, spread

FLOP_FORMULA = (
    "MFU = model FLOPs of the update phase / time_update / measured fp32 matmul peak. Headline ('6ND'): "
    "6 * (N_policy + N_value) * update_tokens, with N all parameters and update_tokens = ppo_epochs * (prompt + "
    "response tokens, pads excluded), as ppo.py counts them. Matmul-only variant: 6 * (non-embedding parameters of "
    "policy and value) * update_tokens + 6 * hidden * vocab * response tokens (logits are computed for response "
    "positions only); attention-score FLOPs are left out of both. The target is judged on the matmul-only variant "
    "(the smaller, so MFU is never overstated).")
TARGETS = {"ppo_speedup": 1.5, "mfu": 0.5, "rlp_overhead": 1.6, "lora_ppo_episodes": 3.0, "lora_ppo_rss": 0.6,
           "rloo_episodes": 3.0}
RLHF_STAGES = ("00_instructions", "01_sft", "02_preferences", "03_rm0", "04_ppo1")


# ---------------------------------------------------------------------------------------------------------
# MFU, RLP overhead, sampling


def update_mfu(ours: list[dict], params: dict[str, int], peak: float) -> dict[str, Any]:
    """Model-FLOP utilisation of the update phase, per timed step of every run of ours (FLOP_FORMULA)."""
    simple, matmul, achieved = [], [], []
    for run in ours:
        for ph in run.get("phases", []):
            if not ph.get("time_update"):
                continue
            tokens = ph["update_tokens_per_second"] * ph["time_update"]
            response_tokens = ph["response_length"] * run["batch"] * run["ppo_epochs"]
            f_simple = 6 * (params["policy"] + params["value"]) * tokens
            f_matmul = (6 * (params["policy_non_embedding"] + params["value_non_embedding"]) * tokens
                        + 6 * params["hidden"] * params["vocab"] * response_tokens)
            simple.append(f_simple / ph["time_update"] / peak)
            matmul.append(f_matmul / ph["time_update"] / peak)
            achieved.append(f_matmul / ph["time_update"])
    return {"mfu_6nd": median(simple), "mfu_matmul": median(matmul), "achieved_flops_per_second": median(achieved),
            "per_step_mfu_matmul": matmul, "formula": FLOP_FORMULA}


def rlp_overhead(run_dir: Path) -> dict[str, Any]:
    """RLP pipeline wall time over plain RLHF (SFT -> D -> RM -> PPO) from a run's stage manifests.

    Per RLP variant: RLHF stages + its RLP-only stages (policy samples, SPG when it uses it, refinement,
    PPO2); evaluation, best-of-n and ensemble stages are left out of both sides.
    """
    manifests = {}
    for path in sorted(run_dir.glob("*/manifest.json")):
        m = json.loads(path.read_text())
        manifests[m["stage"]] = m
    if not manifests:
        return {"measured": False, "reason": f"no stage manifests under {run_dir}"}
    seconds = {name: m.get("seconds") for name, m in manifests.items() if m.get("status") == "done"}
    missing = [s for s in ("00_instructions", "02_preferences", "03_rm0", "04_ppo1") if s not in seconds]
    if missing:
        return {"measured": False, "reason": f"RLHF stages not finished in {run_dir}: {missing}"}
    rlhf = sum(v for k, v in seconds.items() if k in RLHF_STAGES)
    samples = sum(v for k, v in seconds.items() if k.startswith("05_samples"))
    spg = sum(v for k, v in seconds.items() if k.startswith("06_spg"))
    oracle = sum(v for k, v in seconds.items() if k.startswith("06_oracle"))
    variants = {}
    for name in sorted({k.split("_", 2)[2] for k in seconds if k.startswith("07_refine_")}):
        if f"08_ppo2_{name}" not in seconds:
            continue
        extra = samples + seconds[f"07_refine_{name}"] + seconds[f"08_ppo2_{name}"]
        extra += spg if name in ("spg", "uml_spg", "oracle") else 0.0
        extra += oracle if name == "oracle" else 0.0
        variants[name] = {"rlp_only_seconds": extra, "ratio": (rlhf + extra) / rlhf}
    rlp_variants = {k: v for k, v in variants.items() if k != "oracle"}
    return {"measured": bool(rlp_variants), "run_dir": str(run_dir), "rlhf_seconds": rlhf, "variants": variants,
            "worst_ratio": max((v["ratio"] for v in rlp_variants.values()), default=None),
            "stage_seconds": seconds}


# ---------------------------------------------------------------------------------------------------------
# Targets


def episodes_per_second(run: dict[str, Any], batch: int | None = None) -> float | None:
    """Sequences (episodes) per second of a worker run: its batch over its median step time.

    ``batch``: the benchmark's batch (``settings.batch``), for runs that do not record their own; TRL's worker
    records none before issue 29, so without it every TRL comparison read "no TRL run to compare with".
    """
    size = run.get("batch") or batch
    return size / run["median_step_seconds"] if run.get("median_step_seconds") and size else None


def cheaper_targets(workloads: dict[str, dict], ours: list[dict], trl: list[dict], trl_note: str | None,
                    batch: int | None = None) -> dict[str, Any]:
    """LoRA PPO and RLOO: episodes/s (and LoRA PPO's peak RSS) as multiples of TRL's full fine-tuning PPO."""
    trl_eps = median([e for t in trl if (e := episodes_per_second(t, batch))])
    trl_rss = median([t["peak_rss_mb"] for t in trl if "peak_rss_mb" in t])
    ours_eps = median([e for o in ours if (e := episodes_per_second(o, batch))])
    out = {}
    for name, goal in (("lora_ppo", TARGETS["lora_ppo_episodes"]), ("rloo", TARGETS["rloo_episodes"])):
        if name not in workloads:
            continue
        run = workloads[name]
        eps = episodes_per_second(run, batch)
        t: dict[str, Any] = {"target": f"{name} episodes/s >= {goal}x TRL's full fine-tuning PPO"
                             + (f", peak RSS <= {TARGETS['lora_ppo_rss']}x TRL's" if name == "lora_ppo" else ""),
                             "episodes_per_second": eps, "peak_rss_mb": run.get("peak_rss_mb"),
                             "vs_our_full_ppo": eps / ours_eps if eps and ours_eps else None}
        if eps is None or trl_eps is None or trl_rss is None:
            t.update(passed=None, reason=run.get("error") or trl_note or ("no TRL run to compare with" if not trl else
                                                                             "no batch size for the TRL runs"))
        else:
            t["vs_trl"] = eps / trl_eps
            t["rss_vs_trl"] = run["peak_rss_mb"] / trl_rss
            t["passed"] = t["vs_trl"] >= goal and (name != "lora_ppo" or t["rss_vs_trl"] <= TARGETS["lora_ppo_rss"])
        out[f"{name}_vs_trl"] = t
    return out


def judge(ours: list[dict], trl: list[dict], trl_note: str | None, mfu: dict, overhead: dict,
          profile: dict | None, workloads: dict[str, dict] | None = None, batch: int | None = None) -> dict[str, Any]:
    """Each target with its measured value and pass/fail (None: not measured, with the reason).

    The PPO targets compare episodes per second, ``batch`` (the benchmark's setting) standing in for a run that
    records no batch of its own (TRL's worker before issue 29).
    """
    pairs = [(o_eps, t_eps) for o, t in zip(ours, trl)
             if (o_eps := episodes_per_second(o, batch)) and (t_eps := episodes_per_second(t, batch))]
    speedups = [o_eps / t_eps for o_eps, t_eps in pairs]
    ours_rss = median([o["peak_rss_mb"] for o in ours if "peak_rss_mb" in o])
    trl_rss = median([t["peak_rss_mb"] for t in trl if "peak_rss_mb" in t])
    speed: dict[str, Any] = {"target": f"PPO step >= {TARGETS['ppo_speedup']}x faster than TRL, peak RSS <= TRL's",
                             "speedup": spread(speedups), "peak_rss_mb_ours": ours_rss, "peak_rss_mb_trl": trl_rss}
    if not speedups or ours_rss is None or trl_rss is None:
        speed.update(passed=None, reason=trl_note or "no successful ours/TRL pair of runs with a batch size")
    else:
        speed["passed"] = statistics.median(speedups) >= TARGETS["ppo_speedup"] and ours_rss <= trl_rss
        speed["judged_on"] = "median episodes/s ratio over repeats; median peak RSS over runs"
    mfu_target = {"target": f"update-phase MFU >= {TARGETS['mfu']:.0%}", "mfu_matmul": mfu["mfu_matmul"],
                  "mfu_6nd": mfu["mfu_6nd"],
                  "passed": None if mfu["mfu_matmul"] is None else mfu["mfu_matmul"] >= TARGETS["mfu"]}
    over = {"target": f"RLP wall time <= {TARGETS['rlp_overhead']}x plain RLHF", "worst_ratio": overhead.get("worst_ratio"),
            "passed": None if not overhead.get("measured") else overhead["worst_ratio"] <= TARGETS["rlp_overhead"]}
    if not overhead.get("measured"):
        over["reason"] = overhead.get("reason")
    targets = {"ppo_step_vs_trl": speed, "update_mfu": mfu_target, "rlp_overhead": over,
               **cheaper_targets(workloads or {}, ours, trl, trl_note, batch)}
    for name, t in targets.items():
        if t["passed"] is False:
            t["why"] = explain(name, ours, trl, mfu, overhead, profile)
    return targets


def explain(name: str, ours: list[dict], trl: list[dict], mfu: dict, overhead: dict, profile: dict | None
            ) -> dict[str, Any]:
    """Measured evidence for a missed target: where our step's time goes, and the profiled top operators."""
    phases = [ph for run in ours for ph in run.get("phases", [])]
    step = median([s for run in ours for s in run.get("step_seconds", [])]) or 0.0
    shares = {k: (median([ph[k] for ph in phases if ph.get(k) is not None]) or 0.0) / step if step else None
              for k in ("time_rollout", "time_score", "time_update")}
    why: dict[str, Any] = {"median_step_seconds_ours": step, "phase_share_of_step": shares}
    if name == "ppo_step_vs_trl":  # the same split for both frameworks, median seconds per phase
        why["median_phase_seconds"] = {fw: {k: median([ph[k] for run in runs for ph in run.get("phases", [])
                                                       if ph.get(k) is not None])
                                            for k in ("time_rollout", "time_score", "time_update")}
                                       for fw, runs in (("ours", ours), ("trl", trl))}
    if name == "update_mfu":
        why["achieved_flops_per_second"] = mfu["achieved_flops_per_second"]
    if name == "rlp_overhead":
        why = {"stage_seconds": overhead.get("stage_seconds"), "variants": overhead.get("variants")}
    if profile and name != "rlp_overhead":
        why["profile"] = profile
    return why


