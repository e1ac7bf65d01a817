"""Path safety, run fingerprints, the run lock and `rlp run --status` (rlp_align.core.run_folder), through the
functions and through the real CLI on the tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlp_align import cli
from rlp_align.core.errors import UserError
from rlp_align.core.io import write_json
from rlp_align.core.run_folder import (
    FINGERPRINT,
    LOCK,
    RunLock,
    config_inputs,
    differences,
    fingerprint,
    guard_output,
    lock_holder,
    marker,
)
from rlp_align.train.reward import RewardConfig
from rlp_align.train.training import OptimConfig

PAIRS = [{"prompt": f"Question {i}?", "chosen": f"banana {i}", "rejected": f"rock {i} " * (i % 3 + 1)}
         for i in range(8)]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "RLP_NUM_THREADS": "1", "PYTHONPATH": str(Path(cli.__file__).parents[1])}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: byte-identity of a whole folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _reward_args(tmp: Path, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    data = data or _jsonl(tmp / "prefs.jsonl", PAIRS)
    return ["reward", "--model", "tiny", "--train_file", str(data), "--output_dir", str(out), "--optim.max_steps",
            "2", "--optim.batch_size", "2", "--max_length", "64", "--optim.learning_rate", "1e-3", *extra]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out + err


def _holder(folder: Path, *, stopped: bool = False) -> subprocess.Popen:
    """A child process holding ``folder``'s run lock until killed (it prints 'locked' once it holds it)."""
    code = (f"import sys, time; sys.path.insert(0, {str(Path(cli.__file__).parents[1])!r})\n"
            "from rlp_align.core.run_folder import RunLock\n"
            f"RunLock({str(folder)!r}).acquire(); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    return proc


# --------------------------------------------------------------------------------------------------
# Path safety


def test_guard_refuses_aliases_containment_nesting_and_unwritable_outputs(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", PAIRS[:1])
    (tmp_path / "link.jsonl").symlink_to(data)
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    inputs = {"train_file": data, "policy": model}

    def guard(path, kind, inputs=inputs):
        guard_output(path, kind, "sample" if kind == "file" else "reward", inputs)

    with pytest.raises(UserError, match="is the input train_file"):
        guard(tmp_path / "link.jsonl", "file")  # through a symlink
    with pytest.raises(UserError, match="contains the input policy"):
        guard(tmp_path / "run", "folder")
    with pytest.raises(UserError, match="contains the input"):
        guard(tmp_path, "folder")
    with pytest.raises(UserError, match="lies inside the input policy"):
        guard(model / "inside", "folder")  # writing inside an input changes it
    with pytest.raises(UserError, match="lies inside the input policy"):
        guard(model / "model.safetensors", "file")
    with pytest.raises(UserError, match="is an existing folder"):
        guard(model, "file", {})
    with pytest.raises(UserError, match="is an existing file"):
        guard(data, "folder", {})
    with pytest.raises(UserError, match="not writable"):
        guard(data / "sub" / "out.jsonl", "file", {})  # its folder would be under a file
    guard(tmp_path / "out", "folder")
    guard(tmp_path / "samples.jsonl", "file")


# --------------------------------------------------------------------------------------------------
# Fingerprints


def test_fingerprint_ignores_how_knobs_and_paths_but_not_settings_or_content(tmp_path):
    data = _jsonl(tmp_path / "a.jsonl", PAIRS)
    base = RewardConfig(train_file=str(data), output_dir=str(tmp_path / "o1"), optim=OptimConfig(learning_rate=1e-3))
    fp = fingerprint("reward", base)
    assert fp["inputs"].keys() == {"train_file"} and "output_dir" not in fp["settings"]
    how = RewardConfig(train_file=str(data), output_dir=str(tmp_path / "o2"), overwrite=True,
                       optim=OptimConfig(learning_rate=1e-3, save_every=7, keep_checkpoint=True, logging_every=3))
    assert fingerprint("reward", how)["hash"] == fp["hash"]
    moved = tmp_path / "b.jsonl"
    moved.write_bytes(data.read_bytes())
    moved_cfg = RewardConfig(train_file=str(moved), output_dir="x", optim=OptimConfig(learning_rate=1e-3))
    assert fingerprint("reward", moved_cfg)["hash"] == fp["hash"]
    changed = fingerprint("reward", RewardConfig(train_file=str(data), output_dir="x",
                                                 optim=OptimConfig(learning_rate=0.5)))
    assert differences(fp, changed) == ["optim.learning_rate (0.001 -> 0.5)"]
    _jsonl(data, PAIRS[:3])
    assert differences(fp, fingerprint("reward", base)) == ["train_file (content changed)"]


def test_config_inputs_are_existing_paths_only(tmp_path):
    data = _jsonl(tmp_path / "a.jsonl", PAIRS)
    cfg = RewardConfig(model="tiny", train_file=str(data), eval_file=str(tmp_path / "absent.jsonl"),
                       output_dir=str(tmp_path))
    assert config_inputs(cfg) == {"train_file": data}


# --------------------------------------------------------------------------------------------------
# The run lock


def test_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    holder = _holder(tmp_path)
    try:
        assert (tmp_path / LOCK).read_text().strip() == str(holder.pid) == str(lock_holder(tmp_path))
        with pytest.raises(UserError, match=f"in use by another rlp process \\(PID {holder.pid}\\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path) is None  # the kernel released the dead holder's lock
    with RunLock(tmp_path):
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())
    assert f"taking over a stale lock left by PID {holder.pid} (no longer running)" in capsys.readouterr().err
    assert (tmp_path / LOCK).read_text() == ""  # released cleanly: the next taker has nothing to report
    with RunLock(tmp_path):
        pass
    assert "stale" not in capsys.readouterr().err


def test_two_trainers_on_one_folder_one_exits_2_naming_the_other(tmp_path):
    """The second `rlp reward` on a folder stops at once; the first finishes with one row per step."""
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "rlp_align.cli", *_reward_args(tmp_path, out, "--optim.max_steps", "4",
                              "--optim.save_every", "1")], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.time() + 120
    while lock_holder(out) != first.pid and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # frozen while holding the lock: the outcome cannot depend on timing
    try:
        assert lock_holder(out) == first.pid, "the first run never took the lock"
        second = subprocess.run([sys.executable, "-m", "rlp_align.cli", *_reward_args(tmp_path, out)], env=_env(),
                                capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    assert second.returncode == 2 and f"in use by another rlp process (PID {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# Reruns into finished folders, through the CLI


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished `rlp reward` run (2 steps) and its files."""
    tmp = tmp_path_factory.mktemp("finished")
    out = tmp / "rm"
    assert cli.main(_reward_args(tmp, out)) == 0
    return tmp, out


@pytest.mark.parametrize("change, named", [
    (["--optim.learning_rate", "1e-4"], "learning_rate (0.001 -> 0.0001)"),
    (["--optim.max_steps", "3"], "max_steps (2 -> 3)"),
    (["--data"], "train_file (content changed)"),
])
def test_rerun_with_other_settings_or_data_is_refused_naming_the_key(finished, change, named, capsys):
    tmp, out = finished
    before = _tree(out)
    args = _reward_args(tmp, out, data=_jsonl(tmp / "other.jsonl", PAIRS[:6])) if change == ["--data"] \
        else _reward_args(tmp, out, *change)
    code, text = _cli(args, capsys)
    assert code == 2 and named in text and "--overwrite true" in text, text
    assert _tree(out) == before


def test_rerun_with_the_same_settings_returns_the_finished_result(finished, capsys):
    tmp, out = finished
    summary = json.loads((out / "summary.json").read_text())
    code, text = _cli(_reward_args(tmp, out, "--optim.save_every", "5"), capsys)  # a how-knob: no change
    assert code == 0 and json.loads(text[text.index("{"):])["seconds"] == summary["seconds"]


def test_overwrite_retrains_and_records_the_new_fingerprint(tmp_path, capsys):
    out = tmp_path / "rm"
    assert cli.main(_reward_args(tmp_path, out)) == 0
    code, text = _cli(_reward_args(tmp_path, out, "--optim.max_steps", "3", "--overwrite", "true"), capsys)
    assert code == 0 and json.loads((out / "summary.json").read_text())["steps"] == 3
    assert json.loads((out / FINGERPRINT).read_text())["settings"]["optim.max_steps"] == 3


def test_resume_with_changed_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "rm"
    assert cli.main(_reward_args(tmp_path, out, "--optim.save_every", "1", "--optim.keep_checkpoint", "true")) == 0
    (out / "summary.json").unlink()  # as if killed after its last checkpoint
    code, text = _cli(_reward_args(tmp_path, out, "--optim.learning_rate", "0.5"), capsys)
    assert code == 2 and "holds a checkpoint" in text and "learning_rate" in text
    code, text = _cli(_reward_args(tmp_path, out, "--optim.save_every", "1"), capsys)  # same settings: resumes
    assert code == 0 and json.loads((out / "summary.json").read_text())["resumed_from_step"] == 2


def test_a_folder_written_by_another_command_is_refused(finished, tmp_path, capsys):
    tmp, rm = finished
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"instruction": "Name a fruit."}])
    ppo = ["ppo", "--policy", "tiny", "--reward_model", str(rm / "model"), "--prompts_file", str(prompts),
           "--output_dir", str(rm), "--steps", "1"]
    code, text = _cli(ppo, capsys)  # also an input inside the output: path safety speaks first
    assert code == 2 and "contains the input reward_model" in text
    ppo[ppo.index("--output_dir") + 1] = str(tmp_path / "ppo")
    write_json(tmp_path / "ppo" / FINGERPRINT, {**marker("ppo"), "hash": "x", "settings": {}, "inputs": {}})
    code, text = _cli(_reward_args(tmp, tmp_path / "ppo"), capsys)
    assert code == 2 and "was written by `rlp ppo`" in text and "--overwrite does not change that" in text
    code, text = _cli(_reward_args(tmp, tmp_path / "ppo", "--overwrite", "true"), capsys)
    assert code == 2 and "was written by `rlp ppo`" in text  # --overwrite replaces only what `rlp reward` wrote
    code, text = _cli(["run", "--config", "tiny", "--output_dir", str(rm)], capsys)
    assert code == 2 and "was written by `rlp reward`" in text


# --------------------------------------------------------------------------------------------------
# The data-loss cases of issue 16


def test_overwrite_never_deletes_a_folder_holding_an_input(finished, tmp_path, capsys):
    tmp, rm = finished
    ow = tmp_path / "ow"
    shutil.copytree(rm / "model", ow / "model")
    (ow / "summary.json").write_text("{}")
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"instruction": "Name a fruit."}])
    before = _tree(ow)
    code, text = _cli(["ppo", "--policy", str(ow / "model"), "--reward_model", str(rm / "model"), "--prompts_file",
                       str(prompts), "--output_dir", str(ow), "--overwrite", "true", "--steps", "1"], capsys)
    assert code == 2 and "contains the input policy" in text
    assert _tree(ow) == before and sorted(p.name for p in ow.iterdir()) == ["model", "summary.json"]


@pytest.mark.parametrize("command", ["spg", "sample"])
def test_an_output_file_that_is_the_input_is_refused(finished, tmp_path, command, capsys):
    tmp, rm = finished
    samples = _jsonl(tmp_path / "S.jsonl", [{"prompt": [{"role": "user", "content": "Hi?"}],
                                              "responses": ["a", "b"], "meta": {}}])
    before = samples.read_bytes()
    args = (["spg", "--samples_file", str(samples), "--reward_model", str(rm / "model")] if command == "spg"
            else ["sample", "--prompts_file", str(samples), "--policy", "tiny", "--n", "2"])
    code, text = _cli([*args, "--output_file", str(samples)], capsys)
    assert code == 2 and "is the input" in text, text
    assert samples.read_bytes() == before


# --------------------------------------------------------------------------------------------------
# rlp run --status


def _manifest(run: Path, stage: str, status: str, started: float) -> None:
    write_json(run / stage / "manifest.json", {"stage": stage, "hash": "h", "status": status, "started": started,
                                               **({"seconds": 1.0} if status == "done" else {})})


def test_status_tells_running_crashed_finished_and_not_a_run_folder(tmp_path, capsys):
    for path in (tmp_path / "absent", tmp_path):
        code, text = _cli(["run", "--status", str(path)], capsys)
        assert code == 2 and "not a run folder" in text
    run = tmp_path / "run"
    _manifest(run, "00_instructions", "done", 1.0)
    _manifest(run, "03_rm0", "running", 2.0)
    code, text = _cli(["run", "--status", str(run)], capsys)  # nobody holds the lock: it crashed
    assert code == 0 and "interrupted/crashed" in text
    assert [line.split()[1] for line in text.splitlines()[1:3]] == ["done", "crashed"]
    holder = _holder(run)
    try:
        code, text = _cli(["run", "--status", str(run)], capsys)
        assert f"running (PID {holder.pid})" in text and "crashed" not in text
        assert text.splitlines()[2].split()[1] == "running"
    finally:
        holder.kill()
        holder.wait()
    _manifest(run, "03_rm0", "done", 2.0)
    (run / "report.md").write_text("# report\n")
    code, text = _cli(["run", "--status", str(run)], capsys)
    assert code == 0 and text.splitlines()[0].endswith(": finished") and "crashed" not in text


def test_stage_keys_follow_the_content_of_files_from_outside_the_run(tmp_path):
    from rlp_align.pipeline.pipeline_config import DataConfig
    from rlp_align.pipeline.stages import StageCache

    cache = StageCache(tmp_path / "run", log=lambda _: None)
    train = _jsonl(tmp_path / "train.jsonl", [{"instruction": "Name a fruit.", "output": "A banana."}])
    data = DataConfig(source="files", train_file=str(train), eval_file=str(train))
    before = cache.key_of(data)
    assert cache.key_of(data) == before
    _jsonl(train, [{"instruction": "Name a stone.", "output": "Granite."}])
    assert cache.key_of(data) != before  # an edited data file reruns the stages that read it
    assert cache.key_of(DataConfig()) == cache.key_of(DataConfig())
    assert cache.key_of("tiny") == "tiny" and cache.key_of("") == ""  # names stay names
    done = cache.run("00_x", {"k": 1}, lambda folder: {"file": str(folder / "f")})
    assert cache.key_of(str(tmp_path / "run" / "00_x" / "f")) == done["hash"]  # a stage's output: its hash


def test_the_trainers_own_guard_refuses_an_output_holding_an_input(finished, tmp_path):
    """Called from Python (no CLI claim), `TrainingRun` still refuses before `overwrite` deletes anything."""
    from rlp_align.train.reward import run_reward

    _, rm = finished
    out = tmp_path / "out"
    shutil.copytree(rm / "model", out / "model")
    before = _tree(out)
    with pytest.raises(UserError, match="contains the input model"):
        run_reward(RewardConfig(model=str(out / "model"), train_file=str(_jsonl(tmp_path / "d.jsonl", PAIRS)),
                                output_dir=str(out), overwrite=True, optim=OptimConfig(max_steps=1)))
    assert _tree(out) == before


def test_only_rank_0_of_a_multi_process_run_takes_the_lock(tmp_path, monkeypatch):
    from rlp_align.core.run_folder import claim_output

    cfg = RewardConfig(train_file=str(_jsonl(tmp_path / "d.jsonl", PAIRS)), output_dir=str(tmp_path / "out"))
    with claim_output("reward", cfg):  # rank 0 (no RANK set) holds the lock ...
        assert lock_holder(tmp_path / "out") == os.getpid()
        monkeypatch.setenv("RANK", "1")
        with claim_output("reward", cfg) as fp:  # ... and rank 1 checks the same folder without locking
            assert fp["command"] == "reward"
    assert lock_holder(tmp_path / "out") is None and (tmp_path / "out" / LOCK).read_text() == ""


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    """The CLI claims a trainer's folder and the trainer locks it again: one flock, released by the last."""
    outer = RunLock(tmp_path).acquire()
    inner = RunLock(tmp_path).acquire()
    inner.release()
    assert lock_holder(tmp_path) == os.getpid()
    outer.release()
    assert lock_holder(tmp_path) is None


# --------------------------------------------------------------------------------------------------
# The data-loss cases of issue 23: one guard for every output path


def _sample_args(tmp: Path, output: Path) -> list[str]:
    prompts = _jsonl(tmp / "prompts.jsonl", [{"instruction": "Name a fruit."}])
    return ["sample", "--policy", "tiny", "--prompts_file", str(prompts), "--n", "2", "--max_new_tokens", "2",
            "--output_file", str(output)]


def test_sample_over_a_finished_rms_weights_is_refused_live_or_not(finished, tmp_path, capsys):
    """`rlp sample --output_file victim/model/model.safetensors` replaced a finished RM's weights with JSONL."""
    tmp, rm = finished
    victim = tmp_path / "victim"
    shutil.copytree(rm, victim)
    before = {k: v for k, v in _tree(victim).items() if k != LOCK}  # the holder below writes its PID there
    weights = victim / "model" / "model.safetensors"
    code, text = _cli(_sample_args(tmp_path, weights), capsys)
    assert code == 2 and "lies inside" in text and "made by `rlp reward`" in text, text
    holder = _holder(victim)  # and while a trainer holds the folder, the lock speaks first
    try:
        code, text = _cli(_sample_args(tmp_path, victim / "model" / "new.jsonl"), capsys)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and f"in use by another rlp process (PID {holder.pid})" in text and "lies inside" in text
    assert {k: v for k, v in _tree(victim).items() if k != LOCK} == before


def test_a_finished_folder_whose_outputs_changed_is_not_reported_finished(finished, tmp_path, capsys):
    tmp, rm = finished
    victim = tmp_path / "victim"
    shutil.copytree(rm, victim)
    assert "outputs" in json.loads((victim / FINGERPRINT).read_text())  # recorded when the run ended
    (victim / "model" / "model.safetensors").write_text('{"prompt": "not weights"}\n')
    code, text = _cli(_reward_args(tmp, victim), capsys)
    assert code == 2 and "model/model.safetensors" in text and "not reported finished" in text, text
    code, text = _cli(_reward_args(tmp, victim, "--overwrite", "true"), capsys)  # retrains: a real model again
    assert code == 0 and (victim / "model" / "model.safetensors").read_bytes()[:1] != b"{"


def test_a_trainer_inside_or_around_a_live_run_is_refused(tmp_path, capsys):
    """`rlp reward --output_dir X/model` beside a live run in X: both exited 0 and X's save deleted the second."""
    run = tmp_path / "X"
    holder = _holder(run)
    inner = _holder(tmp_path / "Y" / "model")
    try:
        code, text = _cli(_reward_args(tmp_path, run / "model"), capsys)
        assert code == 2 and f"{run} is in use by another rlp process (PID {holder.pid})" in text, text
        assert "lies inside" in text and not (run / "model").exists()
        code, text = _cli(_reward_args(tmp_path, tmp_path / "Y"), capsys)
        assert code == 2 and f"(PID {inner.pid})" in text and "contains it" in text, text
    finally:
        for proc in (holder, inner):
            proc.kill()
            proc.wait()
    assert not (run / "model").exists() and sorted(p.name for p in (tmp_path / "Y").iterdir()) == ["model"]


def test_a_plain_folder_holding_the_users_model_is_refused_even_with_overwrite(finished, tmp_path, capsys):
    tmp, rm = finished
    mine = tmp_path / "D"
    shutil.copytree(rm / "model", mine / "model")  # the user's own model, no rlp record around it
    before = _tree(mine)
    for extra in ([], ["--overwrite", "true"]):
        code, text = _cli(_reward_args(tmp, mine, *extra), capsys)
        assert code == 2 and "holds files rlp did not write (model)" in text, text
    assert _tree(mine) == before


def test_an_output_file_is_replaced_only_when_the_same_command_wrote_it_unchanged(tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    out.write_text("my notes\n")
    code, text = _cli(_sample_args(tmp_path, out), capsys)
    assert code == 2 and "was not written by rlp" in text and out.read_text() == "my notes\n"
    out.unlink()
    assert _cli(_sample_args(tmp_path, out), capsys)[0] == 0
    assert _cli(_sample_args(tmp_path, out), capsys)[0] == 0  # its own earlier output: replaced
    code, text = _cli(["generate", "--policy", "tiny", "--instructions_file", str(tmp_path / "prompts.jsonl"),
                       "--max_new_tokens", "2", "--output_file", str(out)], capsys)
    assert code == 2 and "was written by `rlp sample`" in text
    edited = out.read_text() + "\n"
    out.write_text(edited)
    code, text = _cli(_sample_args(tmp_path, out), capsys)
    assert code == 2 and "was changed after `rlp sample` wrote it" in text and out.read_text() == edited


def test_a_judge_cache_must_be_a_cache_and_outside_the_inputs(tmp_path):
    cache = tmp_path / "cache.jsonl"
    cache.write_text('{"key": "k", "verdict": "Output (a)", "model": "m"}\n')
    guard_output(cache, "cache", "annotate", {})
    data = _jsonl(tmp_path / "answers.jsonl", PAIRS[:1])
    with pytest.raises(UserError, match="is not an rlp judge cache"):
        guard_output(data, "cache", "annotate", {})
    with pytest.raises(UserError, match="is the input input"):
        guard_output(data, "cache", "annotate", {"input": data})


def test_every_commands_outputs_go_through_the_one_guard():
    """The guard is one function: the CLI claims every command's outputs through `claim_output`, which passes
    each of `config_outputs` to `guard_output`; every output-like setting of every command is among them; and
    nothing else in the package checks or locks an output path on its own."""
    import importlib
    import inspect
    import re

    from rlp_align.core import run_folder
    from rlp_align.core.run_folder import config_outputs, flatten
    from rlp_align.train import training

    run_command = inspect.getsource(cli._run_command)
    assert run_command.count("claim_output(name, cfg)") == 1 and "result = run(cfg)" in run_command
    claim = inspect.getsource(run_folder.claim_output)
    assert "for path, kind in outputs:\n            guard_output(path, kind, command" in claim
    assert "guard_output(self.out_dir" in inspect.getsource(training.TrainingRun.__init__)
    for name, (module, cls_name, *_) in cli.COMMANDS.items():
        cfg = getattr(importlib.import_module(module), cls_name)()
        settings = {k: v for k, v in flatten(cfg).items() if "." not in k or k.endswith("cache_path")}
        for key in settings:
            setattr_path = key.split(".")
            target = cfg
            for part in setattr_path[:-1]:
                target = getattr(target, part)
            if re.search(r"(^|_)(output|cache|report|out)(_|$)", setattr_path[-1]):
                setattr(target, setattr_path[-1], f"/x/{key}")
        guarded = {str(p) for p, _ in config_outputs(name, cfg)}
        wanted = {f"/x/{k}" for k in settings if re.search(r"(^|_)(output|cache|report|out)(_|$)", k.split(".")[-1])}
        assert wanted <= guarded, (name, wanted - guarded)
    src = Path(run_folder.__file__).parents[1]  # the whole package
    for path in src.rglob("*.py"):
        if path.name in ("run_folder.py", "run_lock.py"):
            continue
        text = path.read_text()
        assert not re.search(r"\bRunLock\(|\bother_holders\(|\b_not_an_input\(|\b_own_(folder|file|cache)\(", text
                             .replace("RunLock(self.out_dir).acquire()", "")), f"{path} guards an output itself"
