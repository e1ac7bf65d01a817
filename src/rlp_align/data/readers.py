"""Readers for every supported file format, normalising to `Preference`, `Instruction` and `SampleSet`.

Preference formats (detected from each row's keys; the first valid row sets the file's format, and a
row of another format is a bad row):
- ``trl``: ``prompt/chosen/rejected``; standard (strings) or conversational (message lists), with an
  explicit prompt or an implicit one (``chosen``/``rejected`` are whole conversations sharing a prefix);
- ``alpacafarm``: ``instruction/input/output_1/output_2/preference`` (preference 1 or 2);
- ``llmbar``: ``input/output_1/output_2/label`` (label 1 or 2);
- ``hh-rlhf``: ``chosen/rejected`` full dialogues with ``\\n\\nHuman:``/``\\n\\nAssistant:`` turns.
Instruction formats: Alpaca ``instruction/input/output`` (``output`` becomes the reference answer),
AlpacaFarm eval (``reference_output``), a ``prompt`` column, or the answers files we write.

Every bad row raises `DataError` naming file, row and field. With ``skip_invalid=True`` bad rows are
skipped and reported in the returned `ReadReport` instead.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlp_align.core.errors import DataError, UserError
from rlp_align.core.io import is_malformed, read_rows
from rlp_align.data.records import Instruction, Messages, Preference, SampleSet, join_instruction, user_prompt

log = logging.getLogger(__name__)

PREFERENCE_FORMATS = ("trl", "alpacafarm", "llmbar", "hh-rlhf")
INSTRUCTION_FORMATS = ("alpaca", "alpacafarm-eval", "prompt", "samples")


@dataclass
class ReadReport:
    """What a reader did: rows read, kept, and why the others were skipped."""

    path: str
    format: str
    rows: int = 0
    kept: int = 0
    duplicates: int = 0
    identical: int = 0  # preference pairs whose chosen equals rejected: skipped, they carry no gradient
    invalid: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.path}: {self.format}, {self.kept}/{self.rows} rows kept"
        if self.duplicates:
            text += f", {self.duplicates} duplicates dropped"
        if self.identical:
            text += f", {self.identical} with chosen == rejected dropped"
        if self.invalid:
            text += f", {len(self.invalid)} invalid skipped"
        return text


def detect_format(row: dict[str, Any]) -> str:
    """Name the format of one row from its keys."""
    keys = set(row)
    if {"prompt", "responses"} <= keys or ("instruction" in keys and isinstance(row.get("output"), list)):
        return "samples"
    if {"output_1", "output_2", "preference"} <= keys:
        return "alpacafarm"
    if {"output_1", "output_2", "label"} <= keys:
        return "llmbar"
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys:
            return "trl"
        if isinstance(row["chosen"], str) and "\n\nAssistant:" in row["chosen"]:
            return "hh-rlhf"
        return "trl"
    if "reference_output" in keys and "instruction" in keys:
        return "alpacafarm-eval"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys:
        return "prompt"
    raise UserError(
        f"unrecognised row with keys {sorted(keys)}; expected one of: prompt/chosen/rejected (TRL), "
        "instruction/input/output_1/output_2/preference (AlpacaFarm), input/output_1/output_2/label (LLMBar), "
        "chosen/rejected dialogues (HH-RLHF), instruction/input/output (Alpaca), prompt/responses (samples)"
    )


# --------------------------------------------------------------------------------------------------
# Field helpers: each names the field it complains about.


def _text(row: dict, key: str, path: str, i: int, allow_empty: bool = False) -> str:
    if key not in row:
        raise DataError(path, i, key, "missing")
    value = row[key]
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise DataError(path, i, key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(path, i, key, "is empty")
    return value


def _label(row: dict, key: str, path: str, i: int) -> int:
    if key not in row:
        raise DataError(path, i, key, "missing")
    value = row[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip() in {"1", "2"}:
        value = int(value)
    if value not in (1, 2) or isinstance(value, bool):
        raise DataError(path, i, key, f"must be 1 or 2, got {value!r}")
    return value


def _messages(value: Any, path: str, i: int, key: str) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(path, i, key, "is empty")
        return user_prompt(value)
    if not isinstance(value, list) or not value:
        raise DataError(path, i, key, "expected a string or a non-empty list of {role, content} messages")
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in (
            "system", "user", "assistant"
        ):
            raise DataError(path, i, key, f"bad message {m!r}: needs role system/user/assistant and content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _completion(value: Any, path: str, i: int, key: str) -> str:
    """A TRL completion: a string, or a conversational list whose assistant turn is the response."""
    if isinstance(value, list):
        msgs = _messages(value, path, i, key)
        if msgs[-1]["role"] != "assistant":
            raise DataError(path, i, key, "the last message must be the assistant's response")
        value = msgs[-1]["content"]
    if not isinstance(value, str):
        raise DataError(path, i, key, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, i, key, "is empty")
    return value


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_dialogue(text: str) -> Messages:
    """Split an HH-RLHF dialogue into messages."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


