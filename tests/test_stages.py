"""The stage cache: skip finished stages, rerun what a changed knob affects, resume a killed stage."""

import json

from rlp_align.pipeline.stages import StageCache, stage_status


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
    from rlp_align.data.records import Instruction, user_prompt
    from rlp_align.models import generation
    from rlp_align.pipeline import stages_impl

    def fake_generate(model, tokenizer, prompts, n, **kwargs):
        return generation.Generations(n=n, texts=["a", "b", "", "c", "d", "  ", "e", "f"],
                                      truncated=[False, True, False, False, True, False, True, False])

    monkeypatch.setattr(generation, "generate", fake_generate)
    instructions = [Instruction(user_prompt(f"q{i}")) for i in range(4)]
    kept, pairs, dropped, cut = stages_impl._two_samples("tiny", instructions, 1.0, 4, batch_size=8, seed=0)
    assert [x.text for x in kept] == ["q0", "q3"] and pairs == [["a", "b"], ["e", "f"]] and dropped == 2
    assert cut == [[False, True], [True, False]]  # each kept answer's truncated flag, for D's meta


def test_oracle_labels_skip_empty_samples_and_keep_cut_flags(tmp_path):
    from rlp_align.core.io import write_jsonl
    from rlp_align.data import read_preferences
    from rlp_align.judge.annotators import AnnotatorConfig
    from rlp_align.pipeline import stages_impl

    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [
        {"prompt": [{"role": "user", "content": "q1"}], "responses": ["", "A full answer.", "Another answer"],
         "meta": {"truncated": [False, False, True]}},
        {"prompt": [{"role": "user", "content": "q2"}], "responses": [" ", "only one"],
         "meta": {"truncated": [False, False]}},
    ])
    out = stages_impl.oracle_labels(AnnotatorConfig(), {"samples": str(samples)}, n_pairs=8, label_noise=0.25,
                                    seed=0, folder=tmp_path)
    assert out["pairs"] == 1 and out["empty_samples_removed"] == 2
    (pref,) = read_preferences(out["synthetic"])  # before the filter, "" was side a and the reader refused it
    assert {pref.chosen, pref.rejected} == {"A full answer.", "Another answer"}
    cut = {pref.chosen: pref.meta["truncated_chosen"], pref.rejected: pref.meta["truncated_rejected"]}
    assert cut == {"A full answer.": False, "Another answer": True}


def test_oracle_label_budget_takes_disjoint_pairs_round_by_round(tmp_path):
    from rlp_align.core.io import write_jsonl
    from rlp_align.data import read_preferences
    from rlp_align.judge.annotators import AnnotatorConfig
    from rlp_align.pipeline import stages_impl

    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [
        {"prompt": [{"role": "user", "content": "q1"}], "responses": ["a", "a", "b", "c", "d", "e"]},
        {"prompt": [{"role": "user", "content": "q2"}], "responses": ["x", "y", "x"]},
    ])
    args = dict(annotator=AnnotatorConfig(), samples={"samples": str(samples)}, label_noise=0.0, seed=0)
    small = stages_impl.oracle_labels(**args, n_pairs=2, folder=tmp_path / "s")
    big = stages_impl.oracle_labels(**args, n_pairs=100, folder=tmp_path / "b")
    assert small["pairs"] == 2 and big["pairs"] == 3  # q1 has 5 distinct answers: 2 disjoint pairs; q2 one
    pairs = [(p.prompt[-1]["content"], frozenset((p.chosen, p.rejected))) for p in read_preferences(big["synthetic"])]
    assert pairs == [("q1", frozenset("ab")), ("q2", frozenset("xy")), ("q1", frozenset("cd"))]
