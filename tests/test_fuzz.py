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


# --------------------------------------------------------------------------------------------------
# Issue 30 (trust-b): pairs of models, world options and method lists
#
# Not only "no traceback": each generator knows the right answer. A pair of models is refused exactly when
# its tokenizers differ (or a folder's config does not match its weights), a text exactly when most of it is
# unknown to the tokenizer, and a pipeline config is accepted only when every world option has its declared
# type and range and no method is listed twice.


def model_variants(root: Path) -> dict[str, tuple[str, int, int]]:
    """name -> (folder, tokenizer id, (config layers - weight layers)): the tiny model, tiny models with other
    tokenizers, the micro model, and tiny copies whose config.json claims another layer count."""
    import json

    from rlp_align.models import build_tiny_model, resolve_model
    from rlp_align.worlds.micro import build_model

    tiny = resolve_model("tiny")
    variants = {"tiny": (str(tiny), 0, 0)}
    for vocab in (300, 400):
        build_tiny_model(root / f"tiny{vocab}", vocab_size=vocab)
        variants[f"tiny{vocab}"] = (str(root / f"tiny{vocab}"), vocab, 0)
    build_model(root / "micro", hidden_size=16, layers=1)
    variants["micro"] = (str(root / "micro"), 1, 0)
    for layers in (1, 3, 4):
        folder = root / f"tiny-{layers}-layers"
        shutil.copytree(tiny, folder)
        config = json.loads((folder / "config.json").read_text())
        config["num_hidden_layers"] = layers
        (folder / "config.json").write_text(json.dumps(config))
        variants[f"tiny-{layers}-layers"] = (str(folder), 0, layers - 2)
    return variants


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, tuple[str, int, int]]:
    return model_variants(tmp_path_factory.mktemp("variants"))


PAIR_EXAMPLES = 40
SHARE.update(model=0.05, unreadable=0.02, world=0.08)  # of the --long hour, taken from the CLI fuzzer's half
SHARE["cli"] -= 0.15


def test_model_pairs_fuzz(budget, variants):
    from rlp_align.models import load_policy, load_tokenizer, load_value_model
    from rlp_align.train.ppo_config import PPOConfig
    from rlp_align.train.ppo_models import check_tokenizers

    names = sorted(variants)

    @given(st.sampled_from(names), st.sampled_from(names), st.sampled_from(["reference", "value_model"]),
           st.sampled_from(["policy", "value"]))
    def pairs(policy, other, role, loader):
        (p_path, p_tok, _), (o_path, o_tok, o_layers) = variants[policy], variants[other]
        cfg = PPOConfig(policy=p_path, reward_model=p_path, **{role: o_path})
        try:
            check_tokenizers(cfg)
            assert p_tok == o_tok, f"{other} as {role} of {policy}: different tokenizers accepted"
        except UserError as e:
            one_paragraph(e)
            assert p_tok != o_tok, f"{other} as {role} of {policy}: refused, yet the tokenizers match: {e}"
        try:
            (load_policy if loader == "policy" else load_value_model)(o_path)
            assert o_layers == 0, f"{other}: a config claiming {o_layers:+d} layers loaded"
        except UserError as e:
            one_paragraph(e)
            assert o_layers != 0, f"{other}: refused though config and weights match: {e}"
        assert load_tokenizer(o_path) is not None

    run_budgeted(pairs, PAIR_EXAMPLES, budget)


def test_unreadable_text_fuzz(budget, variants):
    from rlp_align.data.templates import UNKNOWN_SHARE, check_readable
    from rlp_align.models import load_tokenizer

    tokenizers = {name: load_tokenizer(path) for name, (path, _, _) in variants.items() if "layers" not in name}

    @given(st.sampled_from(sorted(tokenizers)), st.text(alphabet=st.sampled_from(list("0123456789+=.aZé ?\n")),
                                                        max_size=40))
    def readable(name, text):
        tokenizer = tokenizers[name]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        unknown = sum(i == tokenizer.unk_token_id for i in ids)
        try:
            check_readable(tokenizer, text, "prompt")
            assert not text.strip() or unknown <= UNKNOWN_SHARE * len(ids), (name, text)
        except UserError as e:
            one_paragraph(e)
            assert unknown > UNKNOWN_SHARE * len(ids), (name, text, str(e))

    run_budgeted(readable, 300, budget)


def world_option_values() -> st.SearchStrategy:
    """Values for a world option: in and out of range, of every type, and YAML quirks as strings."""
    return st.one_of(st.integers(-5, 70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                     st.sampled_from(["correct", "majority", "nan", "1e-3", "0.5", "x", "", "[1]"]),
                     st.lists(st.integers(0, 3), max_size=2))


def test_world_options_fuzz(budget):
    import inspect

    from rlp_align.core.config import build_config
    from rlp_align.pipeline.pipeline_config import world_config
    from rlp_align.pipeline.run import LABELS, PipelineConfig, _validate
    from rlp_align.worlds import SECTIONS, WORLDS, _option_names, load_world

    names = {s: sorted({name for w in WORLDS for name in _option_names(w, s)}) for s in SECTIONS}

    @given(st.sampled_from(sorted(WORLDS)), st.data())
    def options(world, data):
        world_options = {}
        for section in data.draw(st.lists(st.sampled_from(SECTIONS), max_size=3, unique=True)):
            keys = st.one_of(st.sampled_from(names[section] or ["digits"]), st.sampled_from(["seed", "digitz", "n"]))
            world_options[section] = data.draw(st.dictionaries(keys, world_option_values(), max_size=3))
        methods = data.draw(st.lists(st.sampled_from([*LABELS, "magic"]), min_size=1, max_size=4))
        values = {"world": world, "model": world if world == "micro" else "tiny", "world_options": world_options,
                  "refine_methods": methods, "data": {"n_sft": 4}, "oracle_labels": 4}
        try:
            cfg = build_config(PipelineConfig, values)
            _validate(cfg)
        except UserError as e:
            one_paragraph(e)
            return
        assert len(set(methods)) == len(methods) and "magic" not in methods, methods
        module, checked = load_world(world), world_config(cfg)
        for section in SECTIONS:  # what the stages receive is typed, in range, and binds to the world's function
            given_options = getattr(checked, section)
            if given_options:
                settings = module.OPTIONS[section](**given_options)
                for key, value in given_options.items():
                    assert type(value) is type(getattr(settings, key)), (section, key, value)
        inspect.signature(module.pool).bind(4, seed=0, **checked.pool)
        inspect.signature(module.judge).bind(temperature=0.0, **checked.judge)
        if hasattr(module, "build_model"):
            inspect.signature(module.build_model).bind("folder", seed=0, **checked.model)
        if world == "micro" and checked.pool:  # the pool itself runs: a few problems are cheap
            assert len(module.pool(3, seed=0, **checked.pool)) == 3

    run_budgeted(options, 300, budget)
