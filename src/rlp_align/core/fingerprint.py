"""Run fingerprints: what produced an output folder (the command, its settings, its inputs by content).

`fingerprint` is recorded in ``<folder>/fingerprint.json`` by `rlp_align.core.run_folder.claim_output`; a trainer's
rerun into a folder holding a finished run or a checkpoint goes on only when the fingerprint matches (the
finished result is returned, or the checkpoint resumed), otherwise it stops naming the differing keys
(`differences`). When the command succeeds its result files are recorded by content too (``outputs``), so a
folder whose outputs were changed afterwards is not reported finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

FINGERPRINT = "fingerprint.json"
# rlp's marker: a fingerprint.json is rlp's only with this key, so a user's own file of that name is not one
MARKER = "rlp-align output folder"
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


TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja",
                   "chat_template.json"}


def input_digest(path: Path) -> str:
    """A file's `file_digest`; a folder's from its files' names and digests (a model folder: its config,
    weight index, weight and tokenizer files; a changed tokenizer changes every token the model reads, so a
    finished run on the old one is not this run: found by the fuzzer, issue 23 §5)."""
    if path.is_file():
        return file_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if (path / "config.json").exists():
        files = [p for p in files if p.name == "config.json" or p.suffix in (".safetensors", ".bin")
                 or p.name.endswith(".index.json") or p.name in TOKENIZER_FILES]
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
    return {**marker(command), "hash": hashlib.sha256(body.encode()).hexdigest()[:16], "settings": settings,
            "inputs": digests}


def marker(command: str) -> dict[str, str]:
    """What rlp writes first into every folder it makes (`fingerprint` adds the settings and inputs)."""
    return {"marker": MARKER, "command": command}


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


def read_fingerprint(folder: Path) -> dict[str, Any] | None:
    path = folder / FINGERPRINT
    try:
        data = json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("marker") == MARKER else None  # rlp's, not a namesake
