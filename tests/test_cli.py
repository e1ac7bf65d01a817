import json
import os
import subprocess
import sys

import pytest
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
    assert "RLP_SKIP_INVALID" not in os.environ  # passed as a setting, not through the environment


def test_skip_invalid_travels_as_a_setting_of_the_run_data_section(tmp_path, monkeypatch):
    """`rlp --skip_invalid run` sets `data.skip_invalid`, which the pools stage hands to the instruction reader."""
    from rlp_align.core.errors import DataError
    from rlp_align.pipeline import run as pipeline
    from rlp_align.pipeline import stages_impl
    from rlp_align.pipeline.pipeline_config import world_config

    good = [{"instruction": f"Name fruit number {i}.", "input": "", "output": "A pear."} for i in range(4)]
    train, evaluation = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in [*good, {"instruction": "", "output": "x"}]) + "\n")
    evaluation.write_text("\n".join(json.dumps(r) for r in good) + "\n")
    seen = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: seen.append(cfg) or {})
    files = ["--data.source", "files", "--data.train_file", str(train), "--data.eval_file", str(evaluation),
             "--data.n_preference", "2", "--data.n_unlabelled", "1", "--data.n_eval", "2"]
    assert main(["--skip_invalid", "run", *files]) == 0
    assert main(["run", *files]) == 0
    skipping, strict = seen
    assert skipping.data.skip_invalid and not strict.data.skip_invalid
    with pytest.raises(DataError, match="row 5"):
        stages_impl.build_pools(strict.data, world_config(strict), strict.seed, tmp_path / "strict")
    pools = stages_impl.build_pools(skipping.data, world_config(skipping), skipping.seed, tmp_path / "skipping")
    assert sum(1 for _ in open(pools["preference"])) == 2
