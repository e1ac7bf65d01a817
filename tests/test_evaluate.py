import copy
import json

import pytest
import torch
from helpers import tiny_reward_model

from rlp_align.core.errors import UserError
from rlp_align.data.records import Preference, user_prompt
from rlp_align.judge.annotators import AnnotatorConfig
from rlp_align.judge.evaluate import (
    RMAccuracyConfig,
    WinrateConfig,
    rm_accuracy,
    run_rm_accuracy,
    run_winrate,
    win_rate,
)


def test_win_rate_on_constructed_cases():
    assert win_rate([1.0] * 40, n_boot=500) == {"mean": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 40}
    balanced = win_rate([1.0, 0.0] * 100, n_boot=2000, seed=0)
    assert balanced["mean"] == 0.5 and balanced["ci_low"] < 0.5 < balanced["ci_high"]
    # 95 % half-width of a mean of 200 fair coins: 1.96 * 0.5 / sqrt(200) = 0.069
    assert balanced["ci_high"] - balanced["ci_low"] == pytest.approx(2 * 0.069, abs=0.02)
    assert win_rate([0.5] * 10)["mean"] == 0.5  # ties count one half
    assert win_rate([1.0, 1.0, 0.5, 0.0])["mean"] == pytest.approx(0.625)
    assert win_rate([1, 0, 1, 1, 0], seed=3) == win_rate([1, 0, 1, 1, 0], seed=3)
    for bad in ([], [1.5], [float("nan")]):
        with pytest.raises(UserError):
            win_rate(bad)


def write_answers(path, responses, refs=None, subsets=None):
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: name a colour."}], "response": r,
             "reference": refs[i] if refs else None, "subset": subsets[i] if subsets else None,
             "constraints": [], "meta": {}} for i, r in enumerate(responses)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_run_winrate_against_references_and_against_another_policy(tmp_path):
    refs = ["Blue is a colour.", "Green is a colour.", "Red is a colour.", "Yellow is a colour."]
    good = write_answers(tmp_path / "good.jsonl", refs, refs, ["a", "a", "b", "b"])
    bad = write_answers(tmp_path / "bad.jsonl", ["", "colour colour colour colour " * 5, "", "Blue is a"],
                        refs, ["a", "a", "b", "b"])
    vs_ref = run_winrate(WinrateConfig(answers=good, output_dir=str(tmp_path / "w1"), n_boot=200))
    assert vs_ref["win_rate"]["mean"] == 0.5  # identical to the reference: all ties
    vs_bad = run_winrate(WinrateConfig(answers=good, baseline=bad, output_dir=str(tmp_path / "w2"), n_boot=200))
    assert vs_bad["win_rate"]["mean"] == 1.0 and set(vs_bad["by_subset"]) == {"a", "b"}
    assert vs_bad["by_subset"]["a"]["n"] == 2
    judged = [json.loads(line) for line in open(vs_bad["paths"]["judgements"])]
    assert len(judged) == 4 and all(j["p_answer"] == 1.0 for j in judged)
    assert json.loads(open(tmp_path / "w2" / "winrate.json").read())["annotator"]["annotator"] == "rule"


def test_run_winrate_user_errors(tmp_path):
    noref = write_answers(tmp_path / "noref.jsonl", ["a", "b"])
    with pytest.raises(UserError, match="no reference"):
        run_winrate(WinrateConfig(answers=noref, output_dir=str(tmp_path / "o")))
    other = write_answers(tmp_path / "other.jsonl", ["a"])
    with pytest.raises(UserError, match="lacks answers"):
        run_winrate(WinrateConfig(answers=noref, baseline=other, output_dir=str(tmp_path / "o")))
    with pytest.raises(UserError, match="unknown annotator"):
        run_winrate(WinrateConfig(answers=other, baseline=other, annotator=AnnotatorConfig(kind="gpt")))


@pytest.fixture(scope="module")
def tiny_rm():
    """The tiny built-in model as a reward model, with a random (non-zero) head so scores differ."""
    from rlp_align.models import load_reward_model, load_tokenizer, reward_head

    model, tok = load_reward_model("tiny", new_head=True), load_tokenizer("tiny")
    torch.manual_seed(0)
    torch.nn.init.normal_(reward_head(model).weight, std=1.0)
    return model, tok


