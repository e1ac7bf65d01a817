"""Who may write an output: the one guard every output path of every command passes before any work starts.

Every ``rlp`` command passes through `claim_output`, which sends each of its outputs (`config_outputs`:
``--output_dir``, ``--output_file``, SPG's stats file, a judge's ``cache_path``) through `guard_output`:

1. **Path safety**: no output is, contains or lies inside one of the command's inputs (symlinks resolved),
   so neither the run nor ``--overwrite`` can destroy or change an input; every output must be writable.
2. **The run lock** (`rlp_align.core.run_lock`): the output folder is locked for the run; an output at, inside or
   containing a folder another live rlp process holds is refused.
3. **Ownership**, by rlp's marker and records, never by file names (issue 30): an existing output must be
   this command's own earlier output. A folder without rlp's marker (`fingerprint.marker`, written first into
   every folder rlp makes) but with files is the user's; one another command made is refused, and so is an
   output inside it (``--overwrite`` replaces only what the same command wrote); a file output must carry
   rlp's record of it (``.<name>.rlp.json``: command and digest) and be unchanged since. Every output is
   locked (a file's lock is ``.<name>.lock`` beside it). Deleting or replacing (``--overwrite``, a changed
   stage of ``rlp run``) first refuses any file that was not recorded (`refuse_unowned`).
4. **The run fingerprint** (`rlp_align.core.fingerprint`): a trainer's rerun goes on only when its settings and
   inputs match (finished result returned, checkpoint resumed); a finished folder whose outputs changed after
   it finished is not reported finished.

Resuming with changed settings is refused like a finished run with changed settings: a resumed run must end
exactly where the uninterrupted run would have (see `rlp_align.train.training`), which changed settings break.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlp_align.core.errors import UserError
from rlp_align.core.fingerprint import (  # noqa: F401  (re-exported: the names callers know run_folder by)
    FINGERPRINT,
    HOW_NOT_WHAT,
    config_inputs,
    differences,
    file_digest,
    fingerprint,
    flatten,
    input_digest,
    marker,
    read_fingerprint,
)
from rlp_align.core.io import check_writable, write_json
from rlp_align.core.run_lock import LOCK, RunLock, file_lock, lock_holder, other_holders  # noqa: F401

TRAINERS = ("sft", "reward", "refine", "ppo", "rloo")  # commands whose folder holds a resumable, finishable run
BOOKKEEPING = (LOCK, FINGERPRINT)  # what claim_output itself writes into a folder
NOT_OUTPUTS = ("checkpoint", ".checkpoint.old", ".checkpoint.tmp")  # resumable state, not a result


def config_outputs(command: str, cfg: Any) -> list[tuple[Path, str]]:
    """``(path, "folder" | "file" | "cache")`` of every path the command writes: its ``output_dir``, its
    ``output_file`` (and SPG's stats file beside it), and any ``*.cache_path`` (the LLM judge's verdicts).
    A nested section's ``output_dir`` (``rlp run --sft.output_dir``) is set by the pipeline inside its run."""
    outputs = []
    if getattr(cfg, "output_dir", None):
        outputs.append((Path(cfg.output_dir), "folder"))
    if getattr(cfg, "output_file", None):
        outputs.append((Path(cfg.output_file), "file"))
        if command == "spg":
            outputs.append((Path(f"{cfg.output_file}.stats.json"), "file"))
    for key, value in flatten(cfg).items():
        if key.split(".")[-1] == "cache_path" and isinstance(value, str) and value.strip():
            outputs.append((Path(value), "cache"))
    return outputs


