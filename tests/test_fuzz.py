"""A fuzzer that keeps looking for bad input (issue 23 §5).

Three generators, each with the invariants of a rejected input (a `UserError` or exit 2, one paragraph,
no traceback, nothing changed):
- `test_readers_fuzz`: Hypothesis data files (random bytes, encodings, truncation, gzip, parquet, key case,
  value types, nesting) through every reader and `inspect_file`, with and without skip_invalid;
- `test_config_fuzz`: every field of every command's config (nested sections included) set from the command
  line and from YAML files to values across types, ranges and YAML quirks;
- `test_cli_fuzz`: random mutations of good commands on the tiny model (`tests/fuzz_cli.py` lists them and
  the invariants).

By default each runs a fixed, seeded set of examples (54 s together, measured on the loaded 2-core machine). With
``pytest tests/test_fuzz.py --long`` (or ``RLP_FUZZ_LONG=1``) they run fresh random examples for an hour in
all (``RLP_FUZZ_SECONDS`` sets another total). A failure prints the example; each one found so far is a row
of tests/test_bad_input.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import tempfile
import time
import typing
from pathlib import Path

import pytest
from fuzz_cli import check_case, make_case, run_cli, write_inputs
from fuzz_values import data_files, option_values, yaml_documents
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlp_align import cli
from rlp_align.core.config import load_config, parse_overrides
from rlp_align.core.errors import UserError
from rlp_align.data import inspect_file, read_instructions, read_preferences, read_sample_sets

EXAMPLES = {"readers": 600, "config": 1000}  # the fixed set run by `make test`
CLI_CASES = int(os.environ.get("RLP_FUZZ_CASES", 300))
SHARE = {"readers": 0.25, "config": 0.25, "cli": 0.5}  # of the --long budget


@pytest.fixture
def budget(request) -> float | None:
    """Seconds of this test's share of the --long budget, or None for the fixed set."""
    if not (request.config.getoption("--long") or os.environ.get("RLP_FUZZ_LONG")):
        return None
    total = float(os.environ.get("RLP_FUZZ_SECONDS", 3600))
    return total * SHARE[request.node.originalname.split("_")[1]]


def run_budgeted(test, examples: int, seconds: float | None) -> None:
    """``test`` (a Hypothesis test) on its fixed derandomized examples, or on fresh seeds until ``seconds``."""
    common = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    if seconds is None:
        settings(max_examples=examples, derandomize=True, **common)(test)()
        return
    fresh = settings(max_examples=examples, **common)(test)  # not derandomized: each round draws a new seed
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        fresh()


def one_paragraph(e: UserError) -> None:
    text = str(e).strip()
    assert text and "\n\n" not in text and "Traceback" not in text, f"not one paragraph: {text[:500]!r}"


# --------------------------------------------------------------------------------------------------
# Readers


READERS = {"preferences": read_preferences, "instructions": read_instructions, "samples": read_sample_sets,
           "inspect": lambda path, skip_invalid: inspect_file(path)}


def test_readers_fuzz(budget):
    @given(data_files(), st.sampled_from(sorted(READERS)), st.booleans())
    def readers(file, reader, skip_invalid):
        name, data = file
        folder = Path(tempfile.mkdtemp(prefix="rlp-fuzz-"))
        try:
            path = folder / name
            path.write_bytes(data)
            try:
                READERS[reader](path, skip_invalid=skip_invalid)
            except UserError as e:
                one_paragraph(e)
            assert path.read_bytes() == data and [p.name for p in folder.iterdir()] == [name]
        finally:
            shutil.rmtree(folder)

    run_budgeted(readers, EXAMPLES["readers"], budget)


# --------------------------------------------------------------------------------------------------
# The config loader


def config_classes() -> dict[str, type]:
    classes = {}
    for name, (module, cls_name, _, _) in cli.COMMANDS.items():
        classes[name] = getattr(importlib.import_module(module), cls_name)
    return classes


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every settable key of a config class, nested sections as ``section.key``."""
    hints, keys = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += dotted_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def field_type(cls: type, key: str) -> typing.Any:
    *sections, name = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    return typing.get_type_hints(cls)[name]


def check_types(cfg: typing.Any, cls: type, key: str) -> None:
    """A loaded value has its field's type: no YAML boolean or null slipped into a number or a string."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    tp = field_type(cls, key)
    if tp is bool:
        assert isinstance(value, bool), (key, value)
    elif tp is int:
        assert isinstance(value, int) and not isinstance(value, bool), (key, value)
    elif tp is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    elif tp is str:
        assert isinstance(value, str), (key, value)


def test_config_fuzz(budget):
    classes = config_classes()
    keys = {name: dotted_keys(cls) for name, cls in classes.items()}

    @given(st.sampled_from(sorted(classes)), st.data())
    def config(command, data):
        cls = classes[command]
        if data.draw(st.booleans()):
            key = data.draw(st.sampled_from(keys[command]))
            value = data.draw(option_values())
            try:
                cfg = load_config(cls, None, parse_overrides([f"--{key}", value]))
            except UserError as e:
                one_paragraph(e)
                return
            check_types(cfg, cls, key)
        else:
            document = data.draw(yaml_documents(keys[command]))
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, encoding="utf-8") as f:
                f.write(document)
            try:
                load_config(cls, f.name, {})
            except UserError as e:
                one_paragraph(e)
            finally:
                os.unlink(f.name)

    run_budgeted(config, EXAMPLES["config"], budget)


# --------------------------------------------------------------------------------------------------
# The CLI


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished `rlp reward` run (the base command on clean inputs), which `finished` mutations copy."""
    tmp = tmp_path_factory.mktemp("finished")
    files = write_inputs(tmp / "in")
    argv = ["reward", "--model", str(files["model"]), "--train_file", str(files["data"]), "--output_dir",
            str(tmp / "out"), "--optim.max_steps", "1", "--optim.batch_size", "2", "--max_length", "64"]
    outcome = run_cli(argv, {})
    assert outcome.code == 0, outcome.err[-2000:] + (outcome.raised or "")
    return tmp / "out"


def test_cli_fuzz(budget, finished, tmp_path):
    first = int(os.environ.get("RLP_FUZZ_FIRST", 0))  # to explore past the fixed set without --long
    seeds = iter(range(first, first + CLI_CASES)) if budget is None else iter(range(int(time.time()), 2**62))
    end = time.monotonic() + (budget or 0)
    failures = []
    for case_seed in seeds:
        case = make_case(case_seed, tmp_path, finished)
        problems = check_case(case, tmp_path)
        if problems:
            failures.append(f"{case.describe()}\n    " + "\n    ".join(problems))
        shutil.rmtree(case.root, ignore_errors=True)
        shutil.rmtree(tmp_path / f"clean-{case_seed}", ignore_errors=True)
        if budget is not None and time.monotonic() > end:
            break
    assert not failures, "\n".join(failures)
