"""Run an `rlp` command that SIGKILLs itself at a deterministic point (the fault-tolerance tests).

    python tests/kill_point.py POINT -- <rlp arguments>

POINT is one of
    checkpoint:DIR:K     the first backward pass once DIR/checkpoint holds step >= K, i.e. mid-way through step
                         K + 1 (after its gradients, before its optimiser step)
    after:MODULE:NAME    the return of the first call of MODULE.NAME (the command looks it up at call time)
    rename:NAME          an atomic write of a file called NAME, complete in its temporary path, just before the
                         rename that would publish it

A kill sent by the test from a timer lands wherever the machine's load has got the command to: on a loaded
machine the command may even finish first. These points are reached by the command itself, so the test
kills at the same point every time, however busy the machine is. The process ends with SIGKILL (exit -9):
no handler, no flush, no cleanup, exactly like an external kill -9. ``stop@POINT`` stops the process there
(SIGSTOP) instead: frozen, it still holds its run lock, until the test kills it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
from pathlib import Path

SIGNAL = signal.SIGKILL


def die() -> None:
    os.kill(os.getpid(), SIGNAL)


def checkpoint_step(folder: Path) -> int:
    try:
        return json.loads((folder / "checkpoint" / "trainer_state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def arm(point: str) -> None:
    kind, _, rest = point.partition(":")
    if kind == "checkpoint":
        folder, k = rest.rsplit(":", 1)
        import accelerate

        backward = accelerate.Accelerator.backward

        def killing_backward(self, *args, **kwargs):
            backward(self, *args, **kwargs)
            if checkpoint_step(Path(folder)) >= int(k):
                die()

        accelerate.Accelerator.backward = killing_backward
    elif kind == "after":
        module_name, name = rest.split(":")
        module = importlib.import_module(module_name)
        original = getattr(module, name)

        def killing(*args, **kwargs):
            original(*args, **kwargs)
            die()

        setattr(module, name, killing)
    elif kind == "rename":
        from rlp_align.core import io

        atomic_path = io.atomic_path

        @contextlib.contextmanager
        def killing_atomic_path(path):
            with atomic_path(path) as tmp:
                yield tmp
                if Path(path).name == rest:
                    assert tmp.exists()  # written in full, not yet renamed
                    die()

        io.atomic_path = killing_atomic_path
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, separator, *rlp_args = sys.argv[1:]
    assert separator == "--", __doc__
    if point.startswith("stop@"):
        SIGNAL, point = signal.SIGSTOP, point.removeprefix("stop@")
    arm(point)
    from rlp_align.cli import main

    sys.exit(main(rlp_args))
