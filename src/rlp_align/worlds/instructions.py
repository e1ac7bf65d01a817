"""The built-in constrained-instruction world (``world: instructions``), and Alpaca/AlpacaFarm instruction files.

As a world (see `rlp_align.worlds`): `pool` is the built-in generator below, `judge` the rule annotator (it
checks each instruction's constraints and penalises degenerate answers), and `cluster_key` is None: open-ended
answers have no canonical form, so SPG clusters them by meaning (embeddings or entailment).

`builtin_pool(n, seed)` needs no data: it crosses topics x task types x 1-3 machine-checkable constraints
(`rlp_align.data.constraints`), so the rule annotator can grade answers without any reference. It was written by
this project and is deterministic given ``seed``.

`load_instruction_pool(path, with_constraints, seed)` reads Alpaca-style files (``instruction``/``input``/
``output`` or ``reference_output``) with their reference answers, optionally appending one constraint per
instruction (from the kinds that make sense for any task).
"""

from __future__ import annotations

import random
from pathlib import Path

from rlp_align.core.errors import UserError
from rlp_align.data import constraints as C
from rlp_align.data.readers import read_instructions
from rlp_align.data.records import Instruction, user_prompt
from rlp_align.judge.annotators import Annotator, make_annotator

NAME = "instructions"

# topic -> words an answer about it naturally uses (candidates for include_words)
TOPICS: dict[str, tuple[str, ...]] = {
    "the water cycle": ("evaporation", "rain", "clouds"),
    "remote work": ("office", "schedule", "team"),
    "electric cars": ("battery", "charging", "range"),
    "the French Revolution": ("monarchy", "Paris", "citizens"),
    "photosynthesis": ("sunlight", "leaves", "oxygen"),
    "learning a new language": ("vocabulary", "practice", "grammar"),
    "composting at home": ("soil", "waste", "worms"),
    "black holes": ("gravity", "light", "stars"),
    "sleep hygiene": ("bedtime", "caffeine", "routine"),
    "budgeting for students": ("savings", "expenses", "income"),
    "the history of the printing press": ("Gutenberg", "books", "ink"),
    "volcanoes": ("lava", "eruption", "magma"),
    "honeybees": ("pollen", "hive", "flowers"),
    "machine learning": ("data", "model", "training"),
    "public libraries": ("books", "community", "reading"),
    "marathon training": ("running", "pace", "recovery"),
    "the Roman Empire": ("Rome", "emperor", "roads"),
    "coral reefs": ("ocean", "fish", "bleaching"),
    "urban gardening": ("balcony", "seeds", "harvest"),
    "the invention of the telephone": ("Bell", "calls", "wires"),
    "recycling plastic": ("bottles", "waste", "sorting"),
    "chess for beginners": ("board", "pieces", "checkmate"),
    "the human immune system": ("cells", "infection", "antibodies"),
    "solar power": ("panels", "energy", "sunlight"),
    "baking bread": ("flour", "yeast", "oven"),
    "climate change": ("emissions", "temperature", "carbon"),
    "the Moon landing": ("Apollo", "astronauts", "NASA"),
    "job interviews": ("questions", "preparation", "employer"),
    "meditation": ("breathing", "mind", "calm"),
    "the Internet": ("network", "websites", "data"),
    "dinosaurs": ("fossils", "extinction", "reptiles"),
    "time management": ("tasks", "priorities", "deadlines"),
    "the Great Barrier Reef": ("Australia", "coral", "tourism"),
    "vaccines": ("immunity", "disease", "doses"),
    "writing a novel": ("characters", "plot", "draft"),
    "bicycles in cities": ("lanes", "traffic", "commute"),
    "the Olympic Games": ("athletes", "medals", "sport"),
    "healthy breakfasts": ("oats", "fruit", "protein"),
    "earthquakes": ("plates", "faults", "shaking"),
    "video game design": ("players", "levels", "story"),
}

TASKS: tuple[tuple[str, str], ...] = (
    ("explain", "Explain {topic} to a curious ten-year-old."),
    ("essay", "Write a short essay about {topic}."),
    ("advantages", "What are the main advantages and drawbacks of {topic}?"),
    ("advice", "Give practical advice to a beginner who is interested in {topic}."),
    ("blog", "Write a blog post introducing {topic}."),
    ("email", "Write an email to a friend recommending that they learn about {topic}."),
    ("summary", "Summarise what everyone should know about {topic}."),
    ("misconceptions", "Describe common misconceptions about {topic}."),
    ("poem", "Write a short poem about {topic}."),
    ("faq", "Answer the question a newcomer would ask first about {topic}."),
    ("story", "Tell a short story in which {topic} plays a central role."),
    ("facts", "Share some interesting facts about {topic}."),
)

STARTS = ("In short,", "Here is my answer:", "Dear reader,", "Great question!")
ENDS = ("Thank you for reading.", "Is there anything else I can help with?", "That is all.")
AVOID = ("very", "really", "basically", "important", "actually", "thing")

