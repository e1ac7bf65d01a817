"""Data builders shared by test modules and by `mp_worker.py` (which runs as a script from this folder)."""

from __future__ import annotations

import random

from rlp_align.data.records import Preference, user_prompt

WORDS = "the quick brown fox jumps over lazy dog water boils at sea level paris is capital of france".split()


def words(rng: random.Random, k: int) -> str:
    """``k`` random words from `WORDS`."""
    return " ".join(rng.choice(WORDS) for _ in range(k))


def marker_prefs(n: int, seed: int = 0) -> list[Preference]:
    """Learnable preference pairs: the chosen answer contains the word 'banana', the rejected one does not
    (lengths vary)."""
    rng = random.Random(seed)
    return [Preference(user_prompt(f"Question {i}: {words(rng, 4)}?"),
                       f"{words(rng, rng.randint(2, 5))} banana {words(rng, rng.randint(0, 3))}",
                       words(rng, rng.randint(3, 8))) for i in range(n)]


def tiny_reward_model(folder, seed: int = 0):
    """A saved tiny reward model (sequence classifier, num_labels=1) with a random head, so scores differ.
    The plain ``tiny`` model is a causal LM, which is refused wherever a trained RM is expected."""
    from pathlib import Path

    import torch

    from rlp_align.models import load_reward_model, load_tokenizer, reward_head, save_model

    folder = Path(folder)
    if not (folder / "config.json").exists():
        model = load_reward_model("tiny", new_head=True)
        torch.nn.init.normal_(reward_head(model).weight, std=1.0, generator=torch.Generator().manual_seed(seed))
        save_model(model, load_tokenizer("tiny"), folder)
    return folder
