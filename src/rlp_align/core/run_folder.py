"""Who may write an output, and what an output folder holds: path safety, run fingerprints, the run lock.

Every ``rlp`` command passes through `claim_output` before it does any work:

1. **Path safety** (`check_paths`): no output is one of the command's inputs or contains one (symlinks
   resolved), so neither the run nor ``--overwrite`` can destroy an input; every output is checked for
   writability (a file output must not be an existing folder, and its folder must be writable).
2. **The run lock** (`RunLock`): a command writing a folder holds an exclusive ``flock`` on ``<folder>/.lock``,
   which also names its PID. A second process on the same folder stops with exit 2 naming that PID. The kernel
   drops the lock when its holder dies, so a lock left by a crash is taken over (with a message).
3. **The run fingerprint** (`fingerprint`, in ``<folder>/fingerprint.json``): the command, its settings
   (minus the knobs that change how a run goes, not what it computes) and a digest of each input's content.
   A trainer's rerun into a folder that holds a finished run or a checkpoint goes on only when the
   fingerprint matches (the finished result is returned, or the checkpoint resumed); otherwise it stops and
   names the differing keys. A folder written by another command is refused.

Resuming with changed settings is refused like a finished run with changed settings: a resumed run must end
exactly where the uninterrupted run would have (see `rlp_align.train.training`), which changed settings break.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlp_align.core.errors import UserError
from rlp_align.core.io import check_writable, write_json

FINGERPRINT = "fingerprint.json"
LOCK = ".lock"
TRAINERS = ("sft", "reward", "refine", "ppo")  # commands whose folder holds a resumable, finishable run
# Knobs that change how a run goes, not what it computes (resume is exact): left out of the fingerprint, so a
# rerun may keep checkpoints, save or log more often.
HOW_NOT_WHAT = frozenset({"output_dir", "output_file", "overwrite", "save_every", "keep_checkpoint",
                          "logging_every", "eval_every", "eval_batch_size", "gradient_checkpointing"})
# String settings that never name an input path (an API model name, an env-var name, a cache we write).
NOT_INPUTS = frozenset({"annotator.kind", "annotator.model", "annotator.base_url", "annotator.api_key_env",
                        "annotator.cache_path"})
WHOLE_FILE_LIMIT = 64 * 2**20  # files up to this size are hashed whole; bigger ones by size, head and tail
EDGE = 2**20


# --------------------------------------------------------------------------------------------------
# Inputs, outputs and their digests


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """A config (dataclass or dict) as ``{"dotted.key": value}``."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_inputs(cfg: Any) -> dict[str, Path]:
    """The settings that name an existing file or folder: the command's inputs (``key`` or ``key[i]``)."""
    found = {}
    for key, value in flatten(cfg).items():
        if key.split(".")[-1] in HOW_NOT_WHAT or key in NOT_INPUTS:
            continue
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            if isinstance(item, str) and item.strip() and os.path.exists(item):
                found[key if not isinstance(value, list) else f"{key}[{i}]"] = Path(item)
    return found


def config_outputs(command: str, cfg: Any) -> list[tuple[Path, str]]:
    """``(path, "folder" | "file")`` of every output the command writes."""
    outputs = []
    if getattr(cfg, "output_dir", None):
        outputs.append((Path(cfg.output_dir), "folder"))
    if getattr(cfg, "output_file", None):
        outputs.append((Path(cfg.output_file), "file"))
        if command == "spg":
            outputs.append((Path(f"{cfg.output_file}.stats.json"), "file"))
    return outputs


_DIGESTS: dict[tuple, str] = {}  # (real path, size, mtime) -> digest: the pipeline asks once per stage key


def file_digest(path: Path) -> str:
    """sha256 of the content; for a file over 64 MiB, of its size, first and last MiB (cheap, and unchanged
    by a copy, unlike a modification time)."""
    stat = path.stat()
    memo = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        _DIGESTS[memo] = _content_digest(path, stat.st_size)
    return _DIGESTS[memo]