# --------------------------------------------------------------------------------------------------
# One row of each format


def _trl_row(row: dict, path: str, i: int) -> Preference:
    if "prompt" in row:
        prompt = _messages(row["prompt"], path, i, "prompt")
        chosen = _completion(row.get("chosen"), path, i, "chosen") if "chosen" in row else None
        rejected = _completion(row.get("rejected"), path, i, "rejected") if "rejected" in row else None
        if chosen is None or rejected is None:
            raise DataError(path, i, "chosen" if chosen is None else "rejected", "missing")
    else:  # implicit prompt: two whole conversations that share everything but the last turn
        chosen_msgs = _messages(row["chosen"], path, i, "chosen")
        rejected_msgs = _messages(row["rejected"], path, i, "rejected")
        if chosen_msgs[:-1] != rejected_msgs[:-1] or len(chosen_msgs) < 2:
            raise DataError(path, i, "chosen", "implicit-prompt rows need a shared prompt before the last turn")
        prompt, chosen, rejected = chosen_msgs[:-1], chosen_msgs[-1]["content"], rejected_msgs[-1]["content"]
    extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "meta")}
    meta = {**extra, **row["meta"]} if isinstance(row.get("meta"), dict) else extra
    return Preference(prompt, chosen, rejected, meta)


def _alpacafarm_row(row: dict, path: str, i: int) -> Preference:
    prompt = user_prompt(join_instruction(_text(row, "instruction", path, i), _text(row, "input", path, i, True)
                                          if "input" in row else ""))
    a, b = _text(row, "output_1", path, i), _text(row, "output_2", path, i)
    pref = _label(row, "preference", path, i)
    return Preference(prompt, a if pref == 1 else b, b if pref == 1 else a, {"format": "alpacafarm"})


def _llmbar_row(row: dict, path: str, i: int) -> Preference:
    prompt = user_prompt(_text(row, "input", path, i))
    a, b = _text(row, "output_1", path, i), _text(row, "output_2", path, i)
    label = _label(row, "label", path, i)
    return Preference(prompt, a if label == 1 else b, b if label == 1 else a, {"format": "llmbar"})


def _hh_row(row: dict, path: str, i: int) -> Preference:
    chosen = parse_hh_dialogue(_text(row, "chosen", path, i))
    rejected = parse_hh_dialogue(_text(row, "rejected", path, i))
    if not chosen or chosen[-1]["role"] != "assistant" or not rejected or rejected[-1]["role"] != "assistant":
        raise DataError(path, i, "chosen", "dialogue must end with an Assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(path, i, "rejected", "chosen and rejected dialogues differ before the last turn")
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        raise DataError(path, i, "chosen" if not chosen[-1]["content"] else "rejected", "final response is empty")
    return Preference(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], {"format": "hh-rlhf"})


_PREFERENCE_ROW = {"trl": _trl_row, "alpacafarm": _alpacafarm_row, "llmbar": _llmbar_row, "hh-rlhf": _hh_row}


