"""Rewrite the README's benchmark tables from the result JSON files (figures are measured, never typed in).

    .venv/bin/python benchmarks/readme_tables.py            # reads benchmarks/results/{speed,quality-micro,quality-micro-majority,gpu}.json

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


def ci(p: dict[str, Any] | None, scale: float = 1.0, digits: int = 3, sign: str = "+") -> str:
    """``diff [low, high]`` of a `{diff, ci_low, ci_high}` entry (no interval with one seed); ``sign=""`` for a
    level (an accuracy) rather than a difference."""
    if not p:
        return "–"
    body = f"{scale * p['diff']:{sign}.{digits}f}"
    return body + ("" if p.get("ci_low") is None else
                   f" [{scale * p['ci_low']:{sign}.{digits}f}, {scale * p['ci_high']:{sign}.{digits}f}]")


def seeds_above(e: dict[str, Any] | None) -> str:
    return "–" if not e else f"{sum(s['ci_low'] > 0 for s in e['per_seed'])} of {len(e['per_seed'])}"


def recovered(shares: dict[str, Any] | None, whose: str) -> str:
    rec = (shares or {}).get("end")
    if not rec or rec["share"] is None:
        return f"not given: {whose} gain is not significant"
    return ci({"diff": rec["share"], "ci_low": rec["ci_low"], "ci_high": rec["ci_high"]}, digits=2)


def render_side_by_side(base: dict[str, Any], majority: dict[str, Any]) -> str:
    """The two variants' checks and gold gains over PPO₁ in one table (issue 28)."""
    lines = ["### Quality, both variants side by side\n",
             f"Base: `quality-{base['world']}.json`; majority: `quality-{majority['world']}-majority.json` "
             "(`world_options.pool.pad: majority`). Pooled over seeds.\n",
             "| check or method − PPO₁ (gold, end) | base | majority |", "|---|---|---|"]
    for key in dict.fromkeys([*base["checks"], *majority["checks"]]):
        cells = [verdict(d["checks"][key]) if key in d["checks"] else "–" for d in (base, majority)]
        lines.append(f"| {key} | {cells[0]} | {cells[1]} |")
    for label in dict.fromkeys([*base["vs_ppo"], *majority["vs_ppo"]]):
        cells = [ci(((d["vs_ppo"].get(label) or {}).get("end") or {}).get("pooled")) for d in (base, majority)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def render_quality(d: dict[str, Any]) -> str:
    """The study (`benchmarks/quality.py`): controls, every method against PPO₁, Table 5, majority vote."""
    variant = "" if d.get("variant", "base") == "base" else f"-{d['variant']}"
    name = f"quality-{d['world']}{variant}.json"
    sz = d["sizes"]
    lines = [f"### Quality, {d['world']}{variant} world (`benchmarks/results/{name}`)\n",
             provenance(d) + f" Preset `{d['preset']}`, seeds {d['seeds_finished']} of {d['seeds_requested']}; "
             f"{sz['n_eval']} eval prompts, {sz['n_onpolicy_pairs']} gold-labelled on-policy pairs, SPG pairs per "
             f"seed {sz['spg_pairs_per_seed']}; minutes per seed "
             f"{[round(x / 60, 1) for x in d['seconds_per_seed']]}.",
             "\nEvery comparison is paired on the same prompts (pairs). A seed's 95 % CI is a bootstrap over its "
             "prompts: it says whether *these runs* differ. The pooled 95 % CI is a t-interval over the per-seed "
             "means (S − 1 degrees of freedom): that one speaks to the method. Matched KL: both runs at the smaller "
             "of their two final KLs (a method that stops short of PPO₁'s is compared where it stopped).\n",
             "| check (issues 21, 28) | measured | target | result |", "|---|---|---|---|"]
    lines += [f"| {key} | {c['measured']} | {c['target']} | {verdict(c)} |" for key, c in d["checks"].items()]
    lines += ["", "| method − PPO₁ (gold) | at the end, pooled | seeds with CI > 0 | at matched KL, pooled "
              "| seeds reaching PPO₁'s final KL | recovered share of the oracle's gain (end) "
              "| share of gold PPO's gain (end) |", "|---|---|---|---|---|---|---|"]
    for label, e in d["vs_ppo"].items():
        share = "–" if label in ("Oracle", "Gold-PPO") else recovered(e.get("recovered_share"), "the oracle's")
        gold = "–" if label == "Gold-PPO" else recovered(e.get("recovered_share_gold_ppo"), "gold PPO's")
        lines.append(f"| {label} | {ci((e.get('end') or {}).get('pooled'))} | {seeds_above(e.get('end'))} "
                     f"| {ci((e.get('matched_kl') or {}).get('pooled'))} "
                     f"| {(e.get('matched_kl') or {}).get('reached', '–')} | {share} | {gold} |")
    if d.get("onpolicy_accuracy"):
        lines += ["", "| RM (on-policy pairs of PPO₁) | accuracy %, pooled | − RM₀, points, pooled |", "|---|---|---|"]
        for label, e in d["onpolicy_accuracy"].items():
            lines.append(f"| {label} | {ci(e['accuracy']['pooled'], 100, 1, sign='')} "
                         f"| {ci((e['vs_rm0'] or {}).get('pooled'), 100, 1)} |")
    lines += ["", "| pair selection (Table 5) | agreement with gold %, pooled | pairs per seed |", "|---|---|---|"]
    for r in d["label_accuracy"].values():
        pooled = r["pooled"]
        acc = "–" if not pooled else f"{100 * pooled['diff']:.1f}" + (
            "" if pooled["ci_low"] is None else f" [{100 * pooled['ci_low']:.1f}, {100 * pooled['ci_high']:.1f}]")
        lines.append(f"| {r['label']} | {acc} | {[s['pairs'] for s in r['per_seed']]} |")
    m = d["majority_vs_single"]
    if m.get("pooled"):
        p = m["pooled"]
        lines.append(f"\nSelf-consistency on SFT samples (n = {m['per_seed'][0]['n_samples']}): P(majority answer "
                     f"correct) {ci(p['p_majority'])}, P(one sample correct) {ci(p['p_single'])}; difference "
                     f"{ci(p['majority_minus_single'])}.")
    else:
        lines.append(f"\nSelf-consistency: not measured ({m.get('reason', '–')}).")
    bon = d["controls"]["overoptimisation"].get("best_of_n")
    if bon:
        picks = [r for r in bon["pooled"] if r["n"] in (1, 4, 16, 64)]
        exact = all(r.get("kl") is not None for r in picks)
        lines.append("\nBest-of-n from SFT against RM₀ (gold at " + (
            "plug-in KL on the empirical sample distribution; the analytic bound log n − (n − 1)/n in brackets): "
            if exact else "the analytic KL bound log n − (n − 1)/n): ") + ", ".join(
            f"n = {r['n']} (KL {r['kl']:.2f} [{r['kl_analytic']:.2f}]) {ci(r['gold'])}" if exact else
            f"n = {r['n']} (KL ≤ {r['kl_analytic']:.2f}) {ci(r['gold'])}" for r in picks) + ".")
    lines += [f"\n![{Path(png).stem}](benchmarks/results/{Path(png).name})" for png in d.get("png", [])
              if (RESULTS / Path(png).name).exists() and not d.get("smoke")]
    return "\n".join(lines)


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


def render(speed: dict[str, Any] | None, quality: dict[str, Any] | None, gpu: dict[str, Any] | None = None,
           majority: dict[str, Any] | None = None) -> str:
    """The section; ``majority``: the `--variant majority` study, shown beside ``quality`` and then in full."""
    parts = [render_speed(speed) if speed else
             "### Speed\n\nNot yet measured: run `.venv/bin/python benchmarks/speed.py`.",
             render_quality(quality) if quality else
             "### Quality\n\nNot yet measured: run `.venv/bin/python benchmarks/quality.py --world micro`.",
             *([render_side_by_side(quality, majority)] if quality and majority else []),
             render_quality(majority) if majority else
             "### Quality, majority variant\n\nNot yet measured: run `.venv/bin/python benchmarks/quality.py "
             "--world micro --variant majority`.",
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
    parser.add_argument("--quality", default=str(RESULTS / "quality-micro.json"))
    parser.add_argument("--majority", default=str(RESULTS / "quality-micro-majority.json"))
    parser.add_argument("--gpu", default=str(RESULTS / "gpu.json"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    args = parser.parse_args()
    readme = Path(args.readme)
    body = render(read(Path(args.speed)), read(Path(args.quality)), read(Path(args.gpu)), read(Path(args.majority)))
    from rlp_align.core.io import write_text

    write_text(readme, replace_section(readme.read_text(), body))
    print(f"rewrote the benchmark section of {readme}")


if __name__ == "__main__":
    main()
