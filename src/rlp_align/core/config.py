"""Dataclass configs from a YAML file plus dotted command-line overrides.

    rlp ppo --config my.yaml --kl_coef 0.05              # a field of PPOConfig
    rlp run --config configs/tiny.yaml --ppo.kl_coef 0.05   # a field of a nested section

Unknown keys and wrong types fail with a message that names them (and suggests the closest key).
The trainers' optimiser and LoRA settings live in the ``optim`` and ``lora`` sections
(``--optim.learning_rate``, ``--refine.optim.learning_rate``); the flat keys they replace
(``--learning_rate``, ``--lora_r``) still work and print a deprecation message naming the new key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from rlp_align.core.errors import UserError
from rlp_align.core.io import read_bounded, regular_file, user_path
from rlp_align.core.ranges import check_ranges

T = TypeVar("T")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--a.b", "1", "--flag", "--c=x"]`` → ``{"a": {"b": 1}, "flag": True, "c": "x"}``.

    Values are parsed as YAML scalars/lists, so ``0.05`` is a float, ``true`` a bool, ``[a, b]`` a list.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError(f"unexpected argument {arg!r}: options look like --key value or --section.key value")
        key, value = arg[2:], None
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 1
        parsed = True if value is None else _parse_scalar(value)
        node = out
        parts = key.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"option --{key} conflicts with --{part}")
        node[parts[-1]] = parsed
        i += 1
    return out


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a mapping with the same key twice is an error: YAML says keys are
    unique, and PyYAML would keep the last one silently (a second ``optim:`` section drops the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"config file {self.name}: the key {key!r} appears twice in one mapping (lines "
                                f"{seen[key]} and {key_node.start_mark.line + 1}); YAML keeps only the last, "
                                "which silently drops the first. Merge the two into one.")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    if not user_path(path).exists():
        raise UserError(f"config file {path} does not exist")
    path = regular_file(path, "config file")
    try:
        with open(path, "rb") as f:
            text = read_bounded(f, path, 64 * 2**20).decode("utf-8")
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)
        try:
            data = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


# Flat keys of the trainers that moved into the `optim` and `lora` sections: old key -> new key.
MOVED_KEYS = {
    **{k: f"optim.{k}" for k in ("learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "epochs",
                                 "max_steps", "batch_size", "gradient_accumulation_steps", "eval_batch_size",
                                 "logging_every", "save_every", "keep_checkpoint")},
    "lora": "lora.enabled", "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
}
_warned: set[str] = set()


def upgrade_keys(cls: type, values: Any, where: str = "") -> Any:
    """Move the deprecated flat keys of ``values`` (for ``cls`` and its nested sections) to their sections,
    printing one deprecation message per key to stderr. A key given both ways keeps the new spelling's value."""
    if not isinstance(values, dict) or not dataclasses.is_dataclass(cls):
        return values
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = dict(values)
    for key, value in values.items():
        new = MOVED_KEYS.get(key)
        section = new.split(".")[0] if new else None
        moved = new and section in names and (key not in names or (key == "lora" and not isinstance(value, (dict, type(None)))))
        if moved:
            if _join(where, key) not in _warned:
                _warned.add(_join(where, key))
                print(f"rlp: config key '{_join(where, key)}' is deprecated; use '{_join(where, new)}'", file=sys.stderr)
            out.pop(key)
            current = out.get(section) if isinstance(out.get(section), dict) else {}
            out[section] = {new.split(".")[1]: value, **current}
    for name in names & set(out):
        section_cls = next((t for t in (hints[name], *typing.get_args(hints[name])) if dataclasses.is_dataclass(t)),
                           None)
        if section_cls is not None:
            out[name] = upgrade_keys(section_cls, out[name], _join(where, name))
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from an optional YAML file and overrides (overrides win, whichever spelling each uses)."""
    values = upgrade_keys(cls, read_yaml(path)) if path else {}
    return build_config(cls, merge(values, upgrade_keys(cls, overrides or {})))


def build_config(cls: type[T], values: dict[str, Any], where: str = "") -> T:
    """Instantiate a (possibly nested) dataclass from a dict, checking keys and types."""
    if not isinstance(values, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {values!r}")
    values = upgrade_keys(cls, values, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        # candidates: this level's keys and its sections' keys (a misspelt `learnig_rate` -> `optim.learning_rate`)
        candidates = {name: name for name in fields}
        for name in fields:
            section = next((t for t in (hints[name], *typing.get_args(hints[name])) if dataclasses.is_dataclass(t)),
                           None)
            for sub in dataclasses.fields(section) if section else ():
                candidates.setdefault(sub.name, f"{name}.{sub.name}")
        close = difflib.get_close_matches(key, candidates, n=1)
        hint = f" (did you mean '{_join(where, candidates[close[0]])}'?)" if close else ""
        raise UserError(f"unknown config key '{_join(where, key)}'{hint}. Known keys: {', '.join(fields)}")
    kwargs = {name: _coerce(hints[name], _over_default(fields[name], value), _join(where, name))
              for name, value in values.items()}
    for name, value in kwargs.items():
        if fields[name].metadata.get("unique") and isinstance(value, list):
            check_unique(value, _join(where, name))
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a required field was not given
        raise UserError(f"{where or cls.__name__}: {e}") from None
    check_ranges(cfg, where)  # every numeric knob against rlp_align.core.ranges, before any work
    return cfg


UNIQUE = {"unique": True}  # field metadata: a list that names methods or files, where a repeat is a mistake


def check_unique(values: list, key: str) -> None:
    """Refuse a repeated entry: ``refine_methods: [uml, uml]`` would rerun a refinement and overwrite the model
    that a finished PPO₂ was trained from; a repeated ensemble member would count one RM twice."""
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise UserError(f"{key} names {', '.join(repr(v) for v in repeated)} more than once: each entry must be "
                        f"distinct. Remove the repeat from {key}.")


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """A section given in part keeps the rest of its field's default: `PPOConfig.optim` saves every 10 steps
    unless told otherwise, even when only ``optim.learning_rate`` is given."""
    if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        if dataclasses.is_dataclass(default):
            return {**dataclasses.asdict(default), **value}
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # --refine uml is a one-element list
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build_config(tp, value, where)
    if tp is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
            word = "true" if value.strip().lower() in ("true", "yes", "on") else "false"
            raise UserError(f"{where}: got the text {value!r}, in quotes, where true or false is expected: YAML reads "
                            f"a quoted value as text. Write {where}: {word} (lower case, no quotes).")
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(user_path(value)) if value.startswith("~") else value  # every path setting: `io.user_path`
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(obj: Any) -> str:
    """A short stable hash of a config (or a slice of one) for the pipeline's stage cache."""
    data = config_to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
