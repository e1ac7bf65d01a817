"""Atomic file output and tolerant file input (JSON, JSONL, optionally gzipped).

Every output goes to a temporary sibling first and is renamed into place, so a crash never leaves a
partial file that looks complete.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlp_align.errors import DataError, UserError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row (metrics logs): a crash can lose at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        f.flush()


def read_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (row number starting at 1, parsed object) from a JSON list, JSONL, or their .gz.

    Raises `DataError` naming the file and row for unreadable bytes or malformed JSON.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a JSON or JSONL file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, line, None, f"not valid UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
    stripped = text.lstrip()
    if not stripped:
        raise DataError(path, None, None, "file is empty")
    if stripped[0] == "[":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, None, None, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        for i, row in enumerate(rows, 1):
            yield i, row
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, _Malformed(f"malformed JSON line: {e.msg} (column {e.colno})")


class _Malformed:
    """A JSONL line that did not parse; readers turn it into a DataError or a skipped row."""

    def __init__(self, problem: str):
        self.problem = problem


def is_malformed(row: Any) -> bool:
    return isinstance(row, _Malformed)


def check_writable(folder: str | Path, need_bytes: int = 0) -> None:
    """Fail before any training starts when ``folder`` cannot take our outputs."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable: {e.strerror or e}") from None
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise UserError(
                f"output folder {folder} has {free / 2**30:.2f} GiB free; this run needs about "
                f"{need_bytes / 2**30:.2f} GiB. Free some space or choose another --output_dir."
            )
