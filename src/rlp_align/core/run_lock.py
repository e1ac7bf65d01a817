"""The run lock: one live process per output folder, and none writing above or below a folder another holds.

A command writing a folder holds an exclusive ``flock`` on ``<folder>/.lock``, whose text names its PID. A
second process on the same folder stops with exit 2 naming that PID. The kernel drops the lock when its holder
dies, so a lock left by a crash is taken over (with a message). `other_holders` extends the lock to nested
paths: an output inside a locked folder (``X/model`` beside a live run in ``X``, which would be deleted when
that run saves) or containing one is refused as well (`rlp_align.core.run_folder.guard_output`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from pathlib import Path

from rlp_align.core.errors import UserError

LOCK = ".lock"


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

    def __init__(self, folder: str | Path, name: str = LOCK, *, what: str | Path | None = None):
        self.path = Path(folder) / name
        self.what = what or self.path.parent  # what the message says is in use
        self.owned_file = name != LOCK  # a file output's lock is removed on release (`file_lock`)
        self.key: str | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self.key = key
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                pid = _pid_in(self.path)
                raise UserError(f"{self.what} is in use by another rlp process (PID {pid or 'unknown'}): wait for it "
                                "to finish, stop it, or choose another output") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the lock file (a file output's) as we opened it: take the new one
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
            if self.owned_file:  # still held: whoever opens the old file after this sees it gone and retries
                Path(self.key).unlink(missing_ok=True)
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])
        self.key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def file_lock(path: str | Path) -> RunLock:
    """The lock of a file output: ``.<name>.lock`` beside it, held while the command runs and removed after,
    so two commands writing one ``--output_file`` cannot both run (the second would be replaced by the first's
    rename, or replace it)."""
    path = Path(path)
    return RunLock(path.parent, f".{path.name}.lock", what=path)


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


def other_holders(path: str | Path) -> list[tuple[Path, int]]:
    """``(folder, pid)`` for every folder at, above or below ``path`` whose run lock a live process other
    than this one holds (this process's own locks, `_HELD`, are re-entrant and do not count)."""
    real = Path(os.path.realpath(path))
    locks = [folder / LOCK for folder in (real, *real.parents)]
    if real.is_dir():
        locks += [Path(root) / LOCK for root, _, files in os.walk(real) if LOCK in files]
    found = []
    for lock in dict.fromkeys(locks):
        if str(lock) in _HELD or not lock.is_file():
            continue
        try:
            pid = lock_holder(lock.parent)
        except OSError:  # an unreadable lock file: not ours to judge
            continue
        if pid is not None and pid != os.getpid():
            found.append((lock.parent, pid))
    return found