# --------------------------------------------------------------------------------------------------
# The output guard: every output path of every command passes `guard_output` before any work starts


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def guard_output(path: Path, kind: str, command: str | None, inputs: dict[str, Path], *,
                 locks: bool = True) -> None:
    """Refuse (`UserError`, exit 2) to write ``path`` (a "folder", "file" or "cache") when it

    1. is, contains or lies inside one of the command's ``inputs`` (symlinks resolved);
    2. cannot be written (a file output that is a folder, a folder output that is a file, no permission);
    3. lies inside, contains or is a folder whose run lock another live process holds (``locks``);
    4. lies inside a folder another rlp command made (its marker), for a command's output (not a cache);
    5. exists and is not this command's own earlier output: a folder holding files without rlp's marker or
       that another command wrote, a file rlp did not write (or that was changed since), a cache that is not one.

    ``command`` None (a trainer called from Python, a stage of `rlp run`) accepts any trainer's folder.
    """
    _not_an_input(path, kind, inputs, command)
    _writable(path, kind)
    if locks:
        for folder, pid in other_holders(path):
            where = "" if folder == _real(path) else \
                f": the output {path} {'lies inside' if folder in _real(path).parents else 'contains'} it"
            raise UserError(f"{folder} is in use by another rlp process (PID {pid}){where}, and either run would "
                            "delete or mix with the other's files. Wait for it to finish, stop it, or choose an "
                            "output outside that folder.")
    if command is not None and kind != "cache":
        _inside_another_run(path, command)
    if kind == "folder":
        _own_folder(path, command)
    elif kind == "file":
        _own_file(path, command)
    else:
        _own_cache(path)


def _overwrite_note(command: str | None, text: str) -> str:
    """``text`` where the command has an ``--overwrite`` setting (the trainers), else nothing: a message names
    only flags the command takes (issue 30)."""
    return text if command in TRAINERS else ""


def _not_an_input(out: Path, kind: str, inputs: dict[str, Path], command: str | None = None) -> None:
    real_out = _real(out)
    for key, path in inputs.items():
        real_in = _real(path)
        if real_in == real_out or (kind == "folder" and real_out in real_in.parents):
            what = "is" if real_in == real_out else "contains"
        elif real_in in real_out.parents:
            what = "lies inside"
        else:
            continue
        raise UserError(f"the output {out} {what} the input {key} ({path}): writing there"
                        f"{_overwrite_note(command, ' (or --overwrite)')} "
                        "would destroy or change that input. Choose an output path outside every input.")


def _writable(out: Path, kind: str) -> None:
    if kind != "folder":
        if out.is_dir():
            raise UserError(f"output file {out} is an existing folder: give a file path")
        check_writable(out.parent if str(out.parent) else Path("."))
    else:
        if out.exists() and not out.is_dir():
            raise UserError(f"output folder {out} is an existing file: give a folder path")
        check_writable(out)


FOREIGN = "foreign"  # `folder_kind` of a folder holding files without rlp's marker
PYTHON = "a trainer called from Python"  # the marker `TrainingRun` writes into a folder no command claimed
STAGE = "a stage of `rlp run`"  # a stage folder: its manifest, inside a folder whose marker says `run`


def _contents(folder: Path) -> list[str]:
    """What a folder holds besides rlp's bookkeeping and hidden names (a trainer's ``.checkpoint.tmp``, the
    lock); a fingerprint.json that is not rlp's marker is the user's file and counts."""
    ours = BOOKKEEPING if read_fingerprint(folder) else (LOCK,)
    return sorted(p.name for p in folder.iterdir() if p.name not in ours and not p.name.startswith("."))


def folder_kind(folder: Path) -> str | None:
    """Who wrote ``folder``, by rlp's marker alone (never by file names, which the user may share): its
    fingerprint's command (`PYTHON` for a trainer's own marker); `STAGE` for a folder with a stage manifest
    inside an `rlp run` folder; None when absent or empty; else `FOREIGN`."""
    recorded = read_fingerprint(folder) if folder.is_dir() else None
    if recorded:
        return recorded.get("command") or FOREIGN
    if not folder.is_dir() or not _contents(folder):
        return None
    if (folder / "manifest.json").exists() and (read_fingerprint(folder.parent) or {}).get("command") == "run":
        return STAGE
    return FOREIGN


def _own_folder(folder: Path, command: str | None) -> None:
    kind = folder_kind(folder)
    if kind is None or kind == command:
        return
    if kind == FOREIGN:
        names = ", ".join(_contents(folder)[:5])
        note = _overwrite_note(command, ", and --overwrite does not change that: it replaces only what the same "
                                        "command wrote")
        raise UserError(f"{folder} holds files rlp did not write ({names}): it has no rlp marker ({FINGERPRINT}), so "
                        f"rlp will not write into it{note}. Choose another (new or empty) output folder, or move those "
                        "files away.")
    if command is None and kind in (*TRAINERS, PYTHON, STAGE):
        return  # a trainer from Python or a pipeline stage: the command boundary checked the rest
    if kind == PYTHON and command in TRAINERS:
        return  # a trainer's folder made from Python: the CLI trainer takes it over (`claim_output`)
    origin = f"is {kind}" if kind.startswith(("a ", "the ")) else f"was written by `rlp {kind}`"
    note = _overwrite_note(command, ", and --overwrite does not change that: it replaces only what the same "
                                    "command wrote")
    raise UserError(f"{folder} {origin}; `rlp {command or 'this trainer'}` will not write into it{note}. Choose "
                    "another output folder.")


