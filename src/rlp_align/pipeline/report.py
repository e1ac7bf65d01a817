"""The run report: ``report.md`` plus a self-contained ``report.html`` with PNG plots.

Sections: the win-rate table with 95 % CIs (the shape of the paper's Table 2); RM reward and gold
reward along each PPO run (over-optimisation curves); KL and response length along PPO; on-policy RM
accuracy before and after refinement, with RLP-UML's information term (I_JSD, D_SKL); SPG statistics; cost
and time per stage; config and versions.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import yaml

from rlp_align.core.config import config_to_dict
from rlp_align.core.io import write_text
from rlp_align.pipeline.stages import StageCache, library_versions, stage_status
from rlp_align.train.training import read_metrics

SECTIONS = ["Win-rate", "Over-optimisation", "KL and response length", "On-policy reward-model accuracy",
            "SPG statistics", "Cost and time per stage", "Configuration and versions"]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def judge_name(cfg: Any) -> str:
    """Who scored the evaluation (`stages_impl._annotator`): the configured annotator in the instruction world;
    in any other world its own gold program, whatever ``annotator`` says."""
    if cfg.world == "instructions":
        return f"the `{cfg.annotator.kind}` annotator"
    from rlp_align.worlds import load_world

    judge = load_world(cfg.world).judge(temperature=cfg.annotator.temperature, **cfg.world_options.judge)
    return f"the `{cfg.world}` world's own judge (`{type(judge).__name__}`, its gold program)"


def _ppo_runs(run_dir: Path) -> dict[str, list[dict]]:
    runs = {}
    for folder in sorted(run_dir.glob("*ppo*")):
        rows = read_metrics(folder)
        if rows:
            runs[folder.name.split("_", 1)[1]] = rows
    return runs


def _plot(path: Path, runs: dict[str, list[dict]], panels: list[tuple[str, str]], title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    axes = [axes] if len(panels) == 1 else axes
    for ax, (key, label) in zip(axes, panels):
        for name, rows in runs.items():
            steps, values = _series(rows, key)
            if steps:
                ax.plot(steps, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("PPO step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _winrate_plot(path: Path, table: dict[str, dict]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not table:
        return False
    labels = list(table)
    means = [100 * table[k]["mean"] for k in labels]
    low = [100 * (table[k]["mean"] - table[k]["ci_low"]) for k in labels]
    high = [100 * (table[k]["ci_high"] - table[k]["mean"]) for k in labels]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 3.6))
    ax.bar(labels, means, yerr=[low, high], capsize=4, color="#4C72B0")
    ax.axhline(50, color="grey", linestyle="--", linewidth=1)
    ax.set_ylabel("gold win-rate (%)")
    ax.set_ylim(0, 100)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def paired_section(evaluation: dict[str, Any]) -> list[str]:
    """Markdown: per-prompt gold differences and head-to-head win-rates against PPO and SFT (paired 95 % CIs),
    refined RMs' on-policy accuracy against RM0's (paired CI, McNemar), and the recovered share, given only
    when the oracle's gold gain over PPO is significant (`rlp_align.judge.stats.recovered_share`)."""
    from rlp_align.judge.stats import recovered_share

    paired, vs_rm0 = evaluation.get("paired") or {}, evaluation.get("rm_accuracy_vs_rm0") or {}
    md: list[str] = []
    if paired:
        md += ["\n### Paired comparisons on the same prompts\n",
               "Gold difference per prompt (method − baseline) and head-to-head win-rate of the method's answer "
               "against the baseline's answer to the same prompt (ties ½), with 95 % paired bootstrap CIs over prompts. "
               "A CI that excludes 0 says that *these runs differ* on these prompts: it resamples prompts, not "
               "training randomness, so whether a method is better needs seeds (`benchmarks/quality.py`).\n",
               "| method | baseline | gold diff | 95 % CI | head-to-head % | 95 % CI |", "|---|---|---|---|---|---|"]
        for base, methods in paired.items():
            for label, c in methods.items():
                g, h = c["gold_diff"], c["head_to_head"]
                md.append(f"| {label} | {base} | {g['diff']:+.4f} | [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}] "
                          f"| {100 * h['win_rate']:.1f} | [{100 * h['ci_low']:.1f}, {100 * h['ci_high']:.1f}] |")
    vs_ppo = paired.get("PPO", {})
    if "Oracle" in vs_ppo:
        oracle = {0: vs_ppo["Oracle"]["per_prompt_diff"]}
        parts = []
        for label in (k for k in vs_ppo if k.startswith("RLP")):
            share = recovered_share({0: vs_ppo[label]["per_prompt_diff"]}, oracle)
            if share["share"] is None:
                parts = [f"not reported: {share['reason']}"]
                break
            parts.append(f"{label} {share['share']:.2f} [{share['ci_low']:.2f}, {share['ci_high']:.2f}]")
        if parts:
            md.append("\nShare of the oracle's gold gain over PPO that each RLP variant recovers, "
                      "(RLP − PPO) / (oracle − PPO): " + ", ".join(parts) + ".")
    for title, rows in (("On-policy RM accuracy against RM0 (same pairs)", vs_rm0),
                        ("Held-out D accuracy against RM0 (does the refined RM still fit D?)",
                         evaluation.get("refined_fit_d") or {})):
        if not rows:
            continue
        md += [f"\n### {title}\n",
               "| reward model | accuracy − RM0's | 95 % CI | only it right | only RM0 right | McNemar p |",
               "|---|---|---|---|---|---|"]
        md += [f"| {label} | {100 * r['diff']:+.1f} pts | [{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] "
               f"| {r['only_new']:g} | {r['only_ref']:g} | {r['mcnemar_p']:.3g} |" for label, r in rows.items()]
    return md


