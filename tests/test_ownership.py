"""Issue 30 §1 and §4: rlp writes, replaces and deletes only what it owns; paths and resources are bounded.

Each test is one principle tried on a case the issue named (and fails without the change): a marker decides
what rlp owns, never a file name; every output (file or folder) is locked; a replacement or deletion first
refuses any file rlp did not record; ``~`` is expanded by one function; only regular files are read, one
bounded line at a time; a LoRA rank above the layer width and tokenising unread rows are refused or avoided.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest

from rlp_align import cli
from rlp_align.core.config import build_config
from rlp_align.core.errors import DataError, UserError
from rlp_align.core.io import read_rows
from rlp_align.core.run_folder import FINGERPRINT, claim_output
from rlp_align.pipeline.stages import StageCache
from rlp_align.train.reward import RewardConfig, rows_read
from rlp_align.train.training import batch_indices

PAIR = {"prompt": "Name a fruit.", "chosen": "A banana.", "rejected": "A rock."}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reward(tmp: Path, out: Path, *extra: str) -> list[str]:
    return ["reward", "--model", "tiny", "--train_file", str(_jsonl(tmp / "d.jsonl", [PAIR])), "--output_dir",
            str(out), "--optim.max_steps", "1", "--optim.batch_size", "2", "--max_length", "32", *extra]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out + err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# §1: ownership by marker, locks on every output, deletions only of recorded files


@pytest.mark.parametrize("files", [{"summary.json": '{"train": {"loss": 0.1}}'},  # F13: printed as a finished run
                                   {"metrics.jsonl": '{"step": 1}\n', "tensorboard/notes.txt": "mine"}])  # F12
def test_a_folder_without_rlps_marker_is_the_users_whatever_its_file_names(tmp_path, capsys, files):
    out = tmp_path / "out"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = _tree(out)
    code, text = _cli(_reward(tmp_path, out), capsys)
    assert code == 2 and "holds files rlp did not write" in text and sorted(files)[0].split("/")[0] in text, text
    assert _tree(out) == before and not (out / FINGERPRINT).exists()


def test_an_output_file_is_locked_while_a_command_writes_it(tmp_path, capsys):
    """K01: two `rlp sample` on one --output_file both exited 0; the second now stops, naming the holder."""
    target = tmp_path / "samples.jsonl"
    fd = os.open(tmp_path / ".samples.jsonl.lock", os.O_RDWR | os.O_CREAT)  # another process's hold on it
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, f"{os.getppid()}\n".encode(), 0)
    try:
        code, text = _cli(["sample", "--policy", "tiny", "--prompts_file", str(_jsonl(tmp_path / "p.jsonl", [
            {"prompt": "Hi"}])), "--output_file", str(target), "--n", "1", "--max_new_tokens", "2"], capsys)
    finally:
        os.close(fd)
    assert code == 2 and f"{target} is in use by another rlp process (PID {os.getppid()})" in text, text
    assert not target.exists()


def test_a_claimed_file_output_holds_its_lock_and_removes_it_after(tmp_path):
    from rlp_align.train.sample import SampleConfig

    cfg = build_config(SampleConfig, {"policy": "tiny", "prompts_file": str(_jsonl(tmp_path / "d.jsonl", [PAIR])),
                                      "output_file": str(tmp_path / "s.jsonl")})
    lock = tmp_path / ".s.jsonl.lock"
    with claim_output("sample", cfg):
        fd = os.open(lock, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert not lock.exists()


def test_overwrite_deletes_only_recorded_files_and_outputs_stay_out_of_other_runs(tmp_path, capsys):
    """F09: a file written inside a finished run's model/ was deleted by --overwrite."""
    out = tmp_path / "out"
    assert _cli(_reward(tmp_path, out), capsys)[0] == 0
    code, text = _cli(["sample", "--policy", "tiny", "--prompts_file", str(_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "Hi"}])), "--output_file", str(out / "model" / "answers.jsonl")], capsys)
    assert code == 2 and "lies inside" in text and "made by `rlp reward`" in text, text
    mine = out / "model" / "my-notes.txt"
    mine.write_text("the user's")
    before = _tree(out)
    code, text = _cli(_reward(tmp_path, out, "--overwrite", "true"), capsys)
    assert code == 2 and "model/my-notes.txt" in text and "rlp did not write" in text, text
    assert _tree(out) == before
    mine.unlink()
    code, text = _cli(_reward(tmp_path, out, "--overwrite", "true"), capsys)  # only rlp's files: it retrains
    assert code == 0, text


def test_a_stage_rerun_with_changed_settings_deletes_only_what_the_stage_recorded(tmp_path):
    """F14: a changed `rlp run` replaced a stage folder and deleted the user's file in it."""
    cache = StageCache(tmp_path / "run", log=lambda _: None)
    assert json.loads((tmp_path / "run" / FINGERPRINT).read_text())["command"] == "run"  # the marker, first

    def stage(folder: Path) -> dict:
        (folder / "pool.jsonl").write_text("{}\n")
        return {"pool": str(folder / "pool.jsonl")}

    cache.run("00_pool", {"n": 1}, stage)
    mine = tmp_path / "run" / "00_pool" / "mine.txt"
    mine.write_text("the user's")
    with pytest.raises(UserError, match="mine.txt"):
        cache.run("00_pool", {"n": 2}, stage)
    assert mine.read_text() == "the user's"
    mine.unlink()
    assert cache.run("00_pool", {"n": 2}, stage)["pool"].endswith("pool.jsonl")  # only its own: replaced
    user = tmp_path / "run" / "01_next"  # a folder of the user's where a stage goes is refused too
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):
        cache.run("01_next", {}, stage)


