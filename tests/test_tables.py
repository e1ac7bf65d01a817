"""Parquet files and Hugging Face `datasets` folders as preference and instruction data (issue 23 §4):
the same format detection, row-level errors and skip_invalid as JSON/JSONL, on files these tests make."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlp_align import cli
from rlp_align.core.errors import DataError, UserError
from rlp_align.data import inspect_file, read_instructions, read_preferences

TRL = [{"prompt": "Name a fruit.", "chosen": "A banana.", "rejected": "A rock."},
       {"prompt": "Name a stone.", "chosen": "Granite.", "rejected": "A pear."}]
ALPACAFARM = [{"instruction": "Name a fruit.", "input": "", "output_1": "A rock.", "output_2": "A banana.",
               "preference": 2}]


def parquet(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row gets every column, as in a real file
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), path)
    return path


def saved(path, rows):
    datasets.disable_progress_bars()
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def as_jsonl(tmp_path, rows):
    path = tmp_path / "same.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("make", [parquet, saved], ids=["parquet", "datasets"])
def test_preferences_read_like_jsonl(tmp_path, make):
    for rows in (TRL, ALPACAFARM):
        got, report = read_preferences(make(tmp_path / f"d{len(rows)}", rows), with_report=True)
        assert got == read_preferences(as_jsonl(tmp_path, rows))
        assert report.format == ("trl" if rows is TRL else "alpacafarm") and report.kept == len(rows)
    assert got[0].chosen == "A banana."  # preference 2 picked output_2


@pytest.mark.parametrize("make", [parquet, saved], ids=["parquet", "datasets"])
def test_bad_row_named_and_skippable(tmp_path, make):
    # a null cell is a missing field: row 2 lacks `rejected`
    path = make(tmp_path / "bad", [TRL[0], {"prompt": "Name a stone.", "chosen": "Granite.", "rejected": None}])
    with pytest.raises(DataError, match=r"row 2, field 'rejected': missing"):
        read_preferences(path)
    kept, report = read_preferences(path, skip_invalid=True, with_report=True)
    assert [p.chosen for p in kept] == ["A banana."] and report.rows == 2 and len(report.invalid) == 1


def test_mixed_formats_in_one_parquet_name_the_odd_row(tmp_path):
    # the union schema gives every row every column; nulls are dropped, so row 2 is an AlpacaFarm row
    path = parquet(tmp_path / "mixed.parquet", [TRL[0], ALPACAFARM[0]])
    with pytest.raises(DataError, match=r"row 2.*a 'alpacafarm' row in a 'trl' file"):
        read_preferences(path)


def test_parquet_detected_by_content_whatever_its_name(tmp_path):
    """Was: refused as "not valid UTF-8" (issue 23 §3)."""
    path = parquet(tmp_path / "train.jsonl", TRL)
    assert len(read_preferences(path)) == 2


def test_instructions_and_inspect(tmp_path):
    path = parquet(tmp_path / "i.parquet", [{"instruction": "Name a fruit.", "input": None, "output": "Kiwi"}])
    (item,) = read_instructions(path)
    assert item.text == "Name a fruit." and item.reference == "Kiwi"
    info = inspect_file(saved(tmp_path / "ds", TRL))
    assert info["format"] == "trl" and info["kept"] == 2


def test_dataset_dict_split(tmp_path):
    datasets.disable_progress_bars()
    two = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRL),
                                "test": datasets.Dataset.from_list(TRL[:1])})
    two.save_to_disk(str(tmp_path / "dd"))
    assert len(read_preferences(tmp_path / "dd")) == 2  # the train split
    assert len(read_preferences(tmp_path / "dd" / "test")) == 1
    no_train = datasets.DatasetDict({"a": datasets.Dataset.from_list(TRL), "b": datasets.Dataset.from_list(TRL)})
    no_train.save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(UserError, match=r"splits \['a', 'b'\]; give one split's folder"):
        read_preferences(tmp_path / "ab")


def test_damaged_inputs_are_one_paragraph_errors(tmp_path):
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(parquet(tmp_path / "whole.parquet", TRL).read_bytes()[:-40])
    with pytest.raises(UserError, match="not a readable parquet file"):
        read_preferences(cut)
    ds = saved(tmp_path / "ds", TRL)
    (ds / "state.json").write_text("{")
    with pytest.raises(UserError, match="not a readable `datasets` folder"):
        read_preferences(ds)


def test_reward_trains_on_a_parquet_file(tmp_path, capsys):
    path = parquet(tmp_path / "train.parquet", TRL)
    code = cli.main(["reward", "--model", "tiny", "--train_file", str(path), "--output_dir", str(tmp_path / "out"),
                     "--optim.max_steps", "1", "--optim.batch_size", "2", "--max_length", "64"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["train_pairs"] == 2
