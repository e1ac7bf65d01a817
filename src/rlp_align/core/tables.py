"""Columnar inputs: parquet files and Hugging Face `datasets` folders (``Dataset.save_to_disk``).

Preference and instruction data are mostly published in these two forms. Both are turned into the same
``(row number, dict)`` stream that `rlp_align.core.io.read_rows` yields for JSON and JSONL, so format
detection, row-level errors and ``--skip_invalid`` work the same for every kind of file.

A null cell is a missing field: parquet gives every row every column of the file's schema, so a field
that some rows lack comes back as ``None`` there, and keeping it would make the format detector see keys
the row never had.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlp_align.core.errors import UserError

PARQUET_MAGIC = b"PAR1"
_BATCH_ROWS = 1024  # rows converted to Python at a time: a large file is never held twice in memory


def is_parquet(path: Path) -> bool:
    """A parquet file: named so, or starting with parquet's magic bytes whatever its name."""
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def is_dataset_folder(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (state.json) or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _present(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if v is not None}


def parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (row number from 1, row dict) from a parquet file, one record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        batches = table.iter_batches(batch_size=_BATCH_ROWS)
        first = next(batches, None)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable parquet file ({_first_line(e)}); write it again with "
                        "pyarrow or pandas, or convert it to JSONL") from None
    if first is None or table.metadata.num_rows == 0:
        raise UserError(f"{path}: the parquet file has no rows")
    i = 0
    batch = first
    while batch is not None:
        for row in batch.to_pylist():
            i += 1
            yield i, _present(row)
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise UserError(f"{path}: the parquet file is damaged after row {i} ({_first_line(e)})") from None


def dataset_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (row number from 1, row dict) from a ``save_to_disk`` folder; a `DatasetDict` must name its
    split (``folder/train``) unless it holds only one or has a ``train`` split."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: dataset_dict.json is unreadable ({_first_line(e)})") from None
        if not isinstance(splits, list) or not splits:
            raise UserError(f"{path}: dataset_dict.json lists no splits")
        if len(splits) > 1 and "train" not in splits:
            raise UserError(f"{path}: a dataset with splits {splits}; give one split's folder, e.g. "
                            f"{path / str(splits[0])}")
        path = path / ("train" if "train" in splits else str(splits[0]))
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, ArrowInvalid, JSONDecodeError ...
        raise UserError(f"{path}: not a readable `datasets` folder ({type(e).__name__}: {_first_line(e)}); "
                        "save it again with Dataset.save_to_disk, or convert it to JSONL") from None
    if len(data) == 0:
        raise UserError(f"{path}: the dataset has no rows")
    for i, row in enumerate(data, 1):
        yield i, _present(row)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
