"""Put a finished `make demo` run into the README: wall time, the win-rate table and one plot.

    .venv/bin/python benchmarks/readme_demo.py runs/micro-demo

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
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}
    done = {name: m for name, m in manifests.items() if m["status"] == "done"}
    # Stages run one after another, so the pipeline's wall time is the sum of its stages' times (this also
    # holds for a run that was interrupted and resumed, where first-start to last-finish would not).
    wall = sum(m["seconds"] for m in done.values())
    settings = json.loads((run_dir / "fingerprint.json").read_text())["settings"]
    evaluation = json.loads((run_dir / "14_evaluate" / "evaluation.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    date = subprocess.run(["git", "log", "-1", "--format=%cs"], capture_output=True, text=True, cwd=ROOT).stdout
    plots = ROOT / "docs" / "demo"
    plots.mkdir(parents=True, exist_ok=True)
    for name in ("winrate.png", "overoptimisation.png"):
        shutil.copyfile(run_dir / "plots" / name, plots / name)
    world = settings["world"]
    judge = (f"the `{settings['annotator.kind']}` annotator" if world == "instructions"
             else f"the `{world}` world's own judge (its gold program)")
    built = done.get("00_model")
    first = (f"; its stage `00_model` ({built['seconds']:.0f} s) builds the model, which a later run on the same "
             "machine copies from the cache" if built else "")
    pairs = (done.get("02_preferences") or {}).get("outputs", {}).get("pairs")
    lines = [
        "### What `make demo` produced here",
        "",
        f"The `{world}` world (model `{settings['model']}`) on a 2-core CPU machine ({platform.machine()}, commit "
        f"`{commit.strip()}`, {date.strip()}): **{wall / 60:.1f} minutes** for the pipeline (the sum of its "
        f"{len(done)} stages{first}). Win-rates are judged by {judge} against the SFT policy's answers on "
        f"{evaluation['n_eval']} held-out prompts (ties ½, 95 % bootstrap CI); {pairs} preference pairs in D, "
        f"{settings['ppo.steps']} PPO steps. One run and one seed: the study (`benchmarks/quality.py`, below) is "
        "what speaks for or against RLP." + (f" {note}" if note else ""),
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
