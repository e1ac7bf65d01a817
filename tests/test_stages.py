"""The stage cache: skip finished stages, rerun what a changed knob affects, resume a killed stage."""

import json

from rlp_align.stages import StageCache, stage_status


def _pipeline(cache, calls, knob_a=1, knob_b=1):
    a = cache.run("a", {"knob": knob_a}, lambda d: calls.append("a") or {"value": knob_a})
    b = cache.run("b", {"knob": knob_b, "a": a["hash"]}, lambda d: calls.append("b") or {"value": a["value"] + 1})
    return b


def test_rerun_skips_and_changed_knob_reruns_downstream_only(tmp_path):
    calls = []
    _pipeline(StageCache(tmp_path, log=lambda _: None), calls)
    assert calls == ["a", "b"]
    cache = StageCache(tmp_path, log=lambda _: None)
    assert _pipeline(cache, calls)["value"] == 2 and calls == ["a", "b"] and cache.skipped == ["a", "b"]
    _pipeline(StageCache(tmp_path, log=lambda _: None), calls, knob_b=2)
    assert calls == ["a", "b", "b"]  # only b reran
    _pipeline(StageCache(tmp_path, log=lambda _: None), calls, knob_a=5)
    assert calls == ["a", "b", "b", "a", "b"]  # a changed: b depends on it
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["outputs"] == {"value": 6} and "torch" in manifest["versions"]


def test_killed_stage_reruns_in_place_and_keeps_its_files(tmp_path):
    cache = StageCache(tmp_path, log=lambda _: None)

    def crash(folder):
        (folder / "checkpoint").write_text("step 3")
        raise KeyboardInterrupt

    try:
        cache.run("train", {"k": 1}, crash)
    except KeyboardInterrupt:
        pass
    assert stage_status(tmp_path)[0]["status"] == "running"
    seen = []
    StageCache(tmp_path, log=lambda _: None).run("train", {"k": 1},
                                                 lambda d: seen.append((d / "checkpoint").read_text()) or {})
    assert seen == ["step 3"] and stage_status(tmp_path)[0]["status"] == "done"
    # a different key wipes the partial folder instead of resuming someone else's work
    StageCache(tmp_path, log=lambda _: None).run("train", {"k": 2}, lambda d: seen.append(
        (d / "checkpoint").exists()) or {})
    assert seen[-1] is False


def test_pairs_with_an_empty_sample_are_dropped_before_labelling(monkeypatch):
    """A policy that says EOS at once gives an empty answer; a preference row over it would be invalid."""
    from rlp_align import generation, stages_impl
    from rlp_align.data.records import Instruction, user_prompt

    def fake_generate(model, tokenizer, prompts, n, **kwargs):
        return generation.Generations(n=n, texts=["a", "b", "", "c", "d", "  ", "e", "f"])

    monkeypatch.setattr(generation, "generate", fake_generate)
    instructions = [Instruction(user_prompt(f"q{i}")) for i in range(4)]
    kept, pairs, dropped = stages_impl._two_samples("tiny", instructions, 1.0, 4, batch_size=8, seed=0)
    assert [x.text for x in kept] == ["q0", "q3"] and pairs == [["a", "b"], ["e", "f"]] and dropped == 2