def _inside_another_run(path: Path, command: str) -> None:
    """A command's output may not lie inside a folder an rlp command made (its marker): that folder's own
    rerun or ``--overwrite`` would delete it, and a file added there makes a finished run unfinished."""
    for parent in _real(path).parents:
        if (parent / FINGERPRINT).is_file() and (kind := folder_kind(parent)) not in (None, FOREIGN):
            origin = f"is {kind}" if kind.startswith(("a ", "the ")) else f"was made by `rlp {kind}`"
            raise UserError(f"the output {path} lies inside {parent}, which {origin}: rlp writes into a folder "
                            f"it made only as that folder's own command (a rerun of it would delete or mix with this "
                            f"output). Choose an output outside {parent}.")


def _sidecar(path: Path) -> Path:
    """Where a file output's record lives: ``.<name>.rlp.json`` beside it (the command and the digest)."""
    return path.parent / f".{path.name}.rlp.json"


def _own_file(path: Path, command: str | None) -> None:
    if not path.exists():
        return
    try:
        record = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{path} exists and was not written by rlp; `rlp {command}` will not replace it. Choose "
                        "another output file, or move it away.")
    if record.get("command") != command:
        raise UserError(f"{path} was written by `rlp {record.get('command')}`; `rlp {command}` replaces only "
                        "what the same command wrote. Choose another output file.")
    if record.get("digest") != file_digest(path):
        raise UserError(f"{path} was changed after `rlp {command}` wrote it; rlp will not replace the changed "
                        "file. Choose another output file, or move it away.")


def _own_cache(path: Path) -> None:
    """An LLM judge's cache is shared by every command: any existing one must hold only cache rows."""
    if not path.exists():
        return
    if not path.is_file():  # a device or a pipe: endless, or blocking (issue 30 §4)
        raise UserError(f"the cache {path} is not a regular file; choose another cache_path.")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError):
        rows = [None]
    if not all(isinstance(r, dict) and {"key", "verdict"} <= r.keys() for r in rows):
        raise UserError(f"the cache {path} exists and is not an rlp judge cache (rows of key and verdict); rlp "
                        "will not append to it. Choose another cache_path.")


