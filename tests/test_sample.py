"""The policy-sample set (RLP step 4): format, determinism, and the JSONL round trip."""

import json

import pytest
import torch

from rlp_align.data.readers import read_sample_sets
from rlp_align.data.records import user_prompt
from rlp_align.errors import UserError
from rlp_align.models import load_policy, load_tokenizer
from rlp_align.sample import SampleConfig, run_sample, sample_policy


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread: tiny models gain nothing from two, and with other jobs on the two cores a
    second (spin-waiting) OpenMP thread makes each step ~10x slower. Restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setenv("RLP_NUM_THREADS", "1")  # make_accelerator reads it
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PROMPTS = [user_prompt("Name a colour."), user_prompt("Count to three.")]


def test_sample_sets_are_deterministic_given_the_seed():
    tokenizer, policy = load_tokenizer("tiny"), load_policy("tiny")
    kw = dict(max_new_tokens=8, batch_size=8)
    a = sample_policy(policy, tokenizer, PROMPTS, 4, seed=0, **kw)
    b = sample_policy(policy, tokenizer, PROMPTS, 4, seed=0, **kw)
    c = sample_policy(policy, tokenizer, PROMPTS, 4, seed=1, **kw)
    assert [s.responses for s in a] == [s.responses for s in b]
    assert [s.responses for s in a] != [s.responses for s in c]
    assert [s.prompt for s in a] == PROMPTS and all(len(s.responses) == 4 for s in a)
    assert a[0].meta["n"] == 4 and a[0].meta["temperature"] == 1.0 and a[0].meta["seed"] == 0
    with pytest.raises(UserError):
        sample_policy(policy, tokenizer, PROMPTS, 1)


def test_run_sample_writes_readable_rows(tmp_path):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "samples.jsonl"
    summary = run_sample(SampleConfig(policy="tiny", prompts_file=str(src), output_file=str(out), n=3,
                                      max_new_tokens=6, seed=5))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["prompts"] == 2 and summary["samples"] == 6
    assert set(rows[0]) == {"prompt", "responses", "meta"}
    assert rows[0]["meta"]["policy"] == "tiny" and rows[0]["meta"]["n"] == 3 and rows[0]["meta"]["seed"] == 5
    assert rows[0]["meta"]["temperature"] == 1.0
    sets = read_sample_sets(out)
    assert [s.prompt for s in sets] == PROMPTS and all(len(s.responses) == 3 for s in sets)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no leftovers