def _instruction_row(row: dict, fmt: str, path: str, i: int) -> Instruction:
    if fmt in ("alpaca", "alpacafarm-eval"):
        text = join_instruction(_text(row, "instruction", path, i), _text(row, "input", path, i, True)
                                if "input" in row else "")
        ref_key = "reference_output" if fmt == "alpacafarm-eval" else "output"
        reference = row.get(ref_key) if isinstance(row.get(ref_key), str) and row.get(ref_key).strip() else None
        meta = {k: row[k] for k in ("subset", "reference_generator", "dataset") if k in row}
        return Instruction(user_prompt(text), reference, list(row.get("constraints") or []), meta)
    prompt = _messages(row.get("prompt"), path, i, "prompt") if "prompt" in row else None
    if prompt is None:
        raise DataError(path, i, "prompt", "missing")
    reference = row.get("reference") if isinstance(row.get("reference"), str) else None
    meta = dict(row.get("meta") or {})
    if row.get("subset"):
        meta["subset"] = row["subset"]
    return Instruction(prompt, reference, list(row.get("constraints") or []), meta)


# --------------------------------------------------------------------------------------------------
# Public readers


_FAMILY = {"alpacafarm-eval": "alpaca"}  # formats one file may mix: the same fields, the reference optional


def _row_format(row: dict, path: str, i: int) -> str:
    try:
        return detect_format(row)
    except DataError:
        raise
    except UserError as e:  # unrecognised keys: a bad row, which --skip_invalid may skip
        raise DataError(path, i, None, str(e)) from None


def _read(path: str | Path, kind: str, skip_invalid: bool, expected: tuple[str, ...] | None, parse_row):
    path = str(path)
    items, seen, report, first_row = [], set(), ReadReport(path, "unknown"), None
    for i, row in read_rows(path):
        report.rows += 1
        try:
            if is_malformed(row):
                raise DataError(path, i, None, row.problem)
            if not isinstance(row, dict):
                raise DataError(path, i, None, f"expected a JSON object, got {type(row).__name__}")
            fmt = _row_format(row, path, i)  # per row: a file mixing formats names its odd rows
            if first_row is None:
                if expected is not None and fmt not in expected:
                    raise UserError(f"{path}: looks like a '{fmt}' file, not a {kind} file ({', '.join(expected)})")
                report.format, first_row = fmt, i
            elif _FAMILY.get(fmt, fmt) != _FAMILY.get(report.format, report.format):
                mixed = DataError(path, i, None, f"a '{fmt}' row in a '{report.format}' file (the format of row "
                                  f"{first_row}): one file holds one format; convert or drop the row")
                if expected is not None and fmt in expected:
                    raise mixed
                try:  # keys missing from a row of the file's format: the parser names the missing field
                    parse_row(row, report.format, path, i)
                except (KeyError, TypeError, ValueError, AttributeError):
                    raise mixed from None
                fmt = report.format
            item = parse_row(row, fmt, path, i)
            key = repr(item)
        except (RecursionError, KeyError, TypeError, ValueError, AttributeError) as e:  # a row no reader expects
            problem = "nested too deeply to read" if isinstance(e, RecursionError) else f"unreadable row ({e!r})"
            error = DataError(path, i, None, problem)
            if not skip_invalid:
                raise error from None
            report.invalid.append(str(error))
            continue
        except DataError as e:
            if not skip_invalid:
                raise
            report.invalid.append(str(e))
            continue
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        if isinstance(item, Preference) and item.chosen == item.rejected:
            report.identical += 1
            continue
        items.append(item)
    if not report.rows:
        raise DataError(path, None, None, "no rows")
    report.kept = len(items)
    if report.invalid or report.duplicates or report.identical:
        log.warning(report.summary())
    if report.identical:  # loud: these rows would train on zero gradient, and a file of them on nothing
        warnings.warn(f"{path}: {report.identical} of {report.rows} preference pairs have chosen identical to "
                      "rejected and are skipped (the loss of such a pair has zero gradient: it teaches nothing)",
                      RuntimeWarning, stacklevel=3)
    if not items:
        why = f", {report.identical} with chosen identical to rejected: nothing to learn from" \
            if report.identical else ""
        raise DataError(path, None, None, f"no valid rows ({len(report.invalid)} invalid{why})")
    return items, report


