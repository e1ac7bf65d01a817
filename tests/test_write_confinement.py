"""Security: a command writes only inside its output folder (and the model cache), never beside it."""

import os
import subprocess
import sys

from helpers import marker_prefs

from rlp_align.data.writers import write_preferences


def test_reward_writes_only_inside_its_output_dir(tmp_path):
    write_preferences(tmp_path / "prefs.jsonl", marker_prefs(16))
    before = set(os.listdir(tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "rlp_align.cli", "reward", "--model", "tiny", "--train_file",
                             "prefs.jsonl", "--output_dir", "out", "--optim.max_steps", "2", "--optim.batch_size", "8"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert set(os.listdir(tmp_path)) - before == {"out"}  # no stray files in the working folder
    assert {"model", "metrics.jsonl", "summary.json"} <= set(os.listdir(tmp_path / "out"))
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]  # no temporaries left behind