# Each constraint kind takes one slot, so an instruction never asks for two lengths or two formats.
SLOTS: dict[str, tuple[str, ...]] = {
    "length": ("max_words", "min_words", "max_sentences"),
    "format": ("numbered_list", "num_paragraphs", "json"),
    "start": ("starts_with", "title"),
    "end": ("ends_with",),
    "words": ("include_words", "exclude_words"),
    "style": ("lowercase", "no_commas"),
}
# Pairs that would contradict each other (a JSON answer cannot have a title, a list is not counted in sentences).
INCOMPATIBLE = {
    frozenset(p)
    for p in [
        ("json", "starts_with"), ("json", "title"), ("json", "ends_with"), ("json", "max_sentences"),
        ("json", "min_words"), ("numbered_list", "max_sentences"),
        ("no_commas", "starts_with"), ("num_paragraphs", "max_sentences"),
    ]
}
# Kinds appended to arbitrary Alpaca instructions: they make sense whatever the task is.
GENERIC_KINDS = ("max_words", "exclude_words", "lowercase", "no_commas", "starts_with", "ends_with", "title")


def sample_constraint(kind: str, rng: random.Random, topic_words: tuple[str, ...] = ()) -> C.Constraint:
    """One constraint of ``kind`` with randomly drawn parameters."""
    if kind == "max_words":
        return {"kind": kind, "value": rng.choice([40, 60, 80, 120])}
    if kind == "min_words":
        return {"kind": kind, "value": rng.choice([60, 100, 150])}
    if kind == "max_sentences":
        return {"kind": kind, "value": rng.choice([2, 3, 4, 5])}
    if kind == "include_words":
        pool = list(topic_words) or ["example", "because"]
        return {"kind": kind, "words": rng.sample(pool, k=min(len(pool), rng.choice([1, 2])))}
    if kind == "exclude_words":
        return {"kind": kind, "words": rng.sample(AVOID, k=rng.choice([1, 2]))}
    if kind == "numbered_list":
        return {"kind": kind, "value": rng.choice([3, 4, 5])}
    if kind == "num_paragraphs":
        return {"kind": kind, "value": rng.choice([2, 3])}
    if kind == "title":
        return {"kind": kind, "form": rng.choice(["angle", "markdown"])}
    if kind == "starts_with":
        return {"kind": kind, "value": rng.choice(STARTS)}
    if kind == "ends_with":
        return {"kind": kind, "value": rng.choice(ENDS)}
    return C.validate({"kind": kind})


def sample_constraints(rng: random.Random, k: int, topic_words: tuple[str, ...] = ()) -> list[C.Constraint]:
    """``k`` mutually compatible constraints from distinct slots."""
    kinds: list[str] = []
    for slot in rng.sample(list(SLOTS), k=len(SLOTS)):
        options = [
            kind for kind in SLOTS[slot] if all(frozenset((kind, other)) not in INCOMPATIBLE for other in kinds)
        ]
        if options:
            kinds.append(rng.choice(options))
        if len(kinds) == k:
            break
    return [sample_constraint(kind, rng, topic_words) for kind in kinds]


def builtin_pool(n: int, seed: int = 0, max_constraints: int = 3) -> list[Instruction]:
    """``n`` constrained instructions over topics x task types; the same ``seed`` gives the same pool."""
    if n < 0 or max_constraints < 1:
        raise UserError("builtin_pool needs n >= 0 and max_constraints >= 1")
    rng = random.Random(seed)
    topics = list(TOPICS)
    pool = []
    for i in range(n):
        topic = topics[rng.randrange(len(topics))]
        task, template = TASKS[rng.randrange(len(TASKS))]
        cons = sample_constraints(rng, rng.randint(1, max_constraints), TOPICS[topic])
        text = template.format(topic=topic) + " " + C.render_all(cons)
        meta = {"source": "builtin", "seed": seed, "index": i, "topic": topic, "task": task}
        pool.append(Instruction(prompt=user_prompt(text), constraints=cons, meta=meta))
    return pool


def add_constraints(inst: Instruction, cons: list[C.Constraint]) -> Instruction:
    """A copy of ``inst`` whose last user message ends with the rendered constraints."""
    prompt = [dict(m) for m in inst.prompt]
    prompt[-1]["content"] = prompt[-1]["content"].rstrip() + "\n\n" + C.render_all(cons)
    meta = dict(inst.meta)
    if inst.reference is not None:
        # The reference was written without the constraint; say whether it still qualifies as gold.
        meta["reference_satisfies_constraints"] = all(C.check(c, inst.reference) for c in cons)
    return Instruction(prompt=prompt, reference=inst.reference, constraints=inst.constraints + cons, meta=meta)


def load_instruction_pool(
    path: str | Path, with_constraints: bool = False, seed: int = 0, limit: int | None = None,
    skip_invalid: bool = False,
) -> list[Instruction]:
    """Alpaca / AlpacaFarm instructions with reference answers; optionally one generic constraint each."""
    pool = read_instructions(path, skip_invalid=skip_invalid)
    if limit is not None:
        pool = pool[:limit]
    if not with_constraints:
        return pool
    rng = random.Random(seed)
    return [add_constraints(inst, [sample_constraint(rng.choice(GENERIC_KINDS), rng)]) for inst in pool]


# --- the world interface (rlp_align.worlds) ---------------------------------------------------------------


def pool(n: int, seed: int) -> list[Instruction]:
    """``n`` built-in constrained instructions (`builtin_pool`)."""
    return builtin_pool(n, seed=seed)


def judge(**options) -> Annotator:
    """The gold judge: the rule annotator (``options``: temperature, encoder)."""
    return make_annotator("rule", **options)


def cluster_key(instruction: Instruction, response: str) -> str | None:
    """Open-ended answers have no canonical form: SPG clusters them by meaning instead."""
    return None
