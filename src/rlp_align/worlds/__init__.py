"""Task worlds: where the prompts come from, who judges the answers, and how answers group.

A world is one module that exposes:
- ``NAME``;
- ``pool(n, seed) -> list[Instruction]``: built-in prompts, carrying what the judge needs
  (``constraints``, ``meta``, ``reference``);
- ``judge(**options) -> Annotator``: the gold annotator (the truth the study is measured against);
- ``cluster_key(instruction, response) -> str | None``: the canonical answer SPG's ``key`` clustering backend
  groups by, or None where the world has none (then SPG clusters by meaning);
- optionally ``build_model(folder)``, for a world whose policy is built from scratch;
- optionally ``OPTIONS``: ``{"pool" | "judge" | "model": a *Config dataclass}``, the keyword options of those
  functions that ``world_options`` may set. They are typed and range-checked like every other section
  (`world_settings`, at start-up); a world without an entry takes no options there.

The table below is the whole registry: a config's ``world:`` names one of its keys.

May import: core, data, models, train, judge. The rlp and pipeline layers import worlds.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from types import ModuleType
from typing import Any

from rlp_align.core.config import build_config
from rlp_align.core.errors import UserError

WORLDS: dict[str, str] = {
    "instructions": "rlp_align.worlds.instructions",  # constrained instructions, the rule annotator as gold
    "micro": "rlp_align.worlds.micro",  # reversed addition with a filler exploit, a policy built from scratch
}


def load_world(name: str) -> ModuleType:
    """The world module that ``name`` names; a clear error for an unknown name."""
    if name not in WORLDS:
        raise UserError(f"unknown world {name!r}; the built-in worlds are: {', '.join(sorted(WORLDS))}")
    return importlib.import_module(WORLDS[name])


SECTIONS = ("pool", "judge", "model")


def _option_names(world: str, section: str) -> list[str]:
    cls = getattr(load_world(world), "OPTIONS", {}).get(section)
    return [f.name for f in dataclasses.fields(cls)] if cls else []


def world_settings(name: str, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``world_options`` checked against the world's declared `OPTIONS`: unknown keys (with did-you-mean, or the
    world they belong to), types and ranges, before any stage runs. Returns each section's given keys with
    their typed values (``"1e-3"`` becomes 0.001), so the stages receive what was checked."""
    module = load_world(name)
    out: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        given = options.get(section) or {}
        known = _option_names(name, section)
        unknown = [k for k in given if k not in known]
        if unknown:
            key = unknown[0]
            owners = [w for w in sorted(WORLDS) if w != name and key in _option_names(w, section)]
            close = difflib.get_close_matches(key, known, n=1)
            hint = (f" (did you mean 'world_options.{section}.{close[0]}'?)" if close else
                    f" (it is an option of the {owners[0]!r} world: set world: {owners[0]}, or remove it)" if owners
                    else "")
            listed = f"Known keys: {', '.join(known)}" if known else f"The {name!r} world takes no {section} options"
            raise UserError(f"unknown config key 'world_options.{section}.{key}' for world {name!r}{hint}. {listed}.")
        cls = module.OPTIONS[section] if known else None
        settings = build_config(cls, given, f"world_options.{section}") if cls else None
        out[section] = {k: getattr(settings, k) for k in given}
    return out
