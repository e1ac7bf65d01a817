import json
import math

import pytest

from rlp_align.core.errors import UserError
from rlp_align.data.readers import read_preferences
from rlp_align.data.records import Instruction, user_prompt
from rlp_align.judge.annotate import AnnotateConfig, label_pairs, run_annotate
from rlp_align.judge.annotators import Annotator


class WordCount(Annotator):
    """A transparent score-based annotator for these tests: more words = better."""

    name = "wordcount"

    def score(self, instructions, responses):
        return [float(len(r.split())) for r in responses]


def pairs(n):
    insts = [Instruction(user_prompt(f"Q{i}?")) for i in range(n)]
    a = ["one two three" if i % 2 else "one" for i in range(n)]
    b = ["one two" for _ in range(n)]
    return insts, a, b


def test_flip_rate_matches_the_configured_noise_within_binomial_tolerance():
    n, noise = 4000, 0.25
    insts, a, b = pairs(n)
    prefs = label_pairs(WordCount(), insts, a, b, noise=noise, temperature=0.0, seed=1)
    flips = sum(p.meta["flipped"] for p in prefs)
    wrong = sum(len(p.chosen.split()) < len(p.rejected.split()) for p in prefs)
    assert flips == wrong  # at temperature 0 every disagreement with the annotator is a flip
    assert abs(flips / n - noise) < 4 * math.sqrt(noise * (1 - noise) / n)
    clean = label_pairs(WordCount(), insts, a, b, noise=0.0, temperature=0.0, seed=1)
    assert all(len(p.chosen.split()) > len(p.rejected.split()) for p in clean)


def test_bradley_terry_temperature_sets_the_choice_probability():
    n, t = 4000, 2.0
    insts, _, b = pairs(n)
    a = ["one two three"] * n  # s_a - s_b = 1
    prefs = label_pairs(WordCount(), insts, a, b, noise=0.0, temperature=t, seed=3)
    p = 1 / (1 + math.exp(-1 / t))
    rate = sum(x.chosen == a[0] for x in prefs) / n
    assert prefs[0].meta["p_a"] == pytest.approx(p)
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    ties = label_pairs(WordCount(), insts, b, b, noise=0.0, temperature=0.0, seed=3)
    assert all(x.meta["p_a"] == 0.5 for x in ties)


def test_labels_are_reproducible_and_bad_knobs_are_user_errors():
    insts, a, b = pairs(50)
    one = label_pairs(WordCount(), insts, a, b, noise=0.3, seed=7)
    two = label_pairs(WordCount(), insts, a, b, noise=0.3, seed=7)
    assert [p.chosen for p in one] == [p.chosen for p in two]
    with pytest.raises(UserError):
        label_pairs(WordCount(), insts, a, b, noise=1.5)
    with pytest.raises(UserError):
        label_pairs(WordCount(), insts, a, b, temperature=-1)


def test_run_annotate_on_sample_sets_and_answers_files(tmp_path):
    samples = tmp_path / "samples.jsonl"
    rows = [{"prompt": [{"role": "user", "content": "Name a primary colour."}],
             "responses": ["Red is a primary colour.", "Red is a primary colour. " * 5, ""],
             "meta": {"reference": "Red, blue and yellow are the primary colours."}},
            {"prompt": [{"role": "user", "content": "Say hi in lowercase."}],
             "responses": ["hi there!", "HELLO THERE!"], "meta": {"constraints": [{"kind": "lowercase"}]}},
            {"prompt": [{"role": "user", "content": "Only one sample."}], "responses": ["alone"], "meta": {}}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_annotate(AnnotateConfig(input=str(samples), output_dir=str(tmp_path / "a"), noise=0.0,
                                      pairs_per_prompt=3))
    assert out["n_prompts"] == 3 and out["n_prompts_skipped"] == 1 and out["n_pairs"] == 2
    prefs = read_preferences(out["paths"]["trl"])
    assert len(prefs) == 2 and all(p.meta["annotator"] == "rule" for p in prefs)  # the empty sample is dropped
    assert any(p.chosen == "Red is a primary colour." and p.rejected.count("Red") == 5 for p in prefs)
    assert any(p.chosen == "hi there!" and p.rejected == "HELLO THERE!" for p in prefs)
    farm = [json.loads(line) for line in open(out["paths"]["alpacafarm"])]
    for row, pref in zip(farm, prefs):
        better = row["output_1"] if row["preference"] == 1 else row["output_2"]
        assert better == pref.chosen and row["meta"]["noise"] == 0.0

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": "Q?"}], "response": r,
                                           "reference": "The answer is four.", "subset": "x",
                                           "constraints": [], "meta": {}}) + "\n"
                               for r in ["The answer is four.", "Cats are nice pets."]))
    out = run_annotate(AnnotateConfig(input=str(answers), output_dir=str(tmp_path / "b"), noise=0.0))
    (pref,) = read_preferences(out["paths"]["trl"])
    assert pref.chosen == "The answer is four." and pref.meta["subset"] == "x"
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["n_pairs"] == 1


def test_run_annotate_rejects_unknown_rows(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(UserError, match="expected sample sets"):
        run_annotate(AnnotateConfig(input=str(bad), output_dir=str(tmp_path / "o")))