def _content_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            h.update(f"size {size}".encode())
            h.update(f.read(EDGE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()[:16]


def input_digest(path: Path) -> str:
    """A file's `file_digest`; a folder's from its files' names and digests (a model folder: its config,
    weight index and weight files; the tokenizer and the rest of a model folder do not change what it is)."""
    if path.is_file():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if (path / "config.json").exists():
        files = [p for p in files if p.name == "config.json" or p.suffix in (".safetensors", ".bin")
                 or p.name.endswith(".index.json")]
    h = hashlib.sha256()
    for p in files[:10_000]:
        h.update(f"{p.relative_to(path)}\0{file_digest(p)}\n".encode())
    return h.hexdigest()[:16]


def fingerprint(command: str, cfg: Any, inputs: dict[str, Path] | None = None) -> dict[str, Any]:
    """What produced a folder: the command, its settings, and its inputs by content (not by path, so moving
    a data file is no change but editing it is)."""
    inputs = config_inputs(cfg) if inputs is None else inputs
    settings = {k: v for k, v in flatten(cfg).items()
                if k.split(".")[-1] not in HOW_NOT_WHAT and k not in inputs and f"{k}[0]" not in inputs}
    digests = {k: input_digest(p) for k, p in inputs.items()}
    body = json.dumps({"settings": settings, "inputs": digests}, sort_keys=True, default=str)
    return {"command": command, "hash": hashlib.sha256(body.encode()).hexdigest()[:16], "settings": settings,
            "inputs": digests}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two fingerprints, as ``key (old -> new)`` or ``key (content)``."""
    out = []
    for part, label in (("settings", None), ("inputs", "content changed")):
        a, b = old.get(part, {}), new.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{key} ({label})" if label and key in a and key in b
                           else f"{key} ({a.get(key, 'unset')!r} -> {b.get(key, 'unset')!r})")
    return out


# --------------------------------------------------------------------------------------------------
# Path safety


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_paths(inputs: dict[str, Path], outputs: list[tuple[Path, str]]) -> None:
    """Refuse an output that is an input or contains one; check every output can be written."""
    for out, kind in outputs:
        real_out = _real(out)
        for key, path in inputs.items():
            real_in = _real(path)
            if real_in == real_out or (kind == "folder" and real_out in real_in.parents):
                what = "is" if real_in == real_out else "contains"
                raise UserError(f"the output {out} {what} the input {key} ({path}): writing there (or --overwrite) "
                                "would destroy that input. Choose an output path outside every input.")
    for out, kind in outputs:
        if kind == "file":
            if out.is_dir():
                raise UserError(f"output file {out} is an existing folder: give a file path")
            check_writable(out.parent if str(out.parent) else Path("."))
        else:
            if out.exists() and not out.is_dir():
                raise UserError(f"output folder {out} is an existing file: give a folder path")
            check_writable(out)


# --------------------------------------------------------------------------------------------------
# The run lock


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


_HELD: dict[str, list[int]] = {}  # lock file (real path) -> [fd, holders]: the run locks this process holds


class RunLock:
    """An exclusive ``flock`` on ``<folder>/.lock``, whose text names the holder's PID.

    The kernel releases a flock when its process dies, so a crash never leaves the folder locked; the PID
    only lets the message name the holder. The file stays (emptied) on release: deleting it would let two
    processes lock two different files of the same name. Within one process the lock is re-entrant (the CLI
    claims a trainer's folder, then the trainer's `TrainingRun` locks it again).
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK
        self.key: str | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self.key = key
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid = _pid_in(self.path)
            raise UserError(f"{self.path.parent} is in use by another rlp process (PID {pid or 'unknown'}): wait "
                            "for it to finish, stop it, or choose another output folder") from None
        previous = _pid_in(self.path)
        if previous and previous != os.getpid():
            state = "no longer running" if not _alive(previous) else "which no longer holds it"
            print(f"taking over a stale lock left by PID {previous} ({state}) in {self.path.parent}",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        _HELD[key] = [fd, 1]
        self.key = key
        return self

    def release(self) -> None:
        if self.key is None:
            return
        entry = _HELD[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[self.key]
            os.ftruncate(entry[0], 0)
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
        self.key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(folder: str | Path) -> int | None:
    """The PID of the live process holding ``folder``'s run lock, or None when nobody holds it."""
    path = Path(folder) / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _pid_in(path) or -1
    finally:
        os.close(fd)  # also drops the shared lock taken to test it
    return None


# --------------------------------------------------------------------------------------------------
# Claiming an output


def read_fingerprint(folder: Path) -> dict[str, Any] | None:
    path = folder / FINGERPRINT
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None


def folder_kind(folder: Path) -> str | None:
    """Which command wrote ``folder``: its fingerprint's, else what its contents say, else None."""
    recorded = read_fingerprint(folder)
    if recorded:
        return recorded.get("command")
    if any(folder.glob("*/manifest.json")):
        return "run"
    if (folder / "manifest.json").exists():
        return "a stage of `rlp run`"
    return None


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _has_run(folder: Path) -> str | None:
    if (folder / "summary.json").exists():
        return "a finished run"
    if any((folder / name / "trainer_state.json").exists() for name in ("checkpoint", ".checkpoint.old")):
        return "a checkpoint"
    return None


def check_folder(command: str, folder: Path, new: dict[str, Any], overwrite: bool) -> None:
    """Refuse ``folder`` when another command wrote it, or when it holds a run of this one with other settings."""
    kind = folder_kind(folder) if folder.is_dir() else None
    if kind is None and command == "run" and folder.is_dir() and _has_run(folder):
        kind = "the output folder of a training command"
    if kind is not None and kind != command:
        can_overwrite = command in TRAINERS and kind in TRAINERS
        if not (overwrite and can_overwrite):
            origin = f"is {kind}" if kind.startswith(("a ", "the ")) else f"was written by `rlp {kind}`"
            raise UserError(f"{folder} {origin}; `rlp {command}` will not write into it. Choose another output "
                            "folder" + (" (or pass --overwrite true to replace its outputs)." if can_overwrite
                                        else "."))
        return
    if command not in TRAINERS or overwrite or not folder.is_dir():
        return
    held = _has_run(folder)
    old = read_fingerprint(folder)
    if held and old and old.get("hash") != new["hash"]:
        changed = ", ".join(differences(old, new) or ["the fingerprint"])
        if held == "a finished run":
            raise UserError(f"{folder} holds a finished `rlp {command}` run made with other settings: {changed}. "
                            "It is not this run's result: rerun with the original settings, choose another output "
                            "folder, or pass --overwrite true to train afresh there.")
        raise UserError(f"{folder} holds a checkpoint of an `rlp {command}` run made with other settings: {changed}. "
                        "Resuming it would mix the two: rerun with the original settings to resume, choose another "
                        "output folder, or pass --overwrite true to start afresh there.")


@contextlib.contextmanager
def claim_output(command: str, cfg: Any) -> Iterator[dict[str, Any] | None]:
    """Check paths, lock the output folder, check and record its fingerprint; yield the fingerprint.

    Only the main rank locks and writes (every rank of a multi-process run reads the same folder state).
    """
    inputs = config_inputs(cfg)
    outputs = config_outputs(command, cfg)
    folders = [path for path, kind in outputs if kind == "folder"]
    created = bool(folders) and not folders[0].exists()  # before check_paths, which creates it to test it
    try:
        check_paths(inputs, outputs)
        if not folders:
            yield None
            return
        folder = folders[0]
        overwrite = bool(getattr(cfg, "overwrite", False))
        new = fingerprint(command, cfg, inputs)
        check_folder(command, folder, new, overwrite)  # before locking: a refused folder is left as it was
        with RunLock(folder) if _is_main_rank() else contextlib.nullcontext():
            check_folder(command, folder, new, overwrite)  # again under the lock, which makes it final
            if _is_main_rank():
                legacy_finished = (folder / "summary.json").exists() and read_fingerprint(folder) is None
                if overwrite and command in TRAINERS:
                    (folder / "summary.json").unlink(missing_ok=True)  # before the new fingerprint: never a mix
                elif legacy_finished:
                    print(f"note: {folder} holds a finished run from before run fingerprints; its settings cannot "
                          "be compared (use --overwrite true to retrain)", file=sys.stderr)
                if not legacy_finished or overwrite:
                    write_json(folder / FINGERPRINT, new)
            yield new
    except BaseException:
        if created and _is_main_rank():
            remove_if_only_bookkeeping(folders[0])  # a command refused before any work leaves no folder behind
        raise


def remove_if_only_bookkeeping(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but the lock and fingerprint files that `claim_output` wrote."""
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return
    if names <= {LOCK, FINGERPRINT}:
        for name in names:
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
