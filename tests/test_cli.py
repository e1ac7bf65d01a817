import json
import os
import subprocess
import sys

from helpers import tiny_reward_model

from rlp_align.cli import main


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "data inspect" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "rlp-align 0.1.0" in capsys.readouterr().out


def test_data_inspect(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n{bad\n")
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format: trl" in out and "invalid 1" in out and "row 2" in out


def test_user_errors_have_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rlp_align.cli", "data", "inspect", str(tmp_path / "none.json")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "error:" in result.stderr and "no such file" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "rlp_align.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown command" in result.stderr


def test_global_skip_invalid_reports_and_skips(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RLP_SKIP_INVALID", raising=False)
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "q2", "chosen": "", "rejected": "b"}) + "\n")
    out = tmp_path / "acc"
    rm = str(tiny_reward_model(tmp_path / "rm"))
    # without the flag the bad row stops the command, naming file, row and field
    assert main(["eval", "rm-accuracy", "--rm_path", rm, "--preferences", str(path),
                 "--output_dir", str(out)]) == 2
    assert "row 2, field 'chosen'" in capsys.readouterr().err
    assert main(["--skip_invalid", "eval", "rm-accuracy", "--rm_path", rm, "--preferences", str(path),
                 "--output_dir", str(out)]) == 0
    os.environ.pop("RLP_SKIP_INVALID", None)  # main() set it for its run; do not leak it to other tests
