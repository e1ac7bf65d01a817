"""The `tiny` preset end to end (every report section), and a SIGKILL during PPO₁ that resumes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rlp_align.pipeline.report import SECTIONS

ROOT = Path(__file__).resolve().parents[1]


def _run(out_dir: Path, *extra: str, prefix: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLP_NUM_THREADS": "2"}
    command = prefix or ["-m", "rlp_align.cli"]
    return subprocess.Popen([sys.executable, *command, "run", "--config", str(ROOT / "configs/tiny.yaml"),
                             "--output_dir", str(out_dir), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _manifests(out_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out_dir.glob("*/manifest.json")}


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    """Run tiny, SIGKILL it once PPO₁ has written a checkpoint, rerun the same command to the end."""
    out_dir = tmp_path_factory.mktemp("tiny_run")
    # The run stops itself (SIGSTOP) in PPO₁'s second step, once its first checkpoint exists
    # (tests/kill_point.py): the same point however loaded the machine is. Frozen there it still holds the run
    # lock, so a second `rlp run` on the folder must stop at once and name it. Then it is SIGKILLed.
    with open(out_dir.parent / "first_run.log", "w") as log:  # a file, not a pipe nobody reads while it runs
        first = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kill_point.py")),
                                  f"stop@checkpoint:{out_dir / '04_ppo1'}:1", "--", "run", "--config",
                                  str(ROOT / "configs/tiny.yaml"), "--output_dir", str(out_dir)],
                                 env={**os.environ, "HF_HUB_OFFLINE": "1", "RLP_NUM_THREADS": "2"}, stdout=log,
                                 stderr=subprocess.STDOUT)
    _, state = os.waitpid(first.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(state), "run was not stopped in PPO₁:\n" + (out_dir.parent / "first_run.log").read_text()
    contender = _run(out_dir)
    contender_output, _ = contender.communicate(timeout=300)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = _manifests(out_dir)
    status = subprocess.run([sys.executable, "-m", "rlp_align.cli", "run", "--status", str(out_dir)],
                            capture_output=True, text=True)
    resumed = _run(out_dir)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    return out_dir, before, output, {"pid": first.pid, "code": contender.returncode, "output": contender_output,
                                     "status": status.stdout}


def test_a_second_run_on_the_folder_exits_2_naming_the_first(killed_then_resumed):
    out_dir, _, output, other = killed_then_resumed
    assert other["code"] == 2 and f"in use by another rlp process (PID {other['pid']})" in other["output"]
    assert "Traceback" not in other["output"]
    # the killed holder's lock is taken over by the rerun; the crash showed in --status meanwhile
    assert f"taking over a stale lock left by PID {other['pid']}" in output
    assert "04_ppo1" in other["status"] and "interrupted/crashed" in other["status"]
    assert [line.split()[1] for line in other["status"].splitlines() if "04_ppo1" in line] == ["crashed"]


def test_sigkill_during_ppo1_resumes_and_skips_finished_stages(killed_then_resumed):
    out_dir, before, output, _ = killed_then_resumed
    assert before["04_ppo1"]["status"] == "running"
    finished_before = [name for name, m in before.items() if m["status"] == "done"]
    assert {"00_instructions", "02_preferences", "03_rm0"} <= set(finished_before)
    after = _manifests(out_dir)
    for name in finished_before:  # untouched: same start time, reported as cached
        assert after[name]["started"] == before[name]["started"] and f"[cached] {name}" in output
    assert after["04_ppo1"]["status"] == "done"
    metrics = [json.loads(line) for line in (out_dir / "04_ppo1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]  # resumed from its checkpoint, no duplicated steps


def test_tiny_report_has_every_section_and_row(killed_then_resumed):
    out_dir, _, output, _ = killed_then_resumed
    report = (out_dir / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in report
    for row in ("| SFT |", "| PPO |", "| RLP-UML |", "| RLP-SPG |", "| Oracle |", "| Best-of-n |",
                "| Ensemble-WCO |", "| Ensemble-UWO |"):
        assert row in report
    html = (out_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<table>" in html
    evaluation = json.loads((out_dir / "14_evaluate" / "evaluation.json").read_text())
    assert evaluation["win_rates"]["SFT"]["mean"] == pytest.approx(0.5)  # SFT against itself
    assert set(evaluation["rm_accuracy_on_policy"]) >= {"RM0", "RLP-UML", "RLP-SPG", "Oracle"}
    assert "report:" in output


def test_rerun_is_all_cached_and_status_lists_stages(killed_then_resumed):
    out_dir, _, _, _ = killed_then_resumed
    # how often to checkpoint and whether to keep checkpoints change no result, so they rerun nothing
    proc = _run(out_dir, "--ppo.save_every", "3", "--ppo.keep_checkpoint", "true", "--reward.keep_checkpoint", "true")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "[done]" not in output
    status = subprocess.run([sys.executable, "-m", "rlp_align.cli", "run", "--status", str(out_dir)],
                            capture_output=True, text=True)
    assert "04_ppo1" in status.stdout and "done" in status.stdout and "report.md" in status.stdout
    assert status.stdout.splitlines()[0] == f"{out_dir}: finished" and "crashed" not in status.stdout
