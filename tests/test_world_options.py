"""Each world's declared options (`OPTIONS`) are exactly the keyword options of its functions (issue 30 part 3).

`world_settings` refuses any key a world does not declare, so an option added to ``pool``/``judge``/``build_model``
but not to its settings class could not be set; one declared but not taken would crash a stage. The arguments the
stages pass themselves (``n``, ``seed``, ``temperature``, the folder) are not options.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from rlp_align.core.errors import UserError
from rlp_align.worlds import SECTIONS, WORLDS, load_world, world_settings

FUNCTIONS = {"pool": "pool", "judge": "judge", "model": "build_model"}
PASSED_BY_STAGES = {"n", "seed", "temperature", "folder", "pool"}  # build_model reads the pool's digits


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_declared_options_are_the_functions_keyword_options(world):
    module = load_world(world)
    options = getattr(module, "OPTIONS", {})
    for section in SECTIONS:
        function = getattr(module, FUNCTIONS[section], None)
        if function is None or section not in options:
            continue
        params = {name for name, p in inspect.signature(function).parameters.items()
                  if p.kind is not p.VAR_KEYWORD} - PASSED_BY_STAGES
        declared = {f.name for f in dataclasses.fields(options[section])}
        assert declared == params, (world, section, declared ^ params)
        defaults = {f.name: f.default for f in dataclasses.fields(options[section])}
        assert defaults == {n: inspect.signature(function).parameters[n].default for n in params}, (world, section)


def test_micro_options_typed_and_ranged():
    assert world_settings("micro", {"pool": {"digits": 3, "demo_accuracy": "0.5"}}) == {
        "pool": {"digits": 3, "demo_accuracy": 0.5}, "judge": {}, "model": {}}
    with pytest.raises(UserError, match=r"world_options.pool.digits = 0 is out of range"):
        world_settings("micro", {"pool": {"digits": 0}})
    with pytest.raises(UserError, match=r"world_options.model.hidden_size = 6 must be a multiple of 4"):
        world_settings("micro", {"model": {"hidden_size": 6}})
    with pytest.raises(UserError, match=r"'world_options.pool.seed' for world 'micro'"):
        world_settings("micro", {"pool": {"seed": 1}})  # the stage passes the run's seed
    with pytest.raises(UserError, match=r"option of the 'micro' world"):
        world_settings("instructions", {"model": {"layers": 2}})
