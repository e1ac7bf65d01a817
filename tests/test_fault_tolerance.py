"""SIGKILL in the middle of RM training, PPO and SPG, then the same command again: the resumed run
ends with the same parameters, metrics and outputs as an uninterrupted run with the same seed."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kill_point import checkpoint_step
from safetensors.torch import load_file

from rlp_align.data.records import Preference, SampleSet, user_prompt
from rlp_align.data.writers import write_preferences
from rlp_align.train.sample import write_sample_sets

WORDS = "the quick brown fox jumps over lazy dog water boils at sea level paris is capital of france".split()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlp_align.cli", *args]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "RLP_NUM_THREADS": "1"}


def _run(args: list[str]) -> None:
    result = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _killed_at(point: str, args: list[str]) -> None:
    """Run the command, which SIGKILLs itself at ``point`` (see tests/kill_point.py: a point the command
    reaches, not a time, so the kill lands at the same place however loaded the machine is)."""
    killer = Path(__file__).with_name("kill_point.py")
    result = subprocess.run([sys.executable, str(killer), point, "--", *args], env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, f"not killed at {point}:\n{result.stdout}{result.stderr}"


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


def test_reward_training_killed_mid_step_resumes_identically(data):
    args = lambda out: ["reward", "--model", "tiny", "--train_file", str(data / "prefs.jsonl"), "--output_dir",  # noqa: E731
                        str(out), "--optim.max_steps", "12", "--optim.batch_size", "8", "--optim.learning_rate",
                        "1e-3", "--optim.save_every", "1"]
    _killed_at(f"checkpoint:{data / 'rm_killed'}:5", args(data / "rm_killed"))  # in step 6 of 12
    assert checkpoint_step(data / "rm_killed") == 5
    assert not (data / "rm_killed" / "model").exists()  # nothing half-written looks finished
    _run(args(data / "rm_killed"))
    _run(args(data / "rm_straight"))
    _same_weights(data / "rm_killed", data / "rm_straight")
    killed, straight = _metrics(data / "rm_killed"), _metrics(data / "rm_straight")
    assert [m["step"] for m in killed] == list(range(1, 13))
    for a, b in zip(killed, straight):
        assert a == pytest.approx(b, abs=1e-5)


def test_ppo_killed_mid_step_resumes_identically(data):
    args = lambda out: ["ppo", "--policy", "tiny", "--reward_model", str(data / "rm" / "model"), "--prompts_file",  # noqa: E731
                        str(data / "prompts.jsonl"), "--output_dir", str(out), "--steps", "8", "--rollout_batch_size",
                        "4", "--step_batch_size", "4", "--max_new_tokens", "8", "--optim.save_every", "1",
                        "--optim.learning_rate", "1e-4"]
    _killed_at(f"checkpoint:{data / 'ppo_killed'}:3", args(data / "ppo_killed"))  # in the update of step 4 of 8
    assert checkpoint_step(data / "ppo_killed") == 3
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
    _run(args(data / "spg_straight.jsonl"))
    # Killed after clustering, after RM scoring, and with the output complete but not yet renamed into place.
    for point in ("after:rlp_align.rlp.clustering:cluster_many", "after:rlp_align.models:score_texts",
                  f"rename:{out.name}"):
        _killed_at(point, args(out))
        assert not out.exists(), point  # no partial file under the real name (temporaries are hidden .tmp folders)
    _run(args(out))
    assert out.read_text() == (data / "spg_straight.jsonl").read_text()
