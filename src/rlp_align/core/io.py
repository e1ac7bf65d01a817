"""Atomic file output and tolerant file input (JSON, JSONL, optionally gzipped).

Every output goes to a temporary sibling first and is renamed into place, so a crash never leaves a
partial file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from rlp_align.core import tables
from rlp_align.core.errors import DataError, UserError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` (file or folder).

    A failed write (a full disk, no permission, a file where a folder should be) becomes a `UserError`
    naming ``path`` and the cause; ``path`` itself is left as it was.
    """
    path = Path(path)
    with io_errors(path):
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


# --------------------------------------------------------------------------------------------------
# I/O errors as one paragraph: the path and the cause

_HINTS = {
    errno.ENOSPC: "free some space or choose another {output}, then rerun the same command (finished "
                  "outputs and the last checkpoint are kept, so it resumes)",
    errno.EDQUOT: "free some space or choose another {output}, then rerun the same command",
    errno.EACCES: "check the permissions of the folder, or choose another {output}",
    errno.EPERM: "check the permissions of the folder, or choose another {output}",
    errno.EROFS: "the file system is read-only: choose another {output}",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another {path} or move the file",
    errno.EISDIR: "this path is a folder, not a file: choose another {path}",
    errno.EEXIST: "a file already has this name where a folder is needed: choose another {path}",
}
# torch.save raises RuntimeError("... PytorchStreamWriter failed writing file ...") without the cause; safetensors
# and tokenizers (Rust) raise their own errors holding "Os { code: 28, ... }"
_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos", "Os { code:",
                   "No space left on device")
_RUST_OS_ERROR = re.compile(r"Os \{ code: (\d+)")


# What the user sets to move a write elsewhere (issue 30: a message names the setting that fixes it): the
# command's output flag (`--output_dir` or `--output_file`), and the cache folder's environment variable.
OUTPUT_SETTING: ContextVar[str] = ContextVar("output_setting", default="output path")
CACHE_SETTING: ContextVar[tuple[Path, str] | None] = ContextVar("cache_setting", default=None)


def _setting_for(where: str | Path | None, default: str) -> str:
    """The cache's variable for a path inside the cache folder, else ``default``."""
    cache = CACHE_SETTING.get()
    if cache is not None and where is not None:
        folder, name = cache
        path, root = Path(os.path.abspath(where)), Path(os.path.abspath(folder))
        if path == root or root in path.parents:
            return f"cache folder (set {name})"
    return default


def describe_os_error(e: OSError, path: str | Path | None = None) -> str:
    """``path: cause; what to do`` for an `OSError` (the path from the error when it names one)."""
    where = e.filename if e.filename is not None else path
    cause = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno or -1)
    hint = hint.format(output=_setting_for(where, OUTPUT_SETTING.get()), path=_setting_for(where, "path")) if hint else None
    return f"{where or 'a file'}: {cause}" + (f"; {hint}" if hint else "")


def is_write_failure(e: BaseException) -> bool:
    """A failed write reported as something other than an `OSError` (torch.save, safetensors, tokenizers)."""
    return (not isinstance(e, (OSError, UserError)) and isinstance(e, Exception)
            and any(text in str(e) for text in _WRITE_FAILURES))


def _write_failure_as_os_error(e: Exception, path: str | Path) -> OSError:
    """The `OSError` behind a write failure: the Rust error's code, or (torch hides it) a full disk under
    ``path``, which is almost always the cause."""
    if (code := _RUST_OS_ERROR.search(str(e))) is not None:
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path))
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        full = shutil.disk_usage(folder).free < 16 * 2**20
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"the write failed ({str(e).splitlines()[0][:200]})", str(path))


@contextlib.contextmanager
def io_errors(path: str | Path) -> Iterator[None]:
    """Turn an `OSError` (or torch's write-failure `RuntimeError`) raised while writing ``path`` into a
    `UserError` naming the path and the cause."""
    try:
        yield
    except OSError as e:
        raise UserError(describe_os_error(e, path)) from e
    except Exception as e:
        if not is_write_failure(e):
            raise
        raise UserError(describe_os_error(_write_failure_as_os_error(e, path))) from e


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
    with io_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        f.flush()


# --------------------------------------------------------------------------------------------------
# Paths the user gives, and the files rlp reads: one path function, regular files only, bounded lines

MAX_LINE = 64 * 2**20  # bytes in one JSONL line (a row); a longer one is not a data row
MAX_WHOLE = 2 * 2**30  # bytes of a file read whole (a JSON list, a YAML config); JSONL is read line by line


def user_path(path: str | Path) -> Path:
    """The one place a path the user gave becomes a `Path`: ``~`` and ``~user`` expanded, which a shell does
    only for an unquoted word's start, never in YAML, after ``--key=`` or in a quoted argument."""
    return Path(os.path.expanduser(os.fspath(path)))