def test_unowned_files_are_those_neither_recorded_nor_run_state_nor_listed_by_a_checkpoint(tmp_path):
    """Found by the fuzzer: a file of the user's inside a finished run's checkpoint/ went with --overwrite."""
    from rlp_align.core.run_folder import unowned_files

    for name, text in {"metrics.jsonl": "{}", "tensorboard/events.out.tfevents.1": "x", "tensorboard/mine.txt": "m",
                       "notes.txt": "m", "checkpoint/model.safetensors": "w", "checkpoint/mine.txt": "m",
                       "checkpoint/trainer_state.json": json.dumps({"step": 1, "files": ["model.safetensors"]}),
                       ".hidden": "h"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert unowned_files(tmp_path, None) == ["notes.txt", "tensorboard/mine.txt", "checkpoint/mine.txt"]
    recorded = {"metrics.jsonl": "", "notes.txt": ""}  # a finished run's record: the run state is in it or not ours
    assert unowned_files(tmp_path, recorded) == ["tensorboard/events.out.tfevents.1", "tensorboard/mine.txt",
                                                 "checkpoint/mine.txt"]


def test_a_pipeline_folder_of_the_users_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.txt").write_text("mine")
    with pytest.raises(UserError, match="plan.txt"):
        StageCache(tmp_path / "run")


# --------------------------------------------------------------------------------------------------
# §4: paths and resources


def test_tilde_is_expanded_in_every_path_setting_and_reader(tmp_path, monkeypatch):
    """B13: `~` in --output_dir, in YAML or in a file path made a literal ./~ folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    _jsonl(tmp_path / "d.jsonl", [PAIR])
    cfg = build_config(RewardConfig, {"model": "tiny", "train_file": "~/d.jsonl", "output_dir": "~/out"})
    assert (cfg.train_file, cfg.output_dir) == (str(tmp_path / "d.jsonl"), str(tmp_path / "out"))
    assert [row for _, row in read_rows("~/d.jsonl")] == [PAIR]


def test_only_regular_files_are_read(tmp_path):
    """N16: `rlp data inspect /dev/zero --head 1` read one endless line into 23 GB."""
    with pytest.raises(UserError, match="not a regular file"):
        list(read_rows("/dev/zero"))
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):  # would block forever on open
        list(read_rows(fifo))


def test_a_line_longer_than_the_bound_is_refused_without_reading_past_it(tmp_path, monkeypatch):
    monkeypatch.setattr("rlp_align.core.io.MAX_LINE", 1000)
    path = tmp_path / "d.jsonl"
    path.write_bytes((json.dumps(PAIR) + "\n").encode() + b"\0" * 5000)
    rows = read_rows(path)
    assert next(rows) == (1, PAIR)
    with pytest.raises(DataError, match="longer than") as e:
        next(rows)
    assert "row 2: a line longer than" in str(e.value)


def test_lora_rank_above_the_layer_width_is_refused(tmp_path, capsys):
    """C11: --lora.r 100000 on a 64-wide model took 6.6 GB."""
    code, text = _cli(_reward(tmp_path, tmp_path / "out", "--lora.enabled", "true", "--lora.r", "100000"), capsys)
    assert code == 2 and "lora.r 100000 is above the width of this model's layers" in text, text


@pytest.mark.parametrize("rows,batch,steps", [(10, 3, 1), (10, 3, 4), (10, 3, 50), (7, 7, 2), (5, 8, 1), (9, 2, 0)])
def test_rows_read_are_exactly_the_rows_the_batches_touch(rows, batch, steps):
    brute = sorted({j for s in range(steps) for j in batch_indices(rows, batch, s, seed=3)})
    assert rows_read(rows, batch, steps, seed=3) == brute


def test_a_one_step_reward_run_tokenises_one_batch_not_the_file(tmp_path, capsys, monkeypatch):
    """N13: a 1-step run on a 1M-row file tokenised every row first (218 s, 2.07 GB)."""
    from rlp_align.train import reward

    seen = []
    original = reward.encode_preferences
    monkeypatch.setattr(reward, "encode_preferences", lambda tok, prefs, n: seen.append(len(prefs)) or
                        original(tok, prefs, n))
    rows = [{**PAIR, "prompt": f"Name fruit {i}."} for i in range(400)]
    argv = _reward(tmp_path, tmp_path / "out", "--eval_fraction", "0")
    argv[argv.index("--train_file") + 1] = str(_jsonl(tmp_path / "big.jsonl", rows))
    code, text = _cli(argv, capsys)
    assert code == 0, text
    assert seen[0] == 2 and json.JSONDecoder().raw_decode(text[text.index("{"):])[0]["train_pairs"] == 400
    assert np.all(np.array(seen[1:]) == 0)  # the (empty) held-out set
