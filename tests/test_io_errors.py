"""I/O errors become one paragraph naming the path and the cause (rlp_align.core.io.io_errors, the CLI boundary).

The end-to-end cases (a full disk at the final save and at a checkpoint, permission denied, a file where a
folder is expected) are rows of tests/test_bad_input.py; these tests pin the translation itself.
"""

from __future__ import annotations

import errno
import os

import pytest

from rlp_align import cli
from rlp_align.core.errors import UserError
from rlp_align.core.io import append_jsonl, atomic_path, io_errors, write_json


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_keeps_the_old_file_and_names_path_and_cause(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    write_json(target, {"old": True})
    monkeypatch.setattr("rlp_align.core.io.os.replace", enospc)
    with pytest.raises(UserError) as err:
        write_json(target, {"new": True})
    assert str(err.value).startswith(f"{target}: No space left on device; free some space")
    assert target.read_text() == '{\n  "old": true\n}\n'  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind


def test_metrics_append_on_a_full_disk(tmp_path, monkeypatch):
    class Full:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        write = flush = enospc

    monkeypatch.setattr("builtins.open", lambda *a, **k: Full())
    with pytest.raises(UserError, match=r"metrics.jsonl: No space left on device"):
        append_jsonl(tmp_path / "metrics.jsonl", {"step": 1})


@pytest.mark.parametrize("error,expected", [
    (RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/0: "
                  "file write failed"), "the write failed ([enforce fail"),
    (Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
               'device" })'), "No space left on device"),
    (Exception("Os { code: 13, kind: PermissionDenied }"), "Permission denied; check the permissions"),
])
def test_write_failures_that_are_not_oserrors(tmp_path, error, expected):
    with pytest.raises(UserError) as err, io_errors(tmp_path / "checkpoint"):
        raise error
    assert str(err.value).startswith(f"{tmp_path / 'checkpoint'}: ") and expected in str(err.value)


def test_torch_write_failure_on_a_full_disk_says_so(tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr("rlp_align.core.io.shutil.disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(UserError, match=r"checkpoint: No space left on device"), io_errors(tmp_path / "checkpoint"):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(RuntimeError, match="shape mismatch"), io_errors(tmp_path):
        raise RuntimeError("shape mismatch")  # a bug, not I/O: keeps its traceback
    with pytest.raises(UserError, match="^bad row$"), io_errors(tmp_path):
        raise UserError("bad row")


def test_a_file_where_a_folder_is_needed(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="/f: File exists; a file already has this name where a folder is needed"):
        with atomic_path(tmp_path / "f" / "model") as tmp:
            tmp.mkdir()
    with pytest.raises(UserError, match="Not a directory; a part of this path is a file"):
        with atomic_path(tmp_path / "f" / "run" / "model") as tmp:
            tmp.mkdir()
    assert (tmp_path / "f").read_text() == "x"


def test_cli_turns_a_stray_oserror_into_one_paragraph(monkeypatch, capsys):
    import rlp_align.judge.evaluate

    def fail(cfg):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/prefs.jsonl")

    monkeypatch.setattr(rlp_align.judge.evaluate, "run_rm_accuracy", fail)
    assert cli.main(["eval", "rm-accuracy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /data/prefs.jsonl: Permission denied; check the permissions") and "\n\n" not in err

    def torch_fail(cfg):
        raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")

    monkeypatch.setattr(rlp_align.judge.evaluate, "run_rm_accuracy", torch_fail)
    assert cli.main(["eval", "rm-accuracy"]) == 2
    assert "a write failed: PytorchStreamWriter failed" in capsys.readouterr().err
