"""The paper's comparison at CPU scale: RLP against SFT, best-of-n, PPO, an oracle and RM ensembles, over seeds.

    .venv/bin/python benchmarks/quality.py                          # configs/alpaca.yaml, seeds 0 1 2
    .venv/bin/python benchmarks/quality.py --max_seeds_per_call 1   # one more seed per call (resumable)
    .venv/bin/python benchmarks/quality.py --jobs 2 --threads 8      # two seeds at a time, 4 threads each
    .venv/bin/python benchmarks/quality.py --smoke                  # tiny preset, 2 seeds, temp dir (< 3 min)

Each seed runs `rlp_align.pipeline.run.run_pipeline` in benchmarks/work/quality/seed<k> (the stage cache makes a
killed or partial seed resume) with refine methods uml, spg, uml+spg and oracle, best-of-16 and, with
--ensemble_k k, a k-member RM ensemble (WCO and UWO; off by default: it costs k RMs and 2 PPO runs per seed).
D is labelled by the rule annotator with 25 % label noise; the gold judge is the same rule annotator without
noise. Per seed it also measures SPG label accuracy against gold for the Table-5
variants (RM ranks a pair; select-all, gamma = 0; SPG, gamma = 0.5) on PPO1's samples with RM0.

Across finished seeds: gold win-rate vs the reference answers (mean and 95 % t-interval over seeds, plus every
seed's bootstrap CI), mean gold reward, on-policy RM accuracy of RM0 and each refined RM, the recovered share
(RLP - PPO) / (Oracle - PPO) of gold win-rate, and SPG label accuracy. Writes benchmarks/results/quality.json
and quality.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
METHODS = ["SFT", "Best-of-n", "PPO", "RLP-UML", "RLP-SPG", "RLP-UML+SPG", "Oracle", "Ensemble-WCO", "Ensemble-UWO"]
RLP_VARIANTS = ["RLP-UML", "RLP-SPG", "RLP-UML+SPG"]
REFINED_RMS = ["RLP-UML", "RLP-SPG", "RLP-UML+SPG", "Oracle"]
UNIT = (0.0, 1.0)  # win-rates and accuracies are fractions: their intervals are clipped to [0, 1]
TABLE5 = {"rm_rank": "RM ranks a pair", "select_all": "select-all (gamma = 0)", "spg": "SPG (gamma = 0.5)",
          "west_of_n": "West-of-N (RM0's best vs worst)"}
# two-sided 95 % quantiles of Student's t by degrees of freedom (no scipy in the venv)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile(df: int) -> float:
    return T975[max(k for k in T975 if k <= df)] if df <= 30 else 1.96


def t_interval(xs: list[float], bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean and 95 % t-interval over seeds, clipped to ``bounds``; with one seed the interval is None."""
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": 1}
    half = t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": len(xs), "sd": statistics.stdev(xs)}


# ---------------------------------------------------------------------------------------------------------
# One seed


def seed_config(preset: Path, seed: int, run_dir: Path, smoke: bool, ensemble_k: int) -> Any:
    """The preset with the benchmark's methods, seed and folder; data paths made absolute."""
    from rlp_align.core.config import build_config, merge, read_yaml
    from rlp_align.pipeline.run import PipelineConfig

    values = read_yaml(preset)
    for key in ("train_file", "eval_file", "preference_file"):
        path = values.get("data", {}).get(key)
        if path and not Path(path).is_absolute():
            values["data"][key] = str((ROOT / path).resolve())
    overrides: dict[str, Any] = {
        "output_dir": str(run_dir), "seed": seed, "refine_methods": ["uml", "spg", "uml+spg", "oracle"],
        "label_noise": 0.25, "ensemble": {"k": ensemble_k, "aggregates": ["wco", "uwo"]},
    }
    if not smoke:
        overrides["best_of_n"] = {"n": 16}
    return build_config(PipelineConfig, merge(values, overrides))


def ppo1_samples(run_dir: Path) -> Path:
    """The policy-sample file drawn from PPO1 (the stage whose manifest names PPO1's hash)."""
    ppo1 = json.loads((run_dir / "04_ppo1" / "manifest.json").read_text())["hash"]
    for manifest in sorted(run_dir.glob("05_samples*/manifest.json")):
        m = json.loads(manifest.read_text())
        if m.get("inputs", {}).get("policy") == ppo1 and m.get("status") == "done":
            return Path(m["outputs"]["samples"])
    raise FileNotFoundError(f"no finished sample stage from PPO1 in {run_dir}")


