import pytest

from rlp_align.core.errors import UserError
from rlp_align.data import constraints as C

# (constraint, a response that satisfies it, one that violates it)
CASES = [
    ({"kind": "max_words", "value": 5}, "One two three four five.", "One two three four five six."),
    ({"kind": "min_words", "value": 4}, "It's a well-known fact.", "Too short here."),
    ({"kind": "max_sentences", "value": 2}, "First one. Second one!", "One. Two? Three."),
    ({"kind": "include_words", "words": ["rain", "clouds"]}, "Clouds bring rain.", "Clouds bring rainfall."),
    ({"kind": "exclude_words", "words": ["very"]}, "Everything is fine.", "It is Very fine."),
    ({"kind": "numbered_list", "value": 3}, "Intro:\n1. a\n2) b\n3. c", "1. a\n2. b"),
    ({"kind": "num_paragraphs", "value": 2}, "Para one.\n\nPara two.", "Para one.\nStill one."),
    ({"kind": "title", "form": "angle"}, "\n<<The Sea>>\nText.", "The Sea\n<<Late title>>"),
    ({"kind": "title", "form": "markdown"}, "# The Sea\nText.", "#NoSpace\nText."),
    ({"kind": "lowercase"}, "all lower, 123.", "not All lower."),
    ({"kind": "no_commas"}, "No commas here.", "Yes, a comma."),
    ({"kind": "json"}, '```json\n{"a": [1, 2]}\n```', '{"a": 1} trailing words'),
    ({"kind": "starts_with", "value": "In short,"}, "  in short, yes.", "Yes. In short, yes."),
    ({"kind": "ends_with", "value": "That is all."}, "Done.\nThat is all.  ", "That is all. More."),
]


@pytest.mark.parametrize("c, good, bad", CASES, ids=[f"{c['kind']}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_checker_separates_satisfying_from_violating(c, good, bad):
    assert C.check(c, good) is True
    assert C.check(c, bad) is False


def test_every_kind_has_a_case_and_renders_an_english_sentence():
    assert {c["kind"] for c, _, _ in CASES} == set(C.KINDS)
    for c, _, _ in CASES:
        text = C.render(c)
        assert text[0].isupper() and text.endswith(".")
    assert C.render({"kind": "max_words", "value": 50}) == "Answer in at most 50 words."
    assert C.render({"kind": "include_words", "words": ["a"]}) == "Include the word 'a' in your answer."


def test_counts_match_hand_counts():
    assert len(C.words("Don't stop—it's state-of-the-art, 2 cats.")) == 6
    assert len(C.sentences("Hi there. How are you?\nFine")) == 3
    assert C.satisfied_fraction([{"kind": "lowercase"}, {"kind": "no_commas"}], "a, b") == 0.5
    assert C.satisfied_fraction([], "anything") == 1.0


@pytest.mark.parametrize("bad", [
    "max_words", {"value": 3}, {"kind": "haiku"}, {"kind": "max_words"}, {"kind": "max_words", "value": 0},
    {"kind": "include_words", "words": []}, {"kind": "title", "form": "bold"},
])
def test_malformed_constraints_are_user_errors(bad):
    with pytest.raises(UserError):
        C.check(bad, "text")
