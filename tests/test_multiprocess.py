"""Two real ranks (torchrun, gloo on CPU) through the Accelerate stack, against one process.

Ranks are started with ``torchrun --nproc_per_node 2``: on a CPU machine ``accelerate launch --cpu
--num_processes 2`` starts only one process (docs/scaling.md). Every rank of `tests/mp_worker.py` writes
``rank<i>.json`` with what its Accelerator saw, so each test first proves that two ranks really ran.

Reward model: the trainers take a *global* batch and give each rank its shard; DDP averages the ranks'
gradients, and with equal shards that average is exactly the gradient of the global batch. So 2 ranks and
1 process at the same global batch size and seed must end with the same parameters (up to float
summation order).

PPO cannot match a single process end to end, by design:
- sampling uses a generator seeded by (seed, step, rank) over the rank's own shard, so the responses a
  rank draws depend on the number of ranks;
- the minibatch shuffle is seeded by the rank too, and advantages are whitened over the rank's shard.
What *is* meaningful and tested here: (1) a full `train_ppo` run on two ranks whose policy replicas stay
bit-identical after every update while each rank rolls out different prompts; (2) given a fixed global
rollout (sampled identically everywhere, whitened globally, then sharded with equal token counts), one
PPO step on two ranks gives the same parameters as on one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlp_align.models import resolve_model

pytestmark = pytest.mark.multiprocess

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("mp_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    return {**os.environ, "RLP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def launch(mode: str, out: Path, nproc: int) -> list[dict]:
    """Run the worker on ``nproc`` ranks (torchrun) or as one plain process; return each rank's record."""
    resolve_model("tiny")  # build the tiny model once here, not racing in two ranks
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), mode, str(out)]
    else:
        cmd = [str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(WORKER), mode, str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert [r["process_index"] for r in records] == list(range(nproc))
    assert all(r["num_processes"] == nproc for r in records)
    return records


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_reward_model_two_ranks_equal_one_process(tmp_path):
    launch("reward", tmp_path / "two", nproc=2)
    launch("reward", tmp_path / "one", nproc=1)

    two = load_file(str(tmp_path / "two/run/model/model.safetensors"))
    one = load_file(str(tmp_path / "one/run/model/model.safetensors"))
    diff = max_abs_diff(one, two)
    # The reward head starts at zero: how far it moved shows the tolerance is far below the training signal.
    moved = one["score.weight"].abs().max().item()
    assert moved > 1e-3
    assert diff < 1e-4, f"2-rank and 1-process reward models differ by {diff}"

    s_two = json.loads((tmp_path / "two/run/summary.json").read_text())
    s_one = json.loads((tmp_path / "one/run/summary.json").read_text())
    assert s_two["train_pairs"] == s_one["train_pairs"] == 32
    assert s_two["train"]["loss"] == pytest.approx(s_one["train"]["loss"], abs=1e-5)


def test_uml_two_ranks_gather_the_view_batch_and_equal_one_process(tmp_path):
    """L_M over the whole view batch gathered across ranks (2 views per rank) trains as one process does."""
    launch("uml", tmp_path / "two", nproc=2)
    launch("uml", tmp_path / "one", nproc=1)
    for name in ("model/model.safetensors", "uml_head.safetensors"):
        two, one = load_file(str(tmp_path / "two/run" / name)), load_file(str(tmp_path / "one/run" / name))
        assert max_abs_diff(one, two) < 1e-3, name  # batch-standardised views (issue 22) amplify summation-order noise
    rows = {k: [json.loads(line) for line in (tmp_path / k / "run/metrics.jsonl").read_text().splitlines()]
            for k in ("one", "two")}
    losses = {k: [r["uml/loss"] for r in v if "uml/loss" in r] for k, v in rows.items()}
    assert len(losses["one"]) == 3 and all(x != 0.0 for x in losses["one"])
    assert losses["two"] == pytest.approx(losses["one"], abs=1e-5)


def test_ppo_two_ranks_keep_replicas_identical(tmp_path):
    ranks = launch("ppo-train", tmp_path, nproc=2)

    r0, r1 = ranks
    assert len(r0["checksums"]) == 2  # steps=2, one recorded update per step
    assert r0["checksums"] == r1["checksums"], "DDP replicas diverged"
    assert r0["checksums"][0] != r0["checksums"][1], "the policy did not change between steps"
    # Each rank rolled out its own half of the global batch of 4 prompts.
    assert all(len(q) == 2 for q in r0["queries"] + r1["queries"])
    assert r0["queries"][0] != r1["queries"][0]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["steps"] == 2
    assert (tmp_path / "run/model/model.safetensors").exists()


def test_ppo_step_on_fixed_rollout_equals_one_process(tmp_path):
    two_ranks = launch("ppo-update", tmp_path / "two", nproc=2)
    (one,) = launch("ppo-update", tmp_path / "one", nproc=1)

    # Same global rollout everywhere, and equal token counts per shard (the masked means then average exactly).
    assert two_ranks[0]["texts"] == two_ranks[1]["texts"] == one["texts"]
    assert two_ranks[0]["local_tokens"] == two_ranks[1]["local_tokens"] == one["local_tokens"] // 2

    after_two = load_file(str(tmp_path / "two/policy.safetensors"))
    after_one = load_file(str(tmp_path / "one/policy.safetensors"))
    before = load_file(str(resolve_model("tiny") / "model.safetensors"))
    moved = max((after_one[k] - before[k]).abs().max().item() for k in before)
    diff = max_abs_diff(after_one, after_two)
    assert moved > 1e-4
    assert diff < 1e-5, f"2-rank and 1-process PPO steps differ by {diff} (parameters moved by {moved})"
