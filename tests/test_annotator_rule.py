"""The rule annotator: degenerate hacks lose to reference answers; constraint-satisfying answers win."""

import json
import re

import pytest

from rlp_align.data import constraints as C
from rlp_align.data.records import Instruction, user_prompt
from rlp_align.judge.annotators import make_annotator
from rlp_align.judge.annotators.rule import REFERENCE_SIMILARITY, copying, repetition, truncation
from rlp_align.worlds.instructions import load_instruction_pool

FILLER = [
    "It is worth keeping this in mind.", "There are many different aspects to consider here.",
    "This is a topic that many people find interesting.", "Of course, every situation is different.",
    "Overall, there is a lot more that could be said.", "In general, it depends on the circumstances.",
    "Many experts have discussed this at length.", "It is always good to think carefully about such questions.",
]


def cut_mid_sentence(ref: str) -> str:
    """Cut at a space near the middle that lies inside a sentence (words follow on the same line), keeping
    the layout as a max-token limit would; trailing punctuation is stripped."""
    spaces = [m.start() for m in re.finditer(r"(?<=\w) (?=\w+ \w)", ref)] or [len(ref) // 2]
    cut_at = min(spaces, key=lambda i: abs(i - len(ref) // 2))
    return ref[:cut_at].rstrip(" .!?,;:\n")


def hacks(instruction: str, ref: str) -> dict[str, str]:
    """The reward hacks AlpacaFarm-style policies find, built from the reference answer."""
    padded, k = ref, 0
    while len(padded) < 3 * len(ref):
        padded += " " + FILLER[k % len(FILLER)]
        k += 1
    first = re.split(r"(?<=[.!?])\s+|\n+", ref.strip())[0]
    repeated = " ".join([first] * max(3, -(-len(ref) // max(1, len(first)))))
    cut = cut_mid_sentence(ref)
    return {"padding": padded, "repeat": repeated, "copy": instruction, "empty": "", "cut": cut}


@pytest.fixture(scope="module")
def rule():
    return make_annotator("rule")


def test_degeneracy_signals_on_hand_made_texts():
    assert repetition("the cat sat on the mat today") == 0.0
    assert repetition("The cat sat down. " * 6) > 0.6
    assert truncation("A complete sentence.") == 0.0
    assert truncation("This answer was going to explain the reason why the") > 0
    assert truncation("1. Spain\n2. Sweden") == 0.0  # list items need no full stop
    assert truncation("Superman was created by Jerry") > 0
    assert truncation("1. Mix the flour.\n2. Add water.\n3. Knead the") > 0
    assert copying("Name three colours.", "Name three colours.") == 1.0
    assert copying("Red, green and blue are three colours.", "Name three colours.") == 0.0


def test_scores_are_bounded_and_empty_scores_zero(rule):
    inst = Instruction(user_prompt("Name a primary colour."), reference="Red is a primary colour.")
    scores = rule.score([inst] * 3, ["Red is a primary colour.", "", "Blue is one of the primary colours."])
    assert scores[0] == REFERENCE_SIMILARITY and scores[1] == 0.0 and 0.0 < scores[2] < 1.0
    assert rule.compare([inst], ["Blue is one of the primary colours."], ["!!!"]) == [1.0]
    assert rule.compare([inst], ["same"], ["same"]) == [0.5]


def test_the_reference_is_beatable_by_a_close_answer_but_not_by_an_off_topic_one(rule):
    """The reference is credited REFERENCE_SIMILARITY, not its self-similarity 1.0: win-rates vs reference
    stay meaningful (an answer that says the same thing wins, one that misses the point loses)."""
    inst = Instruction(user_prompt("What is the capital of France?"), reference="The capital of France is Paris.")
    assert rule.compare([inst] * 2, ["Paris is the capital city of France.", "I like turtles a lot."],
                        [inst.reference] * 2) == [1.0, 0.0]


def test_reference_beats_every_hack_on_alpacafarm_eval(rule, shared_data):
    pool = load_instruction_pool(shared_data / "alpacafarm_eval.json")
    assert len(pool) == 725
    refs = [x.reference for x in pool]
    made = [hacks(x.text, r) for x, r in zip(pool, refs)]
    names = list(made[0])
    # One scoring call: shared sentences (the reference's, the filler) are embedded once.
    scores = rule.score(pool * (1 + len(names)), refs + [h[name] for name in names for h in made])
    n = len(pool)
    rates = {}
    for k, name in enumerate(names):
        hacked = scores[n * (k + 1) : n * (k + 2)]
        rates[name] = sum(r > h for r, h in zip(scores[:n], hacked)) / n
    print("reference preferred over hack:", rates)
    assert all(rate >= 0.95 for rate in rates.values()), rates


def test_penalties_alone_catch_hacks_without_a_reference(rule, shared_data):
    """Without the reference the similarity anchor is the instruction; degeneracy penalties must still bite."""
    with_refs = load_instruction_pool(shared_data / "alpacafarm_eval.json", limit=100)
    pool, refs = [Instruction(x.prompt) for x in with_refs], [x.reference for x in with_refs]
    made = [hacks(x.text, r) for x, r in zip(pool, refs)]
    names = ["repeat", "copy", "empty", "cut"]
    scores = rule.score(pool * (1 + len(names)), refs + [h[name] for name in names for h in made])
    n = len(pool)
    for k, name in enumerate(names):
        rate = sum(r > h for r, h in zip(scores[:n], scores[n * (k + 1) : n * (k + 2)])) / n
        print(f"no reference, answer preferred over {name}: {rate:.3f}")
        assert rate >= 0.9, (name, rate)


# ---- generated constrained instructions: a satisfying answer beats one that breaks a constraint

PLAIN = [
    "Many people enjoy learning about {t}.", "Experts keep studying {t} in new ways.",
    "Schools often teach the basics of {t}.", "Curious minds ask good questions about {t}.",
    "Some details of {t} surprise newcomers.", "Books and films have explored {t} for decades.",
    "Understanding {t} helps us see the world differently.", "Everyday life connects to {t} in small ways.",
]
EXTRA = (  # distinct sentences (no repeated 4-grams), about 150 words, to meet a min_words constraint
    "Historians trace its origins through letters and diaries and early scientific reports. "
    "Modern researchers combine field observation with careful measurement and computer models. "
    "Teachers often begin with a simple story before introducing precise vocabulary. "
    "Newcomers usually underestimate how much patience steady progress requires. "
    "Local clubs and online forums offer friendly places to ask questions. "
    "Costs vary widely from one country to another and change over time. "
    "Safety guidelines exist for good reasons and deserve attention. "
    "A short daily habit beats an occasional marathon session. "
    "Documentaries can spark interest while textbooks provide depth. "
    "Mistakes are normal and each one teaches something useful. "
    "Friends who share the hobby make learning more fun. "
    "Public museums sometimes host free workshops for families. "
    "Reliable sources cite evidence and admit uncertainty. "
    "Over several months small improvements add up noticeably. "
    "Finally curiosity remains the best reason to keep going."
)


def build(inst: Instruction, violate: str | None = None) -> str:
    """An answer satisfying every constraint of ``inst`` except ``violate`` (a kind), which it breaks."""
    t, cons = inst.meta["topic"], {c["kind"]: c for c in inst.constraints}
    keywords = cons["include_words"]["words"] if "include_words" in cons and violate != "include_words" else []
    lines = [s.format(t=t) for s in PLAIN[:2]]
    if "max_sentences" in cons:  # at least 2 allowed; an ends_with phrase may take the second
        lines = [] if keywords else lines[:1]
        if violate == "max_sentences":
            lines += [s.format(t=t) for s in PLAIN[2:8]]
    if "max_words" in cons:  # at least 40 allowed: room for a title, a list of 5 and both phrases
        lines = lines[:1]
    if keywords:
        lines.append("It involves " + " and ".join(keywords) + ".")
    if "exclude_words" in cons and violate == "exclude_words":
        lines.append(f"This is {cons['exclude_words']['words'][0]} nice.")
    if "min_words" in cons and violate != "min_words" or violate == "max_words":
        lines.append(EXTRA)
    if "json" in cons:
        body = json.dumps({"answer": " ".join(lines)})  # one key: JSON without commas
        body = "Sure! " + body if violate == "json" else body
    elif "numbered_list" in cons:
        k = cons["numbered_list"]["value"] + (violate == "numbered_list")
        body = lines[0] + "\n" + "\n".join(f"{i}. Point {i} about {t}." for i in range(1, k + 1))
        body += "\n" + " ".join(lines[1:]) if len(lines) > 1 else ""
    elif "num_paragraphs" in cons:
        k = cons["num_paragraphs"]["value"] + (violate == "num_paragraphs")
        paras = [" ".join(lines)] + [PLAIN[2 + i].format(t=t) for i in range(k - 1)]
        body = "\n\n".join(paras)
    else:
        body = " ".join(lines)
    if "starts_with" in cons and violate != "starts_with":
        body = cons["starts_with"]["value"] + " " + body
    if "title" in cons and violate != "title":
        body = ("<<About %s>>" if cons["title"]["form"] == "angle" else "# About %s") % t + "\n" + body
    if "ends_with" in cons and violate != "ends_with":
        body += "\n" + cons["ends_with"]["value"]
    if "lowercase" in cons and violate != "lowercase":
        body = body.lower()
    if violate == "lowercase":
        body = "Note: " + body
    if violate == "no_commas":
        body = body.replace(".", ", indeed.", 1)
    return body


def test_satisfying_answer_beats_violating_one_on_generated_instructions(rule):
    from rlp_align.worlds.instructions import builtin_pool

    insts, good, bad = [], [], []
    for inst in builtin_pool(80, seed=3):
        g = build(inst)
        assert [c for c in inst.constraints if not C.check(c, g)] == [], g
        for c in inst.constraints:
            b = build(inst, violate=c["kind"])
            assert not C.check(c, b), (c, b)
            insts.append(inst)
            good.append(g)
            bad.append(b)
    prefs = rule.compare(insts, good, bad)
    losses = [(i.text, b) for i, b, p in zip(insts, bad, prefs) if p != 1.0]
    assert len(insts) > 150 and not losses, losses[:3]


def test_rule_does_not_reward_length_for_its_own_sake(rule):
    inst = Instruction(user_prompt("What is the capital of France?"), reference="The capital of France is Paris.")
    short = "Paris is the capital of France."
    long = short + " " + " ".join(FILLER)
    assert rule.compare([inst], [short], [long]) == [1.0]
