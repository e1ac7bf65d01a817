"""Every numeric field of every config has a declared range (rlp_align.core.ranges), and the CLI refuses a value
outside it with exit 2 and a message naming the key, before any work.

The config classes are found by introspection (every ``*Config`` dataclass in the package), so a numeric
field added later without a range entry fails `test_every_numeric_field_declares_a_range`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import typing

import pytest

import rlp_align
from rlp_align import cli
from rlp_align.core.config import build_config
from rlp_align.core.errors import UserError
from rlp_align.core.ranges import RANGES, Range, check_ranges, numeric_kind, range_for


def config_classes() -> list[type]:
    found = {}
    for info in pkgutil.walk_packages(rlp_align.__path__, "rlp_align."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__name__.endswith("Config")
                    and obj.__module__.startswith("rlp_align")):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return sorted(found.values(), key=lambda c: c.__name__)


CLASSES = config_classes()


def numeric_fields(cls: type) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, numeric_kind(hints[f.name])) for f in dataclasses.fields(cls) if numeric_kind(hints[f.name])]


def cli_paths() -> list[tuple[list[str], str, type, str, type]]:
    """(command argv prefix, dotted key, config class, field, int|float) for every numeric field the CLI sets,
    nested sections (``rlp run --ppo.kl_coef``) included."""
    out = []

    def walk(prefix: list[str], cls: type, where: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{where}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(prefix, hints[f.name], f"{key}.")
            elif numeric_kind(hints[f.name]):
                out.append((prefix, key, cls, f.name, numeric_kind(hints[f.name])))

    for name, (module, cls_name, _, _) in cli.COMMANDS.items():
        walk(name.split(), getattr(importlib.import_module(module), cls_name), "")
    return out


def bad_values(rng: Range, kind: type) -> list[float]:
    """Values just outside the range (and NaN/inf for floats unless the range allows them)."""
    out = []
    if rng.lo != -math.inf:
        out.append(rng.lo if rng.lo_open else rng.lo - (1 if kind is int else 0.5))
    if rng.hi != math.inf:
        out.append(rng.hi if rng.hi_open else rng.hi + (1 if kind is int else 0.5))
    if kind is float and not rng.nonfinite:
        out += [math.nan, math.inf]
    return [kind(v) if kind is int else v for v in out]


def test_every_config_class_is_found():
    names = {c.__name__ for c in CLASSES}
    assert {"SFTConfig", "RewardConfig", "PPOConfig", "RefineConfig", "PipelineConfig", "DataConfig",
            "EnsembleConfig", "AnnotatorConfig", "SPGConfig", "SampleConfig"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_every_numeric_field_declares_a_range(cls):
    missing = [name for name, _ in numeric_fields(cls) if range_for(cls, name) is None]
    assert not missing, f"{cls.__name__}: add these fields to rlp_align.core.ranges.RANGES: {missing}"


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_defaults_are_in_range(cls):
    check_ranges(cls())  # the shipped defaults are valid values


def test_no_range_entry_is_stale():
    names = {name for cls in CLASSES for name, _ in numeric_fields(cls)}
    names |= {f"{cls.__name__}.{name}" for cls in CLASSES for name, _ in numeric_fields(cls)}
    assert not set(RANGES) - names, "ranges for fields no config has (renamed?)"


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_build_config_refuses_every_out_of_range_value(cls):
    """Also covers config classes no CLI command reaches (built from a dict by their caller)."""
    for name, kind in numeric_fields(cls):
        for value in bad_values(range_for(cls, name) or Range(), kind):
            with pytest.raises(UserError, match=rf"^sec\.{name} = .* must be "):
                build_config(cls, {name: value}, "sec")


CASES = [(prefix, key, value) for prefix, key, cls, name, kind in cli_paths()
         for value in bad_values(range_for(cls, name) or Range(), kind)]


def test_the_sweep_covers_every_bounded_field():
    assert len(CASES) > 300
    for _, key, cls, name, kind in cli_paths():  # only an int declared valid everywhere has nothing to try
        rng = range_for(cls, name)
        assert bad_values(rng, kind) or (kind is int and (rng.lo, rng.hi) == (-math.inf, math.inf)), key


def test_every_out_of_range_value_exits_2_naming_the_key(capsys):
    failures = []
    for prefix, key, value in CASES:
        code = cli.main([*prefix, f"--{key}", str(value)])
        err = capsys.readouterr().err
        if code != 2 or f"{key} = " not in err or "must be" not in err or "Traceback" in err:
            failures.append(f"rlp {' '.join(prefix)} --{key} {value}: exit {code}, {err.strip()[:200]!r}")
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("argv,message", [
    (["reward", "--optim.max_steps", "-3"], "optim.max_steps = -3 is out of range: optim.max_steps must be >= 1"),
    (["reward", "--optim.epochs", "0"], "optim.epochs = 0 is out of range"),
    (["ppo", "--steps", "0"], "steps = 0 is out of range: steps must be >= 1"),
    (["ppo", "--ppo_epochs", "0"], "ppo_epochs = 0"),
    (["ppo", "--gamma", "2"], "gamma = 2.0 is out of range: gamma must be in [0, 1]"),
    (["ppo", "--lam", "-1"], "lam = -1.0 is out of range: lam must be in [0, 1]"),
    (["ppo", "--kl_coef", "-1"], "kl_coef = -1.0 is out of range: kl_coef must be >= 0"),
    (["sample", "--top_p", "2"], "top_p = 2.0 is out of range: top_p must be in (0, 1]"),
    (["spg", "--similarity_threshold", "2"], "similarity_threshold must be in [-1, 1]"),
    (["refine", "--z_dim", "0"], "z_dim = 0"),
    (["refine", "--lam", "-0.5"], "lam = -0.5 is out of range: lam must be >= 0"),  # Eq. 1's weight
    (["reward", "--optim.learning_rate", "nan"], "optim.learning_rate = nan is not a finite number"),
    (["run", "--data.n_eval", "0"], "data.n_eval = 0 is out of range"),
    (["run", "--ppo.temperature", "0"], "ppo.temperature = 0.0 is out of range: ppo.temperature must be > 0"),
    (["eval", "rm-accuracy", "--batch_size", "0"], "batch_size = 0"),
])
def test_issue_cases(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_in_range_values_and_one_name_two_meanings():
    from rlp_align.rlp.refine import RefineConfig
    from rlp_align.train.ppo import PPOConfig

    assert build_config(RefineConfig, {"lam": 3.0}).lam == 3.0  # Eq. 1's weight may exceed 1
    with pytest.raises(UserError, match=r"lam = 3.0 is out of range"):
        build_config(PPOConfig, {"lam": 3.0})  # GAE's lambda may not
    cfg = build_config(PPOConfig, {"optim": {"max_grad_norm": -1.0}, "micro_batch_size": None})
    assert cfg.optim.max_grad_norm == -1.0 and cfg.micro_batch_size is None  # <= 0: no clipping; None: unset


def test_range_arithmetic():
    half_open = Range(0, 1, lo_open=True)
    assert [half_open.contains(x) for x in (0, 1e-9, 1, 1.5, math.nan)] == [False, True, True, False, False]
    assert half_open.describe() == "in (0, 1]"
    assert Range(0).describe() == ">= 0" and Range().describe() == "any finite number"
    assert Range(nonfinite=True).contains(math.inf) and not Range().contains(-math.inf)
