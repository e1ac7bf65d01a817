"""SIGKILL at a random point of RM training, PPO and SPG, then the same command again: the resumed run
ends with the same parameters, metrics and outputs as an uninterrupted run with the same seed."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlp_align.data.records import Preference, SampleSet, user_prompt
from rlp_align.data.writers import write_preferences
from rlp_align.sample import write_sample_sets

WORDS = "the quick brown fox jumps over lazy dog water boils at sea level paris is capital of france".split()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlp_align.cli", *args]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "RLP_NUM_THREADS": "1"}


def _run(args: list[str]) -> None:
    result = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _kill_when(args: list[str], ready, timeout: float = 120, must_be_killed: bool = True) -> bool:
    """Start the command and SIGKILL it as soon as ``ready()`` holds; return whether it was killed before it
    finished (with ``must_be_killed``, finishing first fails the test)."""
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    finished = proc.poll() is not None
    proc.kill()
    proc.wait()
    assert not (must_be_killed and finished), "the command finished before the kill point; lengthen the run"
    return not finished


def _checkpoint_step(out: Path) -> int:
    state = out / "checkpoint" / "trainer_state.json"
    try:
        return json.loads(state.read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=1e-5)


def _metrics(out: Path, drop=("time",)) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop and not k.startswith("time")} for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault")
    rng = random.Random(0)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    prefs = [Preference(user_prompt(f"Q{i} {words(3)}?"), f"{words(3)} banana", words(4)) for i in range(48)]
    write_preferences(root / "prefs.jsonl", prefs)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Say {words(2)}"}) + "\n" for _ in range(16)))
    sets = [SampleSet(user_prompt(f"T{i}"), [words(4) for _ in range(6)]) for i in range(40)]
    write_sample_sets(str(root / "samples.jsonl"), sets)
    _run(["reward", "--model", "tiny", "--train_file", str(root / "prefs.jsonl"), "--output_dir", str(root / "rm"),
          "--optim.max_steps", "3", "--optim.batch_size", "8", "--optim.learning_rate", "1e-3"])
    return root


def test_reward_training_killed_at_a_random_step_resumes_identically(data):
    args = lambda out: ["reward", "--model", "tiny", "--train_file", str(data / "prefs.jsonl"), "--output_dir",  # noqa: E731
                        str(out), "--optim.max_steps", "12", "--optim.batch_size", "8", "--optim.learning_rate",
                        "1e-3", "--optim.save_every", "1"]
    kill_at = random.Random(os.getpid()).randint(2, 8)
    _kill_when(args(data / "rm_killed"), lambda: _checkpoint_step(data / "rm_killed") >= kill_at)
    assert not (data / "rm_killed" / "model").exists()  # nothing half-written looks finished
    _run(args(data / "rm_killed"))
    _run(args(data / "rm_straight"))
    _same_weights(data / "rm_killed", data / "rm_straight")
    killed, straight = _metrics(data / "rm_killed"), _metrics(data / "rm_straight")
    assert [m["step"] for m in killed] == list(range(1, 13))
    for a, b in zip(killed, straight):
        assert a == pytest.approx(b, abs=1e-5)


def test_ppo_killed_at_a_random_step_resumes_identically(data):
    args = lambda out: ["ppo", "--policy", "tiny", "--reward_model", str(data / "rm" / "model"), "--prompts_file",  # noqa: E731
                        str(data / "prompts.jsonl"), "--output_dir", str(out), "--steps", "8", "--rollout_batch_size",
                        "4", "--step_batch_size", "4", "--max_new_tokens", "8", "--optim.save_every", "1",
                        "--optim.learning_rate", "1e-4"]
    kill_at = random.Random(os.getpid() + 1).randint(1, 5)
    _kill_when(args(data / "ppo_killed"), lambda: _checkpoint_step(data / "ppo_killed") >= kill_at)
    _run(args(data / "ppo_killed"))
    _run(args(data / "ppo_straight"))
    _same_weights(data / "ppo_killed", data / "ppo_straight")
    killed, straight = _metrics(data / "ppo_killed"), _metrics(data / "ppo_straight")
    assert [m["step"] for m in killed] == list(range(1, 9))
    for a, b in zip(killed, straight):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-5) and a["kl"] == pytest.approx(b["kl"], abs=1e-5)


def test_spg_killed_midway_leaves_no_partial_output_and_reruns_identically(data):
    out = data / "spg_killed.jsonl"
    args = lambda o: ["spg", "--samples_file", str(data / "samples.jsonl"), "--reward_model",  # noqa: E731
                      str(data / "rm" / "model"), "--output_file", str(o), "--gamma", "0.0", "--seed", "3"]
    started = time.time()
    _run(args(data / "spg_straight.jsonl"))
    duration = time.time() - started
    # Kill at a random point of a run as long as the straight one (model loading, clustering or scoring). The
    # point is relative, not absolute: a faster machine finished a fixed 2-5 s run before the kill. Under load a
    # run can still end early; each retry kills twice as early.
    fraction = random.Random(os.getpid() + 2).uniform(0.4, 0.8)
    for attempt in range(4):
        started = time.time()
        delay = duration * fraction / 2**attempt
        if _kill_when(args(out), lambda s=started, d=delay: time.time() - s > d, must_be_killed=False):
            break
        out.unlink()
    else:
        pytest.fail(f"spg finished before every kill point (straight run {duration:.1f} s)")
    assert not out.exists()  # no partial file under the real name (temporaries are hidden .tmp folders)
    _run(args(out))
    assert out.read_text() == (data / "spg_straight.jsonl").read_text()
