"""The pipeline's stage cache: one folder and one manifest per stage.

A stage is identified by its name and a *key*: the arguments its function receives (`StageCache.stage`):
its config sections, the plain values it borrows, and the hashes of the stages whose outputs it consumes. A rerun skips a stage whose manifest says ``done`` with the same key hash; a changed knob
changes the hash of that stage and of everything downstream, so only those rerun. A stage that was
killed midway has a ``running`` manifest; it reruns in the same folder, where its trainer resumes from
its own checkpoint. A stage folder whose key changed is wiped before rerunning.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlp_align.core.config import config_hash
from rlp_align.core.io import write_json
from rlp_align.core.run_folder import (
    FINGERPRINT,
    delete_owned,
    folder_kind,
    guard_output,
    input_digest,
    marker,
    output_digests,
    refuse_unowned,
)


def library_versions() -> dict[str, str]:
    import accelerate
    import torch
    import transformers

    from rlp_align import __version__

    return {"rlp_align": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


# Knobs that change how a stage runs, not what it computes (resume is exact): left out of the stage keys, so
# keeping checkpoints or saving more often does not rerun finished stages. Dropped at any depth of a section.
NOT_IN_STAGE_KEYS = ("output_dir", "overwrite", "save_every", "keep_checkpoint")


def _without_run_knobs(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_run_knobs(v) for k, v in value.items() if k not in NOT_IN_STAGE_KEYS}
    if isinstance(value, list):
        return [_without_run_knobs(v) for v in value]
    return value


class StageCache:
    """Runs stages in ``run_dir``, skipping the ones already done with the same key."""

    def __init__(self, run_dir: str | Path, log: Callable[[str], None] = print):
        self.run_dir = Path(run_dir)
        # rlp's marker first (`rlp run` wrote it already; a pipeline run from Python writes it here): stage
        # folders are rlp's only inside a marked run folder, and a folder of the user's is refused
        guard_output(self.run_dir, "folder", "run", {})
        if folder_kind(self.run_dir) is None:
            write_json(self.run_dir / FINGERPRINT, marker("run"))
        self.log = log
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def manifest_path(self, name: str) -> Path:
        return self.run_dir / name / "manifest.json"

    def read_manifest(self, name: str) -> dict[str, Any] | None:
        path = self.manifest_path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def key_of(self, value: Any) -> Any:
        """What an argument of a stage contributes to its key: a config section without its run knobs, an
        upstream stage's outputs as that stage's hash, a path a stage wrote as that stage's hash."""
        if dataclasses.is_dataclass(value):  # its paths (data files, a local model) count by content too
            return self.key_of(_without_run_knobs(dataclasses.asdict(value)))
        if isinstance(value, dict) and "hash" in value and "stage" in value:
            return value["hash"]
        if isinstance(value, dict):
            return {k: self.key_of(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.key_of(v) for v in value]
        if isinstance(value, (str, Path)):
            return self.stamp(value)
        return value

    def stamp(self, path: str | Path) -> str:
        """A path's identity for keys: the hash of the stage that wrote it; for an existing file or folder
        from outside the run, the path and a digest of its content (an edited data file reruns what reads it);
        else the string itself (a built-in model name, a method)."""
        p = Path(path)
        for parent in (p, *p.parents):
            manifest = self.read_manifest(parent.name) if parent.parent == self.run_dir else None
            if manifest:
                return manifest["hash"]
        if str(path).strip() and p.exists():
            return f"{path} content:{input_digest(p)}"
        return str(path)

    def stage(self, name: str, fn: Callable[..., dict[str, Any]], /, **inputs: Any) -> dict[str, Any]:
        """Run ``fn(**inputs, folder=...)`` through `run`, keyed on exactly the arguments it receives."""
        return self.run(name, {k: self.key_of(v) for k, v in inputs.items()}, lambda folder: fn(**inputs,
                                                                                                 folder=folder))

    def run(self, name: str, key: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn(folder) -> outputs`` unless done with this key; return outputs plus the stage ``hash``."""
        digest = config_hash(key)
        folder = self.run_dir / name
        manifest = self.read_manifest(name)
        if manifest and manifest.get("hash") == digest and manifest.get("status") == "done":
            self.skipped.append(name)
            self.log(f"[cached] {name}")
            return {**manifest["outputs"], "hash": digest, "stage": name}
        if manifest and manifest.get("hash") != digest:  # a knob changed: the old work is not this stage's
            # only what the stage wrote and recorded (a crashed one: its run state) is deleted
            refuse_unowned(folder, manifest.get("files") if manifest.get("status") == "done" else None,
                           f"rerunning the stage {name} with changed settings", also=("manifest.json",))
            delete_owned(folder)
        elif not manifest and folder.is_dir() and any(folder.iterdir()):
            refuse_unowned(folder, {}, f"running the stage {name} there")  # a folder of the user's, not a stage's
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        write_json(self.manifest_path(name), {"stage": name, "hash": digest, "status": "running",
                                              "inputs": key, "started": started})
        outputs = fn(folder)
        seconds = time.time() - started
        write_json(self.manifest_path(name), {
            "stage": name, "hash": digest, "status": "done", "inputs": key, "outputs": outputs,
            "files": output_digests(folder),  # what the stage wrote: the only files a changed rerun may delete
            "started": started, "finished": time.time(), "seconds": seconds, "versions": library_versions(),
        })
        self.ran.append(name)
        self.log(f"[done] {name} in {seconds:.0f}s: {summarise(outputs)}")
        return {**outputs, "hash": digest, "stage": name}


def summarise(outputs: dict[str, Any]) -> str:
    """One line of a stage's headline numbers for the console."""
    parts = []
    for key, value in outputs.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        elif isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{key}={value}")
    return ", ".join(parts[:6]) or "ok"


def stage_status(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every stage folder's manifest summary, in the order the stages started."""
    rows = []
    for manifest in sorted(Path(run_dir).glob("*/manifest.json")):
        m = json.loads(manifest.read_text())
        rows.append({"stage": m["stage"], "status": m["status"], "seconds": m.get("seconds"),
                     "started": m.get("started", 0)})
    return sorted(rows, key=lambda r: r["started"])
