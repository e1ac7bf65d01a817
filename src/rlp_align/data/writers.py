"""Writers for preference files: TRL (``prompt/chosen/rejected``) and AlpacaFarm pairwise format."""

from __future__ import annotations

from pathlib import Path

from rlp_align.core.io import write_jsonl
from rlp_align.data.records import Preference


def to_trl_row(pref: Preference) -> dict:
    """TRL's standard format when the prompt is one user turn, its conversational format otherwise."""
    single_turn = len(pref.prompt) == 1 and pref.prompt[0]["role"] == "user"
    prompt = pref.prompt[0]["content"] if single_turn else pref.prompt
    return {"prompt": prompt, "chosen": pref.chosen, "rejected": pref.rejected, "meta": pref.meta}


def to_alpacafarm_row(pref: Preference, chosen_first: bool = True) -> dict:
    """AlpacaFarm's pairwise row; ``preference`` names the better output (1 or 2)."""
    a, b = (pref.chosen, pref.rejected) if chosen_first else (pref.rejected, pref.chosen)
    return {"instruction": pref.prompt[-1]["content"], "input": "", "output_1": a, "output_2": b,
            "preference": 1 if chosen_first else 2, "meta": pref.meta}


def write_preferences(path: str | Path, prefs: list[Preference], fmt: str = "trl") -> None:
    """Write preferences as JSONL (atomically). AlpacaFarm rows alternate which output is the better one."""
    if fmt == "trl":
        rows = [to_trl_row(p) for p in prefs]
    elif fmt == "alpacafarm":
        rows = [to_alpacafarm_row(p, chosen_first=i % 2 == 0) for i, p in enumerate(prefs)]
    else:
        raise ValueError(f"unknown preference format {fmt!r}: use 'trl' or 'alpacafarm'")
    write_jsonl(path, rows)