def spg_label_accuracy(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Table 5: agreement of each pair-selection rule's pairs with the noise-free gold annotator.

    Agreement = mean gold P(chosen > rejected), so a gold tie counts 1/2. Gold judges with the unlabelled
    pool's full instructions (reference answer and constraints), as D's annotator did.
    """
    from rlp_align.core.io import write_json
    from rlp_align.data import read_instructions, read_preferences
    from rlp_align.data.records import prompt_text
    from rlp_align.judge.annotators import make_annotator
    from rlp_align.rlp.spg import run_spg

    cached = run_dir / "table5" / "accuracy.json"
    if cached.exists():
        return json.loads(cached.read_text())
    samples = ppo1_samples(run_dir)
    pool = {x.text: x for x in read_instructions(run_dir / "00_instructions" / "unlabelled.jsonl")}
    annotator = make_annotator(cfg.annotator)
    result = {}
    for selection, label in TABLE5.items():
        out = run_dir / "table5" / f"{selection}.jsonl"
        gamma = 0.5 if selection == "spg" else 0.0
        stats = run_spg(dataclasses.replace(cfg.spg, samples_file=str(samples), reward_model=str(run_dir / "03_rm0" /
                                            "model"), output_file=str(out), selection=selection, gamma=gamma,
                                            seed=cfg.seed))
        prefs = read_preferences(out) if stats["pairs"] else []
        probs = annotator.compare([pool[prompt_text(p.prompt)] for p in prefs], [p.chosen for p in prefs],
                                  [p.rejected for p in prefs]) if prefs else []
        result[selection] = {"label": label, "pairs": len(prefs), "instructions": stats["instructions"],
                             "accuracy": statistics.fmean(probs) if probs else None,
                             "gold_ties": sum(p == 0.5 for p in probs)}
    write_json(cached, result)
    return result


def run_seed(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) one seed's pipeline and its Table-5 measurement; the seed's record."""
    from rlp_align.core.config import config_hash, config_to_dict
    from rlp_align.core.io import write_json
    from rlp_align.pipeline.run import run_pipeline

    started = time.time()
    run_pipeline(cfg)
    evaluation = json.loads((run_dir / "14_evaluate" / "evaluation.json").read_text())
    record = {"seed": cfg.seed, "config_hash": config_hash(config_to_dict(cfg)), "evaluation": evaluation,
              "spg_label_accuracy": spg_label_accuracy(cfg, run_dir), "seconds_this_call": time.time() - started}
    write_json(run_dir / "quality_seed.json", record)
    return record


def run_facts(run_dir: Path) -> dict[str, Any]:
    """What a seed's stage manifests say: wall time per stage and in all, and the synthetic pairs SPG kept."""
    manifests = [json.loads(p.read_text()) for p in sorted(run_dir.glob("*/manifest.json"))]
    done = [m for m in manifests if m.get("status") == "done"]
    seconds = {m["stage"]: round(m.get("seconds") or 0.0, 1) for m in done}
    spg = [m["outputs"].get("pairs") for m in done if m["stage"].startswith("06_spg")]
    return {"stage_seconds": seconds, "total_minutes": round(sum(seconds.values()) / 60, 1),
            "spg_pairs": spg[0] if spg else None}


def finished_record(cfg: Any, run_dir: Path) -> dict[str, Any] | None:
    from rlp_align.core.config import config_hash, config_to_dict

    path = run_dir / "quality_seed.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("config_hash") == config_hash(config_to_dict(cfg)) else None


# ---------------------------------------------------------------------------------------------------------
# Across seeds


def rm_accuracy_value(entry: Any) -> float | None:
    return entry.get("accuracy") if isinstance(entry, dict) else entry


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method and per-RM statistics across seeds, the recovered share, Table 5, and the targets."""
    tables = [r["evaluation"]["win_rates"] for r in records]
    methods = {}
    for label in [m for m in METHODS if any(m in t for t in tables)]:
        per_seed = [{"seed": r["seed"], **{k: r["evaluation"]["win_rates"][label].get(k)
                                           for k in ("mean", "ci_low", "ci_high", "n", "gold_reward", "mean_chars")}}
                    for r in records if label in r["evaluation"]["win_rates"]]
        methods[label] = {"win_rate": t_interval([s["mean"] for s in per_seed], UNIT),
                          "gold_reward": t_interval([s["gold_reward"] for s in per_seed]), "per_seed": per_seed}
    accuracy = {}
    for label in ["RM0", *REFINED_RMS]:
        values = [(r["seed"], rm_accuracy_value(r["evaluation"]["rm_accuracy_on_policy"].get(label))) for r in records]
        values = [(s, v) for s, v in values if v is not None]
        if values:
            accuracy[label] = {**t_interval([v for _, v in values], UNIT), "per_seed": dict(values)}
    recovered = {}
    for label in RLP_VARIANTS:
        shares = []
        for t in tables:
            if all(k in t for k in (label, "PPO", "Oracle")):
                gap = t["Oracle"]["mean"] - t["PPO"]["mean"]
                shares.append((t[label]["mean"] - t["PPO"]["mean"]) / gap if abs(gap) > 1e-9 else None)
        recovered[label] = {**t_interval([s for s in shares if s is not None]), "per_seed": shares}
    table5 = {}
    for selection, label in TABLE5.items():
        values = [r["spg_label_accuracy"].get(selection, {}).get("accuracy") for r in records]
        table5[selection] = {"label": label, **t_interval([v for v in values if v is not None], UNIT),
                             "per_seed": values,
                             "pairs_per_seed": [r["spg_label_accuracy"].get(selection, {}).get("pairs")
                                                for r in records]}
    return {"methods": methods, "rm_accuracy_on_policy": accuracy, "recovered_share": recovered,
            "spg_label_accuracy": table5, "targets": targets(methods, accuracy, len(records)),
            **paired_aggregate(records)}


def paired_aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The paired keys of quality.json (issue 17): per-seed paired bootstrap CIs and the hierarchical bootstrap
    pooled over seeds (`rlp_align.judge.stats.seed_summary`), on the per-prompt / per-pair differences each seed's
    evaluation stage wrote. A key whose inputs no seed has is absent; ``missing`` says why."""
    from rlp_align.judge.stats import recovered_share, seed_summary

    def pooled(get) -> dict[str, Any] | None:
        values = {r["seed"]: v for r in records if (v := get(r["evaluation"])) is not None}
        return seed_summary(values) if values else None

    def vs(base: str, label: str):
        return lambda ev: ((ev.get("paired") or {}).get(base, {}).get(label) or {}).get("per_prompt_diff")

    def acc(label: str, key: str = "rm_accuracy_vs_rm0"):
        return lambda ev: ((ev.get(key) or {}).get(label) or {}).get("per_pair_diff")

    vs_ppo = {m: s for m in METHODS if m != "PPO" and (s := pooled(vs("PPO", m)))}
    rm_vs_rm0 = {m: s for m in REFINED_RMS if (s := pooled(acc(m)))}
    controls = {"ppo_vs_sft_gold": pooled(vs("SFT", "PPO")), "oracle_rm_vs_rm0_accuracy": rm_vs_rm0.get("Oracle"),
                "oracle_vs_ppo_gold": vs_ppo.get("Oracle")}
    controls["refined_fit_d"] = {m: s for m in REFINED_RMS if (s := pooled(acc(m, "refined_fit_d")))} or None
    missing = {k: "no seed has this comparison" for k, v in controls.items() if v is None}
    recovered = {}
    oracle = {r["seed"]: d for r in records if (d := vs("PPO", "Oracle")(r["evaluation"])) is not None}
    for label in RLP_VARIANTS:
        method = {r["seed"]: d for r in records if (d := vs("PPO", label)(r["evaluation"])) is not None}
        if oracle and sorted(method) == sorted(oracle):
            recovered[label] = {k: v for k, v in recovered_share(method, oracle).items() if k != "oracle_gain"}
    share = {m: [r["evaluation"]["win_rates"][m].get("truncated_share") for r in records
                 if m in r["evaluation"]["win_rates"]] for m in METHODS}
    return {"controls": {k: v for k, v in controls.items() if v is not None}, "controls_missing": missing,
            "vs_ppo": vs_ppo, "rm_accuracy_vs_rm0": rm_vs_rm0, "recovered_share_paired": recovered,
            "sizes": {"n_eval": min((r["evaluation"].get("n_eval") or 0 for r in records), default=0),
                      "n_heldout_d_pairs": min((r["evaluation"].get("heldout_d_pairs") or 0 for r in records),
                                               default=0),
                      "n_onpolicy_pairs": min((r["evaluation"].get("on_policy_pairs") or 0 for r in records),
                                              default=0),
                      "spg_pairs_per_seed": [(r.get("run") or {}).get("spg_pairs") for r in records]},
            "truncated_share": {m: statistics.fmean(v) for m, v in share.items()
                                if v and all(x is not None for x in v)}}


def interval(method: dict[str, Any], n_seeds: int) -> tuple[float | None, float | None, str]:
    """The CI a target is judged on: the t-interval across seeds, or the bootstrap CI of a single seed."""
    wr = method["win_rate"]
    if n_seeds >= 2 and wr["ci_low"] is not None:
        return wr["ci_low"], wr["ci_high"], "95 % t-interval across seeds"
    seed = method["per_seed"][0]
    return seed["ci_low"], seed["ci_high"], "95 % bootstrap CI of the only seed"


def targets(methods: dict, accuracy: dict, n_seeds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in ("RLP-SPG", "RLP-UML"):
        key = f"{label}_above_PPO"
        if label not in methods or "PPO" not in methods:
            out[key] = {"passed": None, "reason": f"{label} or PPO missing"}
            continue
        low, _, kind = interval(methods[label], n_seeds)
        _, ppo_high, _ = interval(methods["PPO"], n_seeds)
        out[key] = {"target": f"{label} gold win-rate above PPO's with non-overlapping 95 % CIs", "judged_on": kind,
                    f"{label}_ci_low": low, "PPO_ci_high": ppo_high,
                    "passed": None if low is None or ppo_high is None else low > ppo_high}
    rm0 = accuracy.get("RM0", {}).get("mean")
    refined = {k: accuracy[k]["mean"] for k in RLP_VARIANTS if k in accuracy}
    out["refined_RMs_more_accurate_on_policy"] = {
        "target": "every RLP-refined RM more accurate than RM0 on PPO1's samples (mean over seeds)",
        "RM0": rm0, "refined": refined,
        "passed": None if rm0 is None or not refined else all(v > rm0 for v in refined.values())}
    return out


def plot(path: Path, summary: dict[str, Any]) -> None:
    """Win-rate per method (mean over seeds, t-interval, seeds as dots) and on-policy RM accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, accuracy = summary["methods"], summary["rm_accuracy_on_policy"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    labels = list(methods)
    for i, label in enumerate(labels):
        wr = methods[label]["win_rate"]
        ax1.bar(i, 100 * wr["mean"], color="#DD8452" if label.startswith("RLP") else "#4C72B0")
        if wr["ci_low"] is not None:
            ax1.errorbar(i, 100 * wr["mean"], yerr=[[100 * (wr["mean"] - wr["ci_low"])],
                                                    [100 * (wr["ci_high"] - wr["mean"])]], color="black", capsize=4)
        ax1.scatter([i] * len(methods[label]["per_seed"]), [100 * s["mean"] for s in methods[label]["per_seed"]],
                    color="black", s=10, zorder=3)
    ax1.set_xticks(range(len(labels)), labels, rotation=25, ha="right")
    ax1.set_ylabel("gold win-rate vs baseline (%)")
    ax1.set_title(f"Win-rate over {summary['n_seeds']} seed(s): mean, 95 % t-interval, seeds")
    names = list(accuracy)
    ax2.bar(range(len(names)), [100 * accuracy[k]["mean"] for k in names], color="#55A868")
    ax2.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax2.set_ylabel("on-policy accuracy (%)")
    ax2.set_title("Reward models on PPO1 samples (gold labels)")
    for ax in (ax1, ax2):
        ax.axhline(50, color="grey", linestyle="--", linewidth=1)
        ax.set_ylim(0, 100)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def run_seeds_in_parallel(seeds: list[int], jobs: int, threads: int, common: list[str], work: Path) -> None:
    """Run each seed in its own process of this script, ``jobs`` at a time, ``threads`` torch threads each.

    For machines with more cores than one seed uses well. On the 2-core machine it did not pay: RM0 took
    155 s in one 2-thread seed against 367-390 s in each of two 1-thread seeds run side by side, so the
    default is one seed at a time. A seed's process grows to about 10 GB RSS, so mind memory before raising
    ``jobs``. Logs: <work_dir>/seed<k>.log.
    """
    waiting, running, failed = list(seeds), {}, []
    work.mkdir(parents=True, exist_ok=True)
    while waiting or running:
        while waiting and len(running) < jobs:
            seed = waiting.pop(0)
            log = work / f"seed{seed}.log"
            cmd = [sys.executable, __file__, *common, "--seeds", str(seed), "--threads", str(threads),
                   "--out", str(work / f"seed{seed}.partial.json")]
            print(f"seed {seed}: running in {work / f'seed{seed}'} (log {log})", flush=True)
            with open(log, "a") as handle:
                running[seed] = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)
        time.sleep(1.0)
        for seed, proc in list(running.items()):
            if proc.poll() is not None:
                del running[seed]
                if proc.returncode:
                    failed.append(seed)
                    print(f"seed {seed}: failed (exit {proc.returncode}); see {work / f'seed{seed}.log'}")
    if failed:
        raise SystemExit(f"seeds {failed} failed; rerun the same command to resume them from their stage cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 2 seeds, temp dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (smoke: 0 1)")
    parser.add_argument("--max_seeds_per_call", type=int, default=None, help="run at most this many unfinished seeds")
    parser.add_argument("--preset", default=None, help="default configs/alpaca.yaml (smoke: configs/tiny.yaml)")
    parser.add_argument("--work_dir", default=None, help="default benchmarks/work/quality (smoke: a temp dir)")
    parser.add_argument("--ensemble_k", type=int, default=None,
                        help="RMs per ensemble; 0 leaves the ensemble rows out, saving k RMs and 2 PPO runs per "
                             "seed (default 0; smoke 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in all (default 2; smoke 1)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, in separate processes that "
                        "share --threads (default 1)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/quality.json")
    args = parser.parse_args()
    smoke = args.smoke
    seeds = args.seeds if args.seeds is not None else ([0, 1] if smoke else [0, 1, 2])
    preset = Path(args.preset or ROOT / "configs" / ("tiny.yaml" if smoke else "alpaca.yaml"))
    work = Path(args.work_dir or (tempfile.mkdtemp(prefix="rlp_quality_") if smoke else BENCH / "work" / "quality"))
    out = Path(args.out or BENCH / "results" / ("quality_smoke.json" if smoke else "quality.json"))
    threads = args.threads or (1 if smoke else 2)
    ensemble_k = args.ensemble_k if args.ensemble_k is not None else (2 if smoke else 0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["RLP_NUM_THREADS"] = str(threads)
    import torch

    from rlp_align.core.io import write_json

    torch.set_num_threads(threads)
    started = time.time()
    unfinished = [s for s in seeds if finished_record(seed_config(preset, s, work / f"seed{s}", smoke, ensemble_k),
                                                      work / f"seed{s}") is None]
    if args.max_seeds_per_call is not None:
        unfinished = unfinished[: args.max_seeds_per_call]
    jobs = min(args.jobs, len(unfinished))
    if jobs > 1:
        common = ["--preset", str(preset), "--work_dir", str(work), "--ensemble_k", str(ensemble_k),
                  *(["--smoke"] if smoke else [])]
        run_seeds_in_parallel(unfinished, jobs, max(1, threads // jobs), common, work)
    records, ran = [], (len(unfinished) if jobs > 1 else 0)
    for seed in seeds:
        run_dir = work / f"seed{seed}"
        cfg = seed_config(preset, seed, run_dir, smoke, ensemble_k)
        record = finished_record(cfg, run_dir)
        if record is None:
            if args.max_seeds_per_call is not None and ran >= args.max_seeds_per_call:
                print(f"seed {seed}: not finished; left for a later call (--max_seeds_per_call)")
                continue
            print(f"seed {seed}: running in {run_dir}")
            record = run_seed(cfg, run_dir)
            ran += 1
        records.append({**record, "run": run_facts(run_dir)})
    if not records:
        print("no finished seed yet: nothing to aggregate")
        return
    summary = {"n_seeds": len(records), **aggregate(records),
               "per_seed_run": {r["seed"]: {k: r["run"][k] for k in ("total_minutes", "spg_pairs")} for r in records}}
    result = {
        "benchmark": "quality", "smoke": smoke, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **git_commit(),
        "preset": str(preset.relative_to(ROOT) if preset.is_relative_to(ROOT) else preset), "work_dir": str(work),
        "seeds_requested": seeds, "seeds_finished": [r["seed"] for r in records],
        "settings": {"refine_methods": ["uml", "spg", "uml+spg", "oracle"], "label_noise": 0.25,
                     "gold": "rule annotator without label noise", "ensemble_k": ensemble_k,
                     "best_of_n": "preset (tiny: 4)" if smoke else 16, "threads": threads, "jobs": args.jobs,
                     "baseline": records[0]["evaluation"].get("baseline"),
                     "n_eval": records[0]["evaluation"].get("n_eval"),
                     "recovered_share": "(win-rate of RLP - PPO) / (Oracle - PPO), per seed"},
        **summary, "png": str(out.with_suffix(".png")), "seconds_this_call": time.time() - started,
    }
    write_json(out, result)
    plot(out.with_suffix(".png"), summary)
    for name, t in result["targets"].items():
        print(f"target {name}: {'not measured' if t['passed'] is None else 'PASS' if t['passed'] else 'MISS'}")
    print(f"wrote {out} ({len(records)} seed(s)) in {result['seconds_this_call']:.0f}s")


if __name__ == "__main__":
    main()
