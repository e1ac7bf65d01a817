"""Put a finished `make demo` run into the README: wall time, the win-rate table and one plot.

    .venv/bin/python benchmarks/readme_demo.py runs/default

Figures come from the run's own files (stage manifests, evaluation.json, plots); nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- demo:start -->", "<!-- demo:end -->"


def demo_section(run_dir: Path, note: str = "") -> str:
    manifests = [json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")]
    done = [m for m in manifests if m["status"] == "done"]
    # Stages run one after another, so the pipeline's wall time is the sum of its stages' times (this also
    # holds for a run that was interrupted and resumed, where first-start to last-finish would not).
    wall = sum(m["seconds"] for m in done)
    evaluation = json.loads((run_dir / "14_evaluate" / "evaluation.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    plots = ROOT / "docs" / "demo"
    plots.mkdir(parents=True, exist_ok=True)
    for name in ("winrate.png", "overoptimisation.png"):
        shutil.copyfile(run_dir / "plots" / name, plots / name)
    lines = [
        "### What `make demo` produced here",
        "",
        f"The `default` preset on a 2-core CPU machine ({platform.machine()}, commit `{commit.strip()}`): "
        f"**{wall / 60:.1f} minutes** for the pipeline (sum of its {len(done)} stages), after a one-off ~1 min "
        "install and ~35 s model conversion. Win-rates are judged by the rule "
        f"annotator against the SFT policy's answers on {evaluation['n_eval']} held-out built-in instructions "
        "(ties ½, 95 % bootstrap CI). At this scale (96 noisy preference pairs, 8 PPO steps) the CIs are wide: "
        "read it as a working end-to-end run, not as evidence for or against RLP (see Benchmarks)." + (
            f" {note}" if note else ""),
        "",
        "| method | win-rate % vs SFT | 95 % CI | gold reward | mean chars |",
        "|---|---|---|---|---|",
    ]
    for label, row in evaluation["win_rates"].items():
        gold = "–" if row.get("gold_reward") is None else f"{row['gold_reward']:.3f}"
        lines.append(f"| {label} | {100 * row['mean']:.1f} | [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}] "
                     f"| {gold} | {row['mean_chars']:.0f} |")
    accuracy = evaluation.get("rm_accuracy_on_policy", {})
    if accuracy:
        lines += ["", "On-policy RM accuracy (gold-labelled pairs of PPO₁ samples): " + ", ".join(
            f"{k} {100 * (v['accuracy'] if isinstance(v, dict) else v):.0f} %" for k, v in accuracy.items()) + "."]
    lines += ["", "![proxy and gold reward along PPO](docs/demo/overoptimisation.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--note", default="", help="a sentence on how the run was measured (e.g. machine load)")
    args = parser.parse_args()
    readme = (ROOT / "README.md").read_text()
    section = demo_section(args.run_dir, args.note)
    readme = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{section}\n{END}", readme,
                    flags=re.S)
    (ROOT / "README.md").write_text(readme)
    print(section)


if __name__ == "__main__":
    main()
