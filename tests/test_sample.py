"""The policy-sample set (RLP step 4): format, determinism, and the JSONL round trip."""

import json

import pytest

from rlp_align.core.errors import UserError
from rlp_align.data.readers import read_sample_sets
from rlp_align.data.records import user_prompt
from rlp_align.models import load_policy, load_tokenizer
from rlp_align.train.sample import SampleConfig, run_sample, sample_policy

pytestmark = pytest.mark.device  # also runs on RLP_TEST_DEVICE (benchmarks/gpu_check.sh)

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


def test_vllm_engine_plumbing_with_a_stand_in_module(tmp_path, monkeypatch):
    """vLLM needs a GPU; a stand-in module checks what we send it and how its outputs become a sample set."""
    import sys
    import types

    from rlp_align.data.readers import read_sample_sets
    from rlp_align.train.sample import SampleConfig, run_sample

    calls = {}

    class Completion:
        def __init__(self, text, reason):
            self.text, self.finish_reason = text, reason

    class LLM:
        def __init__(self, model, seed, trust_remote_code):
            calls["llm"] = (model, seed, trust_remote_code)

        def generate(self, prompts, params):
            calls["prompts"], calls["params"] = prompts, params
            return [types.SimpleNamespace(outputs=[Completion(f"{i}-{j}", "length" if j == 0 else "stop")
                                                   for j in range(params.n)]) for i in range(len(prompts))]

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Name a colour."}\n{"prompt": "Name a fruit."}\n')
    out = tmp_path / "s.jsonl"
    run_sample(SampleConfig(policy="tiny", prompts_file=str(prompts), output_file=str(out), n=3, engine="vllm"))
    sets = read_sample_sets(out)
    assert [s.responses for s in sets] == [["0-0", "0-1", "0-2"], ["1-0", "1-1", "1-2"]]
    assert sets[0].meta["truncated"] == [True, False, False] and sets[0].meta["engine"] == "vllm"
    assert calls["llm"][2] is False and calls["params"].n == 3 and calls["params"].temperature == 1.0
    # the token ids our own sampler reads (our chat template, not vLLM's; cut as `fit_prompt` cuts), recorded
    from rlp_align.data.records import user_prompt
    from rlp_align.data.templates import encode_prompt
    from rlp_align.models import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    ids = calls["prompts"][0]["prompt_token_ids"]
    assert ids == encode_prompt(tokenizer, user_prompt("Name a colour."), 512)
    assert "<|im_start|>assistant" in tokenizer.decode(ids) and sets[0].meta["max_prompt_length"] == 512