def output_digests(folder: Path) -> dict[str, str]:
    """Each result file under ``folder`` by content: what a finished folder held when its command ended
    (bookkeeping, hidden files and checkpoints left out)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in NOT_OUTPUTS and not d.startswith("."))
        for name in sorted(files):
            if name not in BOOKKEEPING and not name.startswith("."):
                path = Path(root) / name
                found[str(path.relative_to(folder))] = file_digest(path)
    return found


def changed_outputs(folder: Path, recorded: dict[str, str], *, edits_only: bool = False) -> list[str]:
    """The recorded outputs of ``folder`` that differ now, and (unless ``edits_only``) those gone and any
    result file added since: a finished run is only what it recorded; a rerun of any other command loses
    only what it would overwrite."""
    now = output_digests(folder)
    names = set(recorded) & set(now) if edits_only else set(recorded) | set(now)
    return sorted(k for k in names if recorded.get(k) != now.get(k))


def record_outputs(command: str | None, outputs: list[tuple[Path, str]]) -> None:
    """After a command succeeded: its folder's outputs into its fingerprint, each file's digest beside it."""
    for path, kind in outputs:
        if kind == "folder" and read_fingerprint(path):
            write_json(path / FINGERPRINT, {**read_fingerprint(path), "outputs": output_digests(path)})
        elif kind == "file" and path.is_file():
            write_json(_sidecar(path), {"command": command, "digest": file_digest(path)})


# --------------------------------------------------------------------------------------------------
# Replacing and deleting: only what rlp wrote and recorded

RUN_STATE = ("metrics.jsonl", "tensorboard/")  # what a trainer writes while it runs, before its outputs are recorded


def unowned_files(folder: Path, recorded: dict[str, str] | None, also: tuple[str, ...] = ()) -> list[str]:
    """The files under ``folder`` that rlp did not write: not among ``recorded`` (a finished command's outputs,
    `record_outputs`), and, while a run is unfinished (``recorded`` None), not its run state (the metrics log and
    TensorBoard events), nor ``also`` (a stage's manifest); inside a checkpoint, the files its trainer state
    does not list. Bookkeeping and hidden files are never counted."""
    def ours(name: str) -> bool:
        if name in also or (recorded is not None and name in recorded):
            return True
        return recorded is None and (name == RUN_STATE[0] or
                                     (name.startswith(RUN_STATE[1]) and ".tfevents." in name))
    return [name for name in output_digests(folder) if not ours(name)] + _checkpoint_strays(folder)


CHECKPOINT_FILES = "files"  # the key of a checkpoint's trainer_state.json listing the files it saved


def _checkpoint_strays(folder: Path) -> list[str]:
    """Files inside a checkpoint that its ``trainer_state.json`` does not list (the checkpoint is replaced and
    deleted whole, so a file the user put there would go with it)."""
    found = []
    for name in NOT_OUTPUTS[:2]:  # checkpoint/, .checkpoint.old/ (.checkpoint.tmp: a save cut short, rlp's)
        saved = folder / name
        if not saved.is_dir():
            continue
        try:
            listed = set(json.loads((saved / "trainer_state.json").read_text()).get(CHECKPOINT_FILES, []))
        except (OSError, ValueError, AttributeError):
            listed = set()
        found += [f"{name}/{rel}" for p in sorted(saved.rglob("*")) if p.is_file()
                  and (rel := str(p.relative_to(saved))) != "trainer_state.json" and rel not in listed]
    return found


def refuse_unowned(folder: Path, recorded: dict[str, str] | None, action: str, also: tuple[str, ...] = ()) -> None:
    """Stop (`UserError`) before ``action`` (deleting, replacing) ``folder`` when it holds a file rlp did not
    write: the user's own file there is named and nothing is touched."""
    if folder.is_dir() and (found := unowned_files(folder, recorded, also)):
        raise UserError(f"{folder} holds files rlp did not write ({', '.join(found[:5])}); {action} would delete "
                        "them, so rlp stops and changes nothing. Move them out of that folder, or choose another "
                        "output folder.")


def clear_run(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """``--overwrite`` of a trainer's folder: delete its earlier run (checkpoints, metrics, TensorBoard, model,
    summary, extra files), and only that: a file rlp did not write and record there is refused first. ``keep``:
    rlp's files that are not the run's (a stage's manifest)."""
    old = read_fingerprint(folder) or {}
    refuse_unowned(folder, old.get("outputs"), "--overwrite", also=keep)
    delete_owned(folder, keep)
    if old.get("outputs"):
        write_json(folder / FINGERPRINT, {k: v for k, v in old.items() if k != "outputs"})


def delete_owned(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete a folder's result files, checkpoints and the folders they leave empty, once `refuse_unowned`
    found them all rlp's; hidden files (never rlp's results) and ``keep`` stay."""
    (folder / "summary.json").unlink(missing_ok=True)  # first: never a finished run with half its files
    for name in NOT_OUTPUTS:
        shutil.rmtree(folder / name, ignore_errors=True)
    for name in output_digests(folder):
        if name not in keep:
            (folder / name).unlink(missing_ok=True)
    for root, dirs, _ in sorted(os.walk(folder, topdown=False)):  # the emptied folders (model/, tensorboard/)
        for d in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / d).rmdir()


# --------------------------------------------------------------------------------------------------
# Claiming the outputs


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _has_run(folder: Path) -> str | None:
    if (folder / "summary.json").exists():
        return "a finished run"
    if any((folder / name / "trainer_state.json").exists() for name in ("checkpoint", ".checkpoint.old")):
        return "a checkpoint"
    return None


def check_folder(command: str, folder: Path, new: dict[str, Any], overwrite: bool) -> None:
    """Refuse ``folder`` when it holds a run of this command with other settings, or outputs changed since
    the command that wrote them ended (who may write it at all is `guard_output`'s question)."""
    old = read_fingerprint(folder) if folder.is_dir() else None
    if old is None or old.get("command") != command or overwrite:
        return
    held = _has_run(folder) if command in TRAINERS else None
    if held and old.get("hash") != new["hash"]:
        changed = ", ".join(differences(old, new) or ["the fingerprint"])
        if held == "a finished run":
            raise UserError(f"{folder} holds a finished `rlp {command}` run made with other settings: {changed}. "
                            "It is not this run's result: rerun with the original settings, choose another output "
                            "folder, or pass --overwrite true to train afresh there.")
        raise UserError(f"{folder} holds a checkpoint of an `rlp {command}` run made with other settings: {changed}. "
                        "Resuming it would mix the two: rerun with the original settings to resume, choose another "
                        "output folder, or pass --overwrite true to start afresh there.")
    # A finished trainer run must be exactly what it recorded to be reported finished; a trainer's folder with
    # only a checkpoint resumes (rewriting its outputs); any other command's rerun would overwrite edited files
    # (a removed output, such as a stage folder deleted to rerun it, is simply made again).
    finished = held == "a finished run"
    verify = "outputs" in old and (finished or command not in TRAINERS)
    changed = changed_outputs(folder, old["outputs"], edits_only=not finished) if verify else []
    if changed:
        what = "a finished run whose" if finished else "outputs of an earlier run; its"
        retry = "pass --overwrite true to train afresh there" if command in TRAINERS else "move them away"
        raise UserError(f"{folder} holds {what} outputs were changed after `rlp {command}` wrote them "
                        f"({', '.join(changed[:5])}), so it is not reported finished and is not replaced: "
                        f"choose another output folder, or {retry}.")


@contextlib.contextmanager
def claim_output(command: str, cfg: Any) -> Iterator[dict[str, Any] | None]:
    """Guard every output (`guard_output`), lock the output folder, check and record its fingerprint; yield
    the fingerprint; when the command succeeds, record its outputs by content (`record_outputs`).

    Only the main rank locks and writes (every rank of a multi-process run reads the same folder state).
    """
    inputs = config_inputs(cfg)
    outputs = config_outputs(command, cfg)
    folders = [path for path, kind in outputs if kind == "folder"]
    created = bool(folders) and not folders[0].exists()  # before guard_output, which creates it to test it
    main = _is_main_rank()
    overwrite = bool(getattr(cfg, "overwrite", False))
    try:
        for path, kind in outputs:
            guard_output(path, kind, command, inputs, locks=main)
        new = fingerprint(command, cfg, inputs) if folders else None
        if folders:
            check_folder(command, folders[0], new, overwrite)  # before locking: a refused folder is left as it was
        with contextlib.ExitStack() as locks:
            for path, kind in outputs if main else ():  # every output locked: a folder's .lock, a file's beside it
                if kind != "cache":  # a judge cache is shared by every command (appended to, row by row)
                    locks.enter_context(RunLock(path) if kind == "folder" else file_lock(path))
            for path, kind in outputs:  # again under the locks, which makes them final
                guard_output(path, kind, command, inputs, locks=main)
            if folders:
                check_folder(command, folders[0], new, overwrite)
            if folders and main:
                folder = folders[0]
                legacy_finished = (folder / "summary.json").exists() and folder_kind(folder) == PYTHON
                if overwrite and command in TRAINERS:
                    clear_run(folder)  # before the new fingerprint, with the old record: only rlp's files
                elif legacy_finished:
                    print(f"note: {folder} holds a finished run made from Python; its settings cannot be compared "
                          "(use --overwrite true to retrain)", file=sys.stderr)
                if not legacy_finished or overwrite:
                    old = read_fingerprint(folder) or {}
                    kept = {"outputs": old["outputs"]} if not overwrite and command in TRAINERS and \
                        old.get("hash") == new["hash"] and "outputs" in old else {}  # the finished result stands
                    write_json(folder / FINGERPRINT, {**new, **kept})
            yield new
            if main:
                record_outputs(command, outputs)
    except BaseException:
        if created and main:
            remove_if_only_bookkeeping(folders[0])  # a command refused before any work leaves no folder behind
        raise


def remove_if_only_bookkeeping(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but the lock and fingerprint files that `claim_output` wrote."""
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError:
        return
    if names <= set(BOOKKEEPING):
        for name in names:
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