def regular_file(path: str | Path, what: str = "") -> Path:
    """``path`` (``~`` expanded) when it is an existing regular file (a symlink to one is fine); a device, pipe
    or socket (``/dev/zero``, ``<(cmd)``) is refused: it can be endless, or block, and cannot be read twice."""
    path = user_path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.exists():
        raise UserError(f"{label}: no such file")
    if path.is_dir():
        raise UserError(f"{label}: is a folder, expected a file")
    if not path.is_file():
        raise UserError(f"{label}: not a regular file (a device, pipe or socket); rlp reads only regular files, "
                        "which have an end and can be read twice. Save the data to a file and pass that.")
    return path


def read_bounded(f: Any, path: Path, limit: int = MAX_WHOLE) -> bytes:
    """All of an open file, refused past ``limit`` bytes (a gzip bomb, or a JSON list too big to hold)."""
    raw = f.read(limit + 1)
    if len(raw) > limit:
        raise UserError(f"{path}: more than {limit / 2**30:.3g} GiB to read at once; split it, or write it as JSONL "
                        "(read one row at a time)")
    return raw


def read_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (row number starting at 1, parsed object) from a JSON list, JSONL, their .gz, a parquet file or a
    Hugging Face `datasets` folder (`rlp_align.tables`).

    JSONL is read one line at a time, each at most `MAX_LINE` bytes; a JSON list whole, at most `MAX_WHOLE`.
    Raises `DataError` naming the file and row for unreadable bytes, malformed JSON or an endless line.
    """
    path = user_path(path)
    if path.exists() and tables.is_dataset_folder(path):
        yield from tables.dataset_rows(path)
        return
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a JSON, JSONL or parquet file or a `datasets` folder "
                        "(save_to_disk)")
    path = regular_file(path)
    if tables.is_parquet(path):
        yield from tables.parquet_rows(path)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            yield from _rows(f, path)
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None


def _lines(f: Any, path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of each line, none longer than `MAX_LINE`."""
    offset = 0
    for number in itertools.count(1):
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE:
            raise DataError(path, number, None, f"a line longer than {MAX_LINE / 2**20:.3g} MiB, which is not a data "
                            "row (a binary file, or one without line breaks?); rlp reads JSONL one bounded line at "
                            "a time")
        yield number, offset, line
        offset += len(line)


def _decode(raw: bytes, path: Path, number: int, offset: int) -> str:
    try:
        return raw.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as e:
        line = number + raw[: e.start].count(b"\n")  # a JSON list is decoded whole: the line within it
        raise DataError(path, line, None, f"not valid UTF-8 (byte {offset + e.start}); re-encode the file as "
                        "UTF-8") from None


def _rows(f: Any, path: Path) -> Iterator[tuple[int, Any]]:
    lines = _lines(f, path)
    first = next(((n, o, raw) for n, o, raw in lines if raw.strip()), None)
    if first is None:
        raise DataError(path, None, None, "file is empty")
    if _decode(first[2], path, first[0], first[1]).lstrip().startswith("["):  # a JSON list: read whole
        f.seek(0)
        raw = read_bounded(f, path)
        text = _decode(raw, path, 1, 0)
        check_unicode = _SURROGATE_ESCAPE.search(text) is not None  # only a \uD800-\uDFFF escape makes one
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, None, None, f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        except RecursionError:
            raise DataError(path, None, None, _TOO_DEEP) from None
        except ValueError as e:  # an integer of more than 4300 digits (Python's int conversion limit)
            raise DataError(path, None, None, _unreadable(e)) from None
        for i, row in enumerate(rows, 1):
            yield i, _checked(row) if check_unicode else row
        return
    for number, offset, raw in itertools.chain([first], lines):
        line = _decode(raw, path, number, offset)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row = _Malformed(f"malformed JSON line: {e.msg} (column {e.colno})")
        except RecursionError:
            row = _Malformed(_TOO_DEEP)
        except ValueError as e:
            row = _Malformed(_unreadable(e))
        yield number, _checked(row) if _SURROGATE_ESCAPE.search(line) else row


def _unreadable(e: ValueError) -> str:
    return f"a value Python cannot read ({str(e).split(';')[0]}); this is not a data row"


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_TOO_DEEP = "JSON nested too deeply to read (thousands of levels of [ or {); this is not a data row"


def _checked(row: Any) -> Any:
    """``row``, or a `_Malformed` naming the field that holds a lone UTF-16 surrogate (``"\\ud800"`` escaped
    in the JSON): such a string cannot be encoded as UTF-8, so no tokenizer can read it."""
    stack = [(None, row)]
    while stack:  # iterative: a deeply nested row must not overflow the stack
        key, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                where = f"field '{key}': " if key is not None else ""
                return _Malformed(f"{where}invalid Unicode: a lone surrogate {value[e.start]!r} at character "
                                  f"{e.start} (an unpaired \\u escape in the JSON); fix or drop the row")
        elif isinstance(value, dict):
            stack += [(key if key is not None else k, v) for k, v in value.items()]
            stack += [(key, k) for k in value]
        elif isinstance(value, list):
            stack += [(key, v) for v in value]
    return row


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
        raise UserError(f"output folder {folder} is not writable: {describe_os_error(e, folder)}") from None
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise UserError(
                f"output folder {folder} has {free / 2**30:.2f} GiB free; this run needs about "
                f"{need_bytes / 2**30:.2f} GiB. Free some space or choose another {OUTPUT_SETTING.get()}."
            )
