"""FSDP 2 on two CPU ranks (gloo, torchrun, Accelerate's FSDP plugin): a reward model trained with sharded
parameters saves a ``model/`` that reloads to the same logits as one process trained on the same global batch.
See `fsdp_worker.py` for why the two-rank run switches Accelerate's state to FSDP itself."""

from __future__ import annotations

import json

import pytest
import torch
from test_multiprocess import ROOT, TORCHRUN, free_port, worker_env

from rlp_align.data.records import user_prompt
from rlp_align.data.templates import collate, encode_pair
from rlp_align.models import load_reward_model, load_tokenizer, resolve_model, reward_scores

pytestmark = pytest.mark.multiprocess

WORKER = ROOT / "tests" / "fsdp_worker.py"


def run(out, nproc: int) -> list[dict]:
    import subprocess
    import sys

    resolve_model("tiny")
    cmd = [sys.executable, str(WORKER), str(out)] if nproc == 1 else [
        str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port",
        str(free_port()), str(WORKER), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def scores(folder, new_head: bool = False) -> torch.Tensor:
    model, tokenizer = load_reward_model(folder, new_head=new_head).eval(), load_tokenizer(folder)
    prompts = [user_prompt(f"Question {i}: what is it?") for i in range(4)]
    seqs = [encode_pair(tokenizer, p, f"answer {i} banana" if i % 2 else f"answer {i}", 64).input_ids
            for i, p in enumerate(prompts)]
    ids, mask = collate(seqs, tokenizer.pad_token_id, side="right")
    with torch.no_grad():
        return reward_scores(model, ids, mask)[0]


def test_fsdp_two_ranks_save_a_model_equal_to_one_process(tmp_path):
    two = run(tmp_path / "two", 2)
    (one,) = run(tmp_path / "one", 1)
    assert [r["process_index"] for r in two] == [0, 1] and all(r["num_processes"] == 2 for r in two)
    assert all(r["distributed_type"] == "DistributedType.FSDP" for r in two)
    assert all(r["param_types"] == ["DTensor"] for r in two)  # really sharded: each rank holds half
    assert all(r["local_numel"] * 2 == pytest.approx(r["numel"], rel=0.01) for r in two)
    assert one["param_types"] == ["Parameter"] and one["local_numel"] == one["numel"]
    assert two[0]["loss"] == pytest.approx(one["loss"], abs=1e-5)

    s_two, s_one = scores(tmp_path / "two/run/model"), scores(tmp_path / "one/run/model")
    s_base = scores(resolve_model("tiny"), new_head=True)  # the untrained start
    assert (s_one - s_base).abs().max() > 1e-3  # training moved the scores (the head starts at zero) ...
    torch.testing.assert_close(s_two, s_one, atol=1e-4, rtol=0)  # ... and the sharded run moved them identically
