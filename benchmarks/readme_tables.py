"""Rewrite the README's benchmark tables from the result JSON files (figures are measured, never typed in).

    .venv/bin/python benchmarks/readme_tables.py            # reads benchmarks/results/{speed,quality,gpu}.json

Replaces everything between ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->`` in README.md. A
missing JSON file gives a line saying that benchmark is not yet measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def num(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def verdict(target: dict[str, Any]) -> str:
    passed = target.get("passed")
    return "not measured" if passed is None else "**pass**" if passed else "**miss**"


def provenance(d: dict[str, Any]) -> str:
    commit = (d.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if d.get("dirty") else "")
    smoke = " **Smoke run: the numbers check the plumbing and mean nothing.**" if d.get("smoke") else ""
    return f"Measured {d.get('date', '?')} at commit `{commit}`.{smoke}"


def phase_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds of each timed phase over all timed steps of all runs ({} when none were recorded)."""
    out = {}
    for key in ("time_rollout", "time_score", "time_update"):
        xs = sorted(ph[key] for run in runs for ph in run.get("phases", []) if ph.get(key) is not None)
        if xs:
            out[key] = xs[len(xs) // 2]
    return out


def peak_range(peak: dict[str, Any]) -> str:
    """Where the matmul peak was measured several times, the spread it was the highest of."""
    rates = peak.get("measurements") or []
    return f" (the highest of {len(rates)} measurements, {min(rates) / 1e9:.0f} – {max(rates) / 1e9:.0f})" \
        if len(rates) > 1 else ""


def render_speed(d: dict[str, Any]) -> str:
    s, m = d["settings"], d["machine"]
    lines = ["### Speed (`benchmarks/results/speed.json`)\n",
             provenance(d) + f" {m.get('cpu') or 'CPU'}, {m.get('cores_available')} cores, {s['threads']} threads, "
             f"fp32, full fine-tuning. Model `{s['model']}`; PPO with batch {s['batch']}, {s['new_tokens']} new tokens, "
             f"{s['ppo_epochs']} PPO epochs; steps {s['timed_steps']} timed (model loading excluded), {s['repeats']} "
             "repeat(s), ours and TRL alternated in separate processes."]
    if m.get("busy_at_start"):
        busy = f"{100 * m['cpu_busy_at_start']:.0f} % of CPU time busy" if m.get("cpu_busy_at_start") is not None \
            else f"1-minute load average {m['load_average_at_start'][0]:.1f}"
        lines.append(f"\n⚠ The machine was busy when this ran ({busy}): "
                     "timings are pessimistic.")
    ppo = d["ppo"]
    lines += ["", "| framework | median step time (s), min – max over runs | peak RSS (GB) |", "|---|---|---|"]
    for name, runs in (("rlp_align", ppo["ours"]), ("TRL 1.12 PPOTrainer", ppo["trl"])):
        ok = [r for r in runs if r.get("median_step_seconds")]
        if not ok:
            note = "failed (see the JSON for the log)" if runs else (ppo.get("trl_note") or "not run")
            lines.append(f"| {name} | {note} | – |")
            continue
        times = [r["median_step_seconds"] for r in ok]
        rss = max(r["peak_rss_mb"] for r in ok) / 1024
        lines.append(f"| {name} | {sorted(times)[len(times) // 2]:.2f}, {min(times):.2f} – {max(times):.2f} "
                     f"| {rss:.2f} |")
    split = {name: phase_medians(runs) for name, runs in (("rlp_align", ppo["ours"]), ("TRL", ppo["trl"]))}
    if any(split.values()):
        lines += ["", "| median seconds per phase | rlp_align | TRL |", "|---|---|---|"]
        for key, label in (("time_rollout", "rollout (sampling)"), ("time_score", "scoring (ref, value, reward)"),
                           ("time_update", "update (PPO epochs and the rest)")):
            lines.append(f"| {label} | {num(split['rlp_align'].get(key))} | {num(split['TRL'].get(key))} |")
    sp = ppo.get("speedup_trl_over_ours")
    if sp:
        lines.append(f"\nSpeed-up (TRL step time / ours): min {sp['min']:.2f}×, median {sp['median']:.2f}×, "
                     f"max {sp['max']:.2f}×.")
    t, mfu, over = d["targets"], d["mfu"], d["rlp_overhead"]
    speed = t["ppo_step_vs_trl"]
    speedup = speed.get("speedup") or {}
    overhead_value = "; ".join(f"{k}: {v['ratio']:.2f}×" for k, v in (over.get("variants") or {}).items()) \
        or over.get("reason", "–")
    lines += ["", "| target | measured | result |", "|---|---|---|",
              f"| PPO step ≥ 1.5× faster than TRL, no more peak memory | median speed-up "
              f"{num(speedup.get('median'))}×, peak RSS {num(speed.get('peak_rss_mb_ours'), '.0f')} MB vs "
              f"{num(speed.get('peak_rss_mb_trl'), '.0f')} MB | {verdict(speed)} |",
              f"| update-phase MFU ≥ 50 % | {pct(mfu.get('mfu_matmul'))} % (6ND count: {pct(mfu.get('mfu_6nd'))} %) of "
              f"{d['matmul_peak']['flops_per_second'] / 1e9:.0f} GFLOP/s{peak_range(d['matmul_peak'])} "
              f"| {verdict(t['update_mfu'])} |",
              f"| RLP wall time ≤ 1.6× plain RLHF | {overhead_value} | {verdict(t['rlp_overhead'])} |"]
    lines += ["", "| sampling batch | new tokens/s | seconds |", "|---|---|---|"]
    lines += [f"| {r['batch']} | {r['tokens_per_second']:.0f} | {r['seconds']:.1f} |" for r in d["sampling"]]
    lines.append(f"\nMFU: {mfu.get('formula', '')}")
    return "\n".join(lines)


def render_quality(d: dict[str, Any]) -> str:
    st = d["settings"]
    baseline = "the reference answers" if st.get("baseline") == "reference" else "the SFT answers"
    lines = ["### Quality (`benchmarks/results/quality.json`)\n",
             provenance(d) + f" Preset `{d['preset']}`, seeds finished {d['seeds_finished']} of "
             f"{d['seeds_requested']}; {st.get('n_eval')} eval instructions. Gold win-rate against {baseline}, "
             f"judged by the {st['gold']}; D labelled with {pct(st['label_noise'], 0)} % label noise.",
             "", "| method | gold win-rate % (mean over seeds) | 95 % CI across seeds | per-seed bootstrap 95 % CIs "
             "| gold reward |", "|---|---|---|---|---|"]
    for label, row in d["methods"].items():
        wr, gold = row["win_rate"], row["gold_reward"]
        seeds = "; ".join(f"{pct(s['mean'])} [{pct(s['ci_low'])}, {pct(s['ci_high'])}]" for s in row["per_seed"])
        lines.append(f"| {label} | {pct(wr['mean'])} | [{pct(wr['ci_low'])}, {pct(wr['ci_high'])}] | {seeds} "
                     f"| {num(gold['mean'], '.3f')} |")
    lines += ["", "| reward model | on-policy accuracy % (mean) | 95 % CI across seeds |", "|---|---|---|"]
    for label, acc in d["rm_accuracy_on_policy"].items():
        lines.append(f"| {label} | {pct(acc['mean'])} | [{pct(acc['ci_low'])}, {pct(acc['ci_high'])}] |")
    lines += ["", "| RLP variant | recovered share (RLP − PPO) / (Oracle − PPO) | 95 % CI across seeds "
              "| seeds where Oracle ≠ PPO |", "|---|---|---|---|"]
    for label, r in d["recovered_share"].items():
        defined = sum(v is not None for v in r["per_seed"])  # undefined where the oracle's win-rate equals PPO's
        lines.append(f"| {label} | {num(r['mean'])} | [{num(r['ci_low'])}, {num(r['ci_high'])}] "
                     f"| {defined} of {len(r['per_seed'])} |")
    lines += ["", "| pair selection (Table 5) | gold agreement % (mean) | 95 % CI | pairs per seed |",
              "|---|---|---|---|"]
    for r in d["spg_label_accuracy"].values():
        lines.append(f"| {r['label']} | {pct(r['mean'])} | [{pct(r['ci_low'])}, {pct(r['ci_high'])}] "
                     f"| {r['pairs_per_seed']} |")
    runs = d.get("per_seed_run") or {}
    if runs:
        lines += ["", "| seed | wall time of its stages (min) | synthetic pairs SPG kept for RLP-SPG |", "|---|---|---|"]
        lines += [f"| {seed} | {r['total_minutes']} | {r['spg_pairs']} |" for seed, r in runs.items()]
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {t.get('target', name)} | {quality_measured(t, d)} | {verdict(t)} |" for name, t in d["targets"].items()]
    png = Path(d.get("png", ""))
    if png.name and (RESULTS / png.name).exists() and not d.get("smoke"):
        lines.append(f"\n![quality](benchmarks/results/{png.name})")
    return "\n".join(lines)


def quality_measured(target: dict[str, Any], d: dict[str, Any]) -> str:
    """What a quality target was judged on, with the figures that explain a miss."""
    if "refined" in target:  # on-policy RM accuracy: means, and in how many seeds each refined RM beat RM0
        rm0 = d["rm_accuracy_on_policy"]["RM0"]["per_seed"]
        parts = []
        for label, mean in target["refined"].items():
            mine = d["rm_accuracy_on_policy"][label]["per_seed"]
            wins = sum(mine[s] > rm0[s] for s in mine if s in rm0)
            parts.append(f"{label} {pct(mean)} % (above RM0 in {wins} of {len(mine)} seeds)")
        return f"RM0 {pct(target['RM0'])} %; " + ", ".join(parts)
    low = next((v for k, v in target.items() if k.endswith("_ci_low")), None)
    if low is None and "PPO_ci_high" not in target:
        return target.get("reason", "–")
    means = [m["win_rate"]["mean"] for m in d["methods"].values()]
    return (f"CI low {pct(low)} % vs PPO's CI high {pct(target.get('PPO_ci_high'))} %; every method's mean "
            f"win-rate lies in {pct(min(means))} – {pct(max(means))} %")


def gb(x: float | None) -> str:
    return num(x, ".1f")


def render_gpu(d: dict[str, Any]) -> str:
    """The GPU check (`benchmarks/gpu_check.sh`): tests on CUDA, trainer steps, TRL ratio, sampling."""
    s, v = d["settings"], d.get("versions", {})
    commit = (d.get("commit") or "unknown")[:10]
    dry = " **Dry run on the CPU: the numbers check the plumbing and mean nothing.**" if d.get("dry_run") else ""
    peak = (d.get("peak") or {}).get("flops_per_second")
    t = d.get("tests") or {}
    tests = (f"{t.get('tests', '?')} tests, {t.get('failures', '?')} failures, {t.get('errors', '?')} errors"
             if t.get("status") == "ok" else f"did not finish ({t.get('status', 'not run')})")
    lines = ["### GPU (`benchmarks/results/gpu.json`)\n",
             f"Measured {d.get('date', '?')} at commit `{commit}` on {d.get('gpu') or 'no GPU'} (torch "
             f"{v.get('torch')}, transformers {v.get('transformers')}); random weights, tokenizer: "
             f"{d.get('tokenizer')}; bf16 autocast with fp32 weights; batch {s['batch']}, {s['new_tokens']} new "
             f"tokens, {s['ppo_epochs']} PPO epochs; step 2 of 2 timed. MFU against the measured bf16 matmul peak "
             f"of {num(peak and peak / 1e12, '.3g')} TFLOP/s.{dry}\n",
             f"Device-marked tests on {t.get('device', 'cuda')}: {tests}.\n",
             "| run | step s | rollout s | score s | update s | peak GPU GB | MFU step % | MFU update % |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("ppo", "rloo"):
        for name, r in (d.get(kind) or {}).items():
            if r.get("status") != "ok" or not r.get("available", True):
                lines.append(f"| {kind} {name} | {r.get('reason') or r.get('status')} |  |  |  |  |  |  |")
                continue
            ph, m = r.get("phases") or {}, r.get("mfu") or {}
            lines.append(f"| {kind} {name} | {num(r.get('step_seconds'))} | {num(ph.get('time_rollout'))} | "
                         f"{num(ph.get('time_score'))} | {num(ph.get('time_update'))} | "
                         f"{gb(r.get('peak_gpu_memory_gb'))} | {pct(m.get('step'))} | {pct(m.get('update'))} |")
    for name, r in (d.get("trl") or {}).items():
        if r.get("step_seconds") is None:
            reason = r.get("reason") or (r.get("error") or r.get("status", ""))[-120:].replace("\n", " ")
            lines.append(f"| TRL 1.12 PPO {name} | not measured: {reason} |  |  |  |  |  |  |")
        else:
            lines.append(f"| TRL 1.12 PPO {name} | {num(r['step_seconds'])} |  |  |  | "
                         f"{gb(r.get('peak_gpu_memory_gb'))} |  |  |")
    ratio = (d.get("trl_ratio") or {}).get("trl_step_over_ours")
    lines.append("\nTRL's step time over ours (135M, full fine-tuning): "
                 + ("not measured." if ratio is None else f"{ratio:.2f}×."))
    lines += ["\n| sampling | batch | new tokens/s | seconds | peak GPU GB |", "|---|---|---|---|---|"]
    for arch, r in (d.get("sampling") or {}).items():
        for batch, b in (r.get("batches") or {}).items():
            lines.append(f"| {arch} | {batch} | {num(b['tokens_per_second'], '.0f')} | {num(b['seconds'])} | "
                         f"{gb(b.get('peak_gpu_memory_gb'))} |")
    return "\n".join(lines)


def render(speed: dict[str, Any] | None, quality: dict[str, Any] | None, gpu: dict[str, Any] | None = None) -> str:
    parts = [render_speed(speed) if speed else
             "### Speed\n\nNot yet measured: run `.venv/bin/python benchmarks/speed.py`.",
             render_quality(quality) if quality else
             "### Quality\n\nNot yet measured: run `.venv/bin/python benchmarks/quality.py`.",
             render_gpu(gpu) if gpu else
             "### GPU\n\nNot yet measured: no GPU has run `benchmarks/gpu_check.sh` yet (the CPU runs its "
             "`--dry-run`)."]
    return "\n\n".join(parts)


def replace_section(text: str, body: str) -> str:
    """``text`` with everything between the two markers replaced by ``body``."""
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"README has no '{START}' ... '{END}' section to rewrite")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", default=str(RESULTS / "speed.json"))
    parser.add_argument("--quality", default=str(RESULTS / "quality.json"))
    parser.add_argument("--gpu", default=str(RESULTS / "gpu.json"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args()
    readme = Path(args.readme)
    body = render(read(Path(args.speed)), read(Path(args.quality)), read(Path(args.gpu)))
    from rlp_align.core.io import write_text

    write_text(readme, replace_section(readme.read_text(), body))
    print(f"rewrote the benchmark section of {readme}")


if __name__ == "__main__":
    main()