def uml_section(run_dir: Path) -> list[str]:
    """Markdown: RLP-UML's information term in each UML refinement's metrics (``uml/i_jsd``, ``uml/d_skl``).

    I_JSD lies in [-2 log 2, 0] for a useful critic; at its floor -2 log 2 the encoder has collapsed and L_M
    only penalises differences between the views (issue 22), so a run that ends there did not do RLP-UML.
    """
    floor = -2 * math.log(2)
    md: list[str] = []
    for folder in sorted(run_dir.glob("07_refine_*uml*")):
        rows = [r for r in read_metrics(folder) if isinstance(r.get("uml/i_jsd"), (int, float))]
        if not rows:
            continue
        first, last = rows[0], rows[-1]
        md.append(f"| {folder.name.split('_', 2)[2]} | {last['step']} | {first['uml/i_jsd']:+.3f} | "
                  f"{last['uml/i_jsd']:+.3f} | {last['uml/i_jsd'] - floor:+.3f} | {last.get('uml/d_skl', 0.0):.4f} | "
                  f"{last.get('uml/beta', 0.0):.3g} |")
    if not md:
        return []
    return ["\n### RLP-UML information term\n",
            f"The Jensen-Shannon estimate I_JSD of I(z1; z2) and the symmetric KL D_SKL between the two views' "
            f"encodings at the first and last logged step. An I_JSD still at its floor 2 log 2 = {-floor:.3f} "
            "below 0 means the encoder collapsed and L_M acted as a mere invariance penalty.\n",
            "| refinement | steps | I_JSD first | I_JSD last | above floor | D_SKL last | beta last |",
            "|---|---|---|---|---|---|---|", *md]