def read_preferences(
    path: str | Path, *, skip_invalid: bool = False, with_report: bool = False
) -> list[Preference] | tuple[list[Preference], ReadReport]:
    """Read a preference file in any supported format; exact duplicate pairs are dropped and counted."""
    items, report = _read(path, "preference", skip_invalid, PREFERENCE_FORMATS,
                          lambda row, fmt, p, i: _PREFERENCE_ROW[fmt](row, p, i))
    return (items, report) if with_report else items


def read_instructions(
    path: str | Path, *, skip_invalid: bool = False, with_report: bool = False
) -> list[Instruction] | tuple[list[Instruction], ReadReport]:
    """Read an instruction file (Alpaca, AlpacaFarm eval, prompt column, answers files)."""
    items, report = _read(path, "instruction", skip_invalid, INSTRUCTION_FORMATS, _instruction_row)
    return (items, report) if with_report else items


def _samples_row(row: dict, fmt: str, path: str, i: int) -> SampleSet:
    """Our ``{prompt, responses, meta}`` rows, or AlpacaFarm's multi-sample ``{instruction, input, output: [...]}``."""
    if "responses" in row:
        prompt, responses = _messages(row.get("prompt"), path, i, "prompt"), row.get("responses")
    else:
        text = join_instruction(_text(row, "instruction", path, i), _text(row, "input", path, i, True)
                                if "input" in row else "")
        prompt, responses = user_prompt(text), row.get("output")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DataError(path, i, "responses", "expected a list of strings")
    if not responses:
        raise DataError(path, i, "responses", "is empty")
    return SampleSet(prompt, responses, dict(row.get("meta") or {}))


def read_sample_sets(
    path: str | Path, *, skip_invalid: bool = False, with_report: bool = False
) -> list[SampleSet] | tuple[list[SampleSet], ReadReport]:
    """Read a policy-sample file: JSONL rows ``{prompt, responses: [...], meta}``."""
    items, report = _read(path, "samples", skip_invalid, ("samples",), _samples_row)
    return (items, report) if with_report else items


def inspect_file(path: str | Path, head: int = 3) -> dict[str, Any]:
    """What ``rlp data inspect`` prints: format, counts, field statistics, first rows, invalid rows."""
    first = next((row for _, row in read_rows(path) if isinstance(row, dict)), None)
    if first is None:
        raise DataError(str(path), None, None, "no JSON object rows")
    fmt = detect_format(first)
    if fmt in PREFERENCE_FORMATS:
        items, report = read_preferences(path, skip_invalid=True, with_report=True)
        fields = {"prompt": [m[-1]["content"] if m else "" for m in (p.prompt for p in items)],
                  "chosen": [p.chosen for p in items], "rejected": [p.rejected for p in items]}
        rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in items[:head]]
    elif fmt == "samples":
        items, report = read_sample_sets(path, skip_invalid=True, with_report=True)
        fields = {"prompt": [s.prompt[-1]["content"] for s in items],
                  "response": [r for s in items for r in s.responses]}
        rows = [{"prompt": s.prompt, "responses": s.responses[:2]} for s in items[:head]]
    else:
        items, report = read_instructions(path, skip_invalid=True, with_report=True)
        fields = {"instruction": [x.text for x in items], "reference": [x.reference or "" for x in items]}
        rows = [{"prompt": x.prompt, "reference": x.reference} for x in items[:head]]
    stats = {
        name: {"mean_chars": round(sum(map(len, values)) / max(1, len(values)), 1),
               "max_chars": max(map(len, values), default=0),
               "empty": sum(1 for v in values if not v.strip())}
        for name, values in fields.items()
    }
    return {"path": str(path), "format": report.format, "rows": report.rows, "kept": report.kept,
            "duplicates": report.duplicates, "identical": report.identical, "fields": stats, "first_rows": rows, "invalid": report.invalid[:20]}