def test_rm_accuracy_counts_pairs_where_chosen_outscores_rejected(tiny_rm):
    from rlp_align.models import score_texts

    model, tok = tiny_rm
    texts = ["short", "a somewhat longer answer", "Paris is the capital.", "no idea", "42", "blue sky"]
    prefs = [Preference(user_prompt("q?"), c, r) for c in texts for r in texts if c != r]
    got = rm_accuracy(model, tok, prefs, batch_size=4, max_length=64)
    s = dict(zip(texts, score_texts(model, tok, [user_prompt("q?")] * len(texts), texts, 4, 64).tolist()))
    expected = sum(s[p.chosen] > s[p.rejected] for p in prefs) / len(prefs)
    assert got["n"] == 30 and got["accuracy"] == pytest.approx(expected)
    # Every ordered pair appears both ways: without ties exactly half are "right".
    assert got["ties"] == 0 and got["accuracy"] == pytest.approx(0.5)
    ranked = sorted(texts, key=s.get, reverse=True)
    aligned = [Preference(user_prompt("q?"), ranked[i], ranked[j]) for i in range(6) for j in range(i + 1, 6)]
    assert rm_accuracy(model, tok, aligned, 4, 64)["accuracy"] == 1.0


def test_an_untrained_zero_head_rm_scores_one_half_and_every_pair_is_a_tie(tiny_rm):
    """Issue 22 section 8: equal scores are a coin flip's 1/2, not a wrong answer (the old code said 0 %)."""
    from rlp_align.judge.stats import rm_accuracy_vs
    from rlp_align.models import reward_head

    model, tok = copy.deepcopy(tiny_rm[0]), tiny_rm[1]  # the fixture is shared: zero a copy's head
    torch.nn.init.zeros_(reward_head(model).weight)
    if reward_head(model).bias is not None:
        torch.nn.init.zeros_(reward_head(model).bias)
    prefs = [Preference(user_prompt("q?"), "a good answer", "bad"), Preference(user_prompt("2+2?"), "4", "5")]
    got = rm_accuracy(model, tok, prefs, batch_size=2, max_length=64, per_pair=True)
    assert got["accuracy"] == 0.5 and got["ties"] == 2 and got["tie_rate"] == 1.0 and got["correct"] == [0.5, 0.5]
    # against an RM that gets both right: one whole discordant pair (two halves), McNemar p = 1
    vs = rm_accuracy_vs([1.0, 1.0], got["correct"], n_boot=100)
    assert vs["diff"] == 0.5 and (vs["only_new"], vs["only_ref"]) == (1.0, 0.0) and vs["mcnemar_p"] == 1.0


def test_run_rm_accuracy_on_a_trl_file(tmp_path, tiny_rm):


    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": "q?", "chosen": c, "rejected": r}) + "\n"
                            for c, r in [("yes", "no"), ("maybe so", "never"), ("ok", "fine thanks")]))
    out = run_rm_accuracy(RMAccuracyConfig(rm_path=str(tiny_reward_model(tmp_path / "rm")), preferences=str(path),
                                           output_dir=str(tmp_path / "o")))
    assert out["n"] == 3 and 0.0 <= out["accuracy"] <= 1.0
    assert json.loads((tmp_path / "o" / "rm_accuracy.json").read_text())["n"] == 3


def test_rm_annotator_scores_with_the_reward_model(tiny_rm, tmp_path):
    from rlp_align.data.records import Instruction
    from rlp_align.judge.annotators import make_annotator
    from rlp_align.models import score_texts

    judge = make_annotator(AnnotatorConfig(kind="rm", rm_path=str(tiny_reward_model(tmp_path / "rm")), max_length=64))
    judge.model = tiny_rm[0]  # the random head, so that scores differ
    insts = [Instruction(user_prompt("q?"))] * 3
    texts = ["yes", "no thanks", "maybe later"]
    expected = score_texts(tiny_rm[0], tiny_rm[1], [i.prompt for i in insts], texts, 8, 64).tolist()
    assert judge.score(insts, texts) == pytest.approx(expected)
    probs = judge.compare(insts[:2], texts[:2], texts[1:])
    assert probs == [float(expected[0] > expected[1]), float(expected[1] > expected[2])]
    with pytest.raises(UserError, match="rm_path"):
        make_annotator(AnnotatorConfig(kind="rm"))