def write_report(cfg: Any, cache: StageCache, evaluation: dict[str, Any], costs: dict[str, dict]) -> Path:
    run_dir = cache.run_dir
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    runs = _ppo_runs(run_dir)
    table = evaluation.get("win_rates", {})
    made = {
        "winrate": _winrate_plot(plots / "winrate.png", table),
        "overopt": _plot(plots / "overoptimisation.png", runs,
                         [("reward", "proxy RM reward"), ("gold_reward", "gold reward")],
                         "Proxy vs gold reward along PPO"),
        "kl_len": _plot(plots / "kl_length.png", runs, [("kl", "KL(π‖π_SFT)"), ("response_length", "tokens")],
                        "KL and response length along PPO"),
    }
    md: list[str] = [f"# RLP run report: `{run_dir}`\n",
                     f"Model `{cfg.model}`, refinement {cfg.refine_methods}, {cfg.rounds} round(s), seed {cfg.seed}. "
                     f"Win-rates are judged by {judge_name(cfg)} against "
                     f"{'the reference answers' if evaluation.get('baseline') == 'reference' else 'the SFT answers'} "
                     f"on {evaluation.get('n_eval')} eval instructions; ties count ½; 95 % bootstrap CIs.\n"]
    md += ["## Win-rate\n", "| method | win-rate % | 95 % CI | gold reward | mean chars | cut % |",
           "|---|---|---|---|---|---|"]
    for label, row in table.items():
        gold = "–" if row.get("gold_reward") is None else f"{row['gold_reward']:.3f}"
        cut = "–" if row.get("truncated_share") is None else f"{100 * row['truncated_share']:.0f}"  # no EOS
        md.append(f"| {label} | {100 * row['mean']:.1f} | [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}] "
                  f"| {gold} | {row['mean_chars']:.0f} | {cut} |")
    md += paired_section(evaluation)
    md.append("\n![win-rate](plots/winrate.png)\n" if made["winrate"] else "")
    md += ["## Over-optimisation\n", "Proxy (RM) reward and gold reward of the PPO rollouts, per step. A proxy "
           "that keeps rising while gold falls is reward over-optimisation; RLP's refined RMs should track gold "
           "longer.\n", "![over-optimisation](plots/overoptimisation.png)\n" if made["overopt"] else "(no PPO metrics)\n"]
    md += ["## KL and response length\n", "![KL and length](plots/kl_length.png)\n" if made["kl_len"] else "(none)\n"]
    md += ["## On-policy reward-model accuracy\n",
           f"Accuracy on {evaluation.get('on_policy_pairs', 0)} gold-labelled pairs of PPO₁ samples (the "
           "distribution RLP refines the RM for); a tie in the RM's scores counts ½.\n",
           "| reward model | accuracy % | ties % |", "|---|---|---|"]
    for label, acc in evaluation.get("rm_accuracy_on_policy", {}).items():
        value = acc["accuracy"] if isinstance(acc, dict) else acc
        tie_rate = acc.get("tie_rate") if isinstance(acc, dict) else None
        md.append(f"| {label} | {100 * value:.1f} | {'–' if tie_rate is None else f'{100 * tie_rate:.1f}'} |")
    heldout = {}
    for name in ("03_rm0", *sorted(p.name for p in run_dir.glob("07_refine_*"))):
        manifest = cache.read_manifest(name)
        if manifest and manifest.get("outputs", {}).get("heldout_accuracy") is not None:
            heldout[name.split("_", 1)[1]] = manifest["outputs"]["heldout_accuracy"]
    if heldout:
        md.append("\nHeld-out accuracy on D (the SFT-distribution pairs; refinement should keep it): "
                  + ", ".join(f"{k} {100 * v:.1f} %" for k, v in heldout.items()) + ".")
    md += uml_section(run_dir)
    md += ["", "## SPG statistics\n"]
    spg_stats = sorted(run_dir.glob("06_spg*/synthetic.jsonl.stats.json"))
    if spg_stats:
        stats = json.loads(spg_stats[0].read_text())
        md += ["| statistic | value |", "|---|---|"]
        for key in ("instructions", "pairs", "acceptance_rate", "mean_confidence", "mean_chosen_chars",
                    "mean_rejected_chars", "dropped"):
            if key in stats:
                md.append(f"| {key} | {stats[key]} |")
        if "confidence_histogram" in stats:
            md.append(f"\nConfidence histogram: `{json.dumps(stats['confidence_histogram'])}`")
    else:
        md.append("SPG was not run.")
    md += ["", "## Cost and time per stage\n"]
    seconds_of = {row["stage"]: row["seconds"] or 0.0 for row in stage_status(run_dir)}
    md += ["Extra cost of each variant over the shared SFT → D → RM₀ stages: its own stages' wall time, the new "
           "annotator labels it used (RLP uses none: that is its point) and extra reward models trained.\n",
           "| variant | wall time (s) | new labels | extra RMs trained |", "|---|---|---|---|"]
    for label, cost in costs.items():
        seconds = sum(seconds_of.get(stage, 0.0) for stage in cost.get("stages", []))
        md.append(f"| {label} | {seconds:.0f} | {cost.get('new_labels', 0)} | "
                  f"{cost.get('reward_models_trained', 1 if label.startswith(('RLP', 'Oracle')) else 0)} |")
    md += ["", "| stage | status | seconds |", "|---|---|---|"]
    for row in stage_status(run_dir):
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        md.append(f"| {row['stage']} | {row['status']} | {seconds} |")
    md.append(f"\nTotal stage time: {sum(seconds_of.values()) / 60:.1f} min.")
    md += ["", "## Configuration and versions\n", "```yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
           "```", f"Versions: `{json.dumps(library_versions())}`"]
    text = "\n".join(md) + "\n"
    write_text(run_dir / "report.md", text)
    write_text(run_dir / "report.html", _html(text, plots))
    return run_dir / "report.md"


def _html(markdown: str, plots: Path) -> str:
    """A self-contained HTML page: tables rendered, images inlined as base64."""
    body, in_code, in_table = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" +
                        "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[line.index("(") + 1 : line.index(")")]
            data = base64.b64encode((plots.parent / name).read_bytes()).decode()
            body.append(f'<img src="data:image/png;base64,{data}" style="max-width:100%">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}pre{background:#f6f6f6;padding:1em;overflow:auto}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>RLP report</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</body></html>\n"
