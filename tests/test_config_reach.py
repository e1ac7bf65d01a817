"""Every setting of a pipeline config reaches the stage that uses it, or is refused with a message.

`full_config` sets every field of every section of `PipelineConfig` to a non-default value, walking the
dataclasses (a field added later is covered without editing this test). The stage functions are replaced by
recorders, so the pipeline runs in a second; each recorded call holds exactly the arguments a stage received,
which `StageCache.stage` also hashes into the stage's key. One test runs the real tiny pipeline and reads the
refined RM's learning rate from the refine stage's manifest and summary.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from rlp_align.core import config as config_module
from rlp_align.core.config import build_config
from rlp_align.core.errors import UserError
from rlp_align.pipeline import run as pipeline
from rlp_align.pipeline import stages_impl
from rlp_align.pipeline.run import SET_BY_PIPELINE, PipelineConfig
from rlp_align.train.ppo import PPO_REFUSES
from rlp_align.train.training import LoraConfig, OptimConfig
from rlp_align.worlds import WORLDS

# Values a generic rule cannot pick (they must stay valid choices for the pipeline).
SPECIAL = {"refine_methods": ["uml", "spg", "uml+spg", "oracle"], "ensemble.aggregates": ["uwo"],
           "data.source": "files", "eval_baseline": "reference", "rounds": 2, "ensemble.k": 2}


def _other(tp: Any, default: Any, path: str) -> Any:
    """A valid value of type ``tp`` that differs from ``default``."""
    if path in SPECIAL:
        return SPECIAL[path]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is Literal:
        return next(a for a in typing.get_args(tp) if a != default)
    if len(args) == 1 and typing.get_origin(tp) is not list:  # X | None
        if typing.get_origin(args[0]) is dict:  # refine.optim / refine.lora: every key of the section, changed
            section = {"refine.optim": OptimConfig, "refine.lora": LoraConfig}[path]
            return dataclasses.asdict(_changed(section, path))
        return _other(args[0], default, path)
    if tp is bool:
        return not default
    step = 2 if path.startswith(("refine.optim", "refine.lora")) else 1  # unlike reward's, so inheriting shows
    if tp is int:
        return (default or 0) + 3 * step
    if tp is float:
        return round((default or 0.0) + 0.125 * step, 6)
    if tp is str and path == "world":  # a name from the worlds table: another world when there is one
        return next((w for w in sorted(WORLDS) if w != default), default)
    if tp is str:
        return f"x-{path}"
    if typing.get_origin(tp) is list:
        return [_other(typing.get_args(tp)[0], None, path)]
    raise AssertionError(f"{path}: no rule for {tp}")


def _changed(cls: type, where: str = "", skip: tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            owned = SET_BY_PIPELINE.get(path, ())
            refused = tuple(PPO_REFUSES) if path == "ppo.optim" else ()
            values[f.name] = _changed(hints[f.name], path, owned + refused)
        else:
            values[f.name] = _other(hints[f.name], default, path)
    return cls(**values)


def full_config(tmp_path: Path) -> PipelineConfig:
    cfg = _changed(PipelineConfig)
    cfg.output_dir = str(tmp_path / "run")
    return cfg


def leaves(obj: Any, where: str = "") -> dict[str, Any]:
    """``{"reward.optim.learning_rate": 0.125, ...}`` for a config; dict-typed fields are leaves."""
    out = {}
    for f in dataclasses.fields(obj):
        value, path = getattr(obj, f.name), f"{where}.{f.name}" if where else f.name
        out.update(leaves(value, path) if dataclasses.is_dataclass(value) else {path: value})
    return out


OUTPUTS = {  # what each recorded stage returns: just enough for the stages downstream
    "build_pools": lambda d: {n: str(d / f"{n}.jsonl") for n in ("sft", "preference", "unlabelled", "eval")},
    "train_sft": lambda d: {"model": str(d / "model")},
    "collect_preferences": lambda d: {"train": str(d / "t.jsonl"), "heldout": str(d / "h.jsonl"), "pairs": 4},
    "train_rm": lambda d: {"model": str(d / "model")},
    "train_ppo": lambda d: {"model": str(d / "model")},
    "sample_policy": lambda d: {"samples": str(d / "s.jsonl")},
    "synthesize": lambda d: {"synthetic": str(d / "y.jsonl"), "pairs": 3, "acceptance_rate": 0.5},
    "oracle_labels": lambda d: {"synthetic": str(d / "o.jsonl"), "pairs": 3},
    "refine_rm": lambda d: {"model": str(d / "model")},
    "best_of_n": lambda d: {"answers": str(d / "a.jsonl")},
    "answer_eval": lambda d: {"answers": str(d / "a.jsonl")},
    "on_policy_pairs": lambda d: {"pairs_file": str(d / "p.jsonl"), "pairs": 0},
    "evaluate": lambda d: {"win_rates": {}},
}


@pytest.fixture
def recorded(monkeypatch):
    """Replace every stage function by a recorder; returns the list of (stage function, arguments)."""
    calls: list[tuple[str, dict]] = []
    for name, output in OUTPUTS.items():
        def fake(*, folder: Path, _name=name, _output=output, **kwargs):
            calls.append((_name, kwargs))
            return _output(folder)
        monkeypatch.setattr(stages_impl, name, fake)
    monkeypatch.setattr("rlp_align.pipeline.report.write_report", lambda cfg, cache, evaluation, costs: "report.md")
    return calls


def _received(calls, section_type: type) -> list[Any]:
    return [v for _, kwargs in calls for v in kwargs.values() if isinstance(v, section_type)]


def test_every_field_reaches_a_stage(tmp_path, recorded):
    cfg = full_config(tmp_path)
    pipeline.run_pipeline(cfg)
    calls = recorded
    missing = []
    for path, value in leaves(cfg).items():
        section, _, rest = path.partition(".")
        if path == "output_dir":  # where the stage folders go
            assert all((Path(cfg.output_dir) / d).is_dir() for d in ("00_instructions", "14_evaluate"))
            continue
        if path == "rounds":
            assert sum(name == "refine_rm" for name, _ in calls) == cfg.rounds * len(cfg.refine_methods)
            continue
        if path == "refine_methods":
            assert {kw["method"] for name, kw in calls if name == "refine_rm"} == set(value)
            continue
        if path == "ensemble.k":
            assert sum(name == "train_rm" for name, _ in calls) == 1 + value
            continue
        if path == "ensemble.aggregates":
            assert [kw["aggregate"] for name, kw in calls if kw.get("aggregate")] == value
            continue
        if path == "ensemble.uwo_lambda":
            assert {kw["uwo_lambda"] for _, kw in calls if kw.get("aggregate")} == {value}
            continue
        if path == "policy_optimizer":  # reaches every policy-optimisation stage as its ppo.estimator
            estimators = {kw["ppo"].estimator for name, kw in calls if name == "train_ppo"}
            assert estimators == {"rloo"}, estimators
            continue
        if path in SET_BY_PIPELINE_PATHS or path.removeprefix("ppo.optim.") in PPO_REFUSES:
            continue  # refused: see test_settings_the_pipeline_owns_are_refused
        if not rest:  # a top-level value: some stage receives it under its own name
            names = {"model": "model", "world": "world", "seed": "seed", "label_noise": "label_noise",
                     "pair_temperature": "pair_temperature", "eval_baseline": "eval_baseline",
                     "oracle_labels": "n_pairs"}
            if not any(kw.get(names[path]) == value for _, kw in calls):
                missing.append(path)
            continue
        section_type = type(getattr(PipelineConfig(), section))
        received = _received(calls, section_type)
        if not any(_get(obj, rest) == value for obj in received):
            missing.append(path)
    assert not missing, f"settings that reach no stage: {missing}"


SET_BY_PIPELINE_PATHS = {f"{s}.{n}" for s, names in SET_BY_PIPELINE.items() for n in names}


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def test_borrowed_settings_arrive_as_named_arguments(tmp_path, recorded):
    cfg = full_config(tmp_path)
    pipeline.run_pipeline(cfg)
    by_name = {name: kw for name, kw in recorded}
    on_policy, prefs = by_name["on_policy_pairs"], by_name["collect_preferences"]
    assert (on_policy["temperature"], on_policy["max_new_tokens"]) == (cfg.sample.temperature,
                                                                      cfg.sample.max_new_tokens)
    assert on_policy["batch_size"] == prefs["batch_size"] == cfg.generate.batch_size
    assert prefs["max_new_tokens"] == cfg.generate.max_new_tokens
    assert prefs["preference_file"] == cfg.data.preference_file
    assert (by_name["evaluate"]["rm_batch_size"], by_name["evaluate"]["rm_max_length"]) == (
        cfg.reward.optim.eval_batch_size, cfg.reward.max_length)
    # the refine stage gets `refine` with its own optim (every key set here), not reward's
    refine = by_name["refine_rm"]["refine"]
    assert refine.optim == cfg.refine.optim and refine.optim["learning_rate"] != cfg.reward.optim.learning_rate


def test_each_stage_key_is_exactly_its_arguments(tmp_path, recorded):
    cfg = full_config(tmp_path)
    pipeline.run_pipeline(cfg)
    manifests = [json.loads(p.read_text()) for p in sorted(Path(cfg.output_dir).glob("*/manifest.json"))]
    assert len(manifests) == len(recorded)
    received = sorted(sorted(kw) for _, kw in recorded)
    assert received == sorted(sorted(m["inputs"]) for m in manifests)
    refine = next(m for m in manifests if m["stage"].startswith("07_refine_uml_r1"))
    assert refine["inputs"]["refine"]["optim"]["learning_rate"] == cfg.refine.optim["learning_rate"]
    assert "save_every" not in refine["inputs"]["refine"]["optim"]  # NOT_IN_STAGE_KEYS, at any depth


def test_run_knobs_do_not_change_stage_keys(tmp_path, recorded):
    cfg = full_config(tmp_path)
    pipeline.run_pipeline(cfg)
    first = len(recorded)
    cfg.ppo.optim.save_every, cfg.reward.optim.keep_checkpoint = 1, not cfg.reward.optim.keep_checkpoint
    cfg.sft.overwrite = not cfg.sft.overwrite
    cfg.refine.optim = {**cfg.refine.optim, "save_every": 99}
    pipeline.run_pipeline(cfg)
    assert len(recorded) == first  # every stage was cached
    cfg.refine.optim = {**cfg.refine.optim, "learning_rate": 0.5}
    pipeline.run_pipeline(cfg)
    assert {name for name, _ in recorded[first:]} >= {"refine_rm", "train_ppo"}  # refine and what follows
    assert "train_rm" not in {name for name, _ in recorded[first:]}


@pytest.mark.parametrize("path", sorted(SET_BY_PIPELINE_PATHS) + [f"ppo.optim.{k}" for k in PPO_REFUSES])
def test_settings_the_pipeline_owns_are_refused(path, tmp_path, recorded):
    cfg = PipelineConfig(model="tiny", output_dir=str(tmp_path / "run"))
    section, name = path.rsplit(".", 1)
    obj = _get(cfg, section)
    field_type = typing.get_type_hints(type(obj))[name]
    setattr(obj, name, _other(field_type, getattr(obj, name), path))
    with pytest.raises(UserError, match=rf"{name}"):
        pipeline.run_pipeline(cfg)
    assert not recorded  # refused before any stage ran


def test_a_misspelt_refine_optim_key_is_refused_before_any_stage(tmp_path, recorded):
    cfg = build_config(PipelineConfig, {"model": "tiny", "output_dir": str(tmp_path / "run"),
                                        "refine": {"optim": {"learnig_rate": 1.0}}})
    with pytest.raises(UserError, match="refine.optim.learnig_rate"):
        pipeline.run_pipeline(cfg)
    assert not recorded


# --------------------------------------------------------------------------------------------------
# The real tiny pipeline: `rlp run --refine.optim.learning_rate X` (and the old flat spelling)

SMALL = ["--refine_methods", "[uml]", "--data.n_preference", "16", "--data.n_unlabelled", "4", "--data.n_eval", "4",
         "--ensemble.k", "0", "--ppo.steps", "1", "--ppo.rollout_batch_size", "4", "--ppo.step_batch_size", "4",
         "--ppo.max_new_tokens", "6", "--sample.n", "2", "--sample.max_new_tokens", "6", "--best_of_n.n", "2",
         "--best_of_n.max_new_tokens", "6", "--generate.max_new_tokens", "6", "--refine.uml_batch_size", "2",
         "--reward.max_length", "96"]


def test_rlp_run_refine_learning_rate_reaches_the_refined_rm(tmp_path, capsys, monkeypatch):
    from rlp_align.cli import main

    monkeypatch.setenv("RLP_NUM_THREADS", "1")
    config_module._warned.clear()
    run = ["run", "--config", "tiny", "--output_dir", str(tmp_path / "run"), *SMALL]
    assert main([*run, "--refine.learning_rate", "0.0042"]) == 0  # the old spelling, deprecated
    assert "'refine.learning_rate' is deprecated; use 'refine.optim.learning_rate'" in capsys.readouterr().err
    stage = tmp_path / "run" / "07_refine_uml"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["inputs"]["refine"]["optim"]["learning_rate"] == 0.0042
    trained = json.loads((stage / "summary.json").read_text())["config"]["optim"]
    assert trained["learning_rate"] == 0.0042 and trained["batch_size"] == 8  # the rest as reward's (tiny.yaml)
    rm0 = json.loads((tmp_path / "run" / "03_rm0" / "summary.json").read_text())["config"]["optim"]
    assert rm0["learning_rate"] == 1e-3  # reward: keeps its own
    # the new spelling is the same setting: every stage is cached
    assert main([*run, "--refine.optim.learning_rate", "0.0042"]) == 0
    assert "[done]" not in capsys.readouterr().out
