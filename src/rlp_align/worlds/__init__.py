"""Worlds: where prompts, demonstrations and the gold judge come from. One module per world.

A world module exposes ``NAME``; ``pool(n, seed, **options) -> list[Instruction]`` (prompts, with what its
judge needs in ``constraints``/``meta``/``reference``); ``judge(cfg, **options) -> Annotator`` (the gold);
``cluster_key(instruction, response) -> str | None`` (the canonical answer SPG's ``key`` clustering backend
groups by, None where the world has none); and optionally ``build_model(folder, **options)`` for a world whose
policy is built from scratch. ``rlp run`` picks one with its ``world:`` section.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rlp_align.errors import UserError

WORLDS = {
    "instructions": "rlp_align.worlds.instructions",  # the built-in constrained-instruction world (default)
    "micro": "rlp_align.worlds.micro",  # reversed multi-digit addition, a policy trained from scratch
}


def load_world(name: str) -> ModuleType:
    """The world module called ``name``."""
    if name not in WORLDS:
        raise UserError(f"unknown world {name!r}: choose one of {', '.join(WORLDS)}")
    return importlib.import_module(WORLDS[name])
