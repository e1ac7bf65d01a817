"""Task worlds: where the prompts come from, who judges the answers, and how answers group.

A world is one module that exposes:
- ``NAME``;
- ``pool(n, seed) -> list[Instruction]``: built-in prompts, carrying what the judge needs
  (``constraints``, ``meta``, ``reference``);
- ``judge(**options) -> Annotator``: the gold annotator (the truth the study is measured against);
- ``cluster_key(instruction, response) -> str | None``: the canonical answer SPG's ``key`` clustering backend
  groups by, or None where the world has none (then SPG clusters by meaning);
- optionally ``build_model(folder)``, for a world whose policy is built from scratch.

The table below is the whole registry: a config's ``world:`` names one of its keys.

May import: core, data, models, train, judge. The rlp and pipeline layers import worlds.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rlp_align.core.errors import UserError

WORLDS: dict[str, str] = {
    "instructions": "rlp_align.worlds.instructions",
}


def load_world(name: str) -> ModuleType:
    """The world module that ``name`` names; a clear error for an unknown name."""
    if name not in WORLDS:
        raise UserError(f"unknown world {name!r}; the built-in worlds are: {', '.join(sorted(WORLDS))}")
    return importlib.import_module(WORLDS[name])
