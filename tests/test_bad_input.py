"""Bad input through the real CLI: data files, configs, models, options and training that goes wrong.

One table, `CASES`, drives both the tests and the case list in docs/bad-input.md
(``python tests/test_bad_input.py`` rewrites that list; `test_doc_lists_every_case` keeps them equal).

A rejected input must give exit code 2, one paragraph on stderr that names the problem, and no traceback.
Some inputs are not errors but are handled (duplicates dropped, long pairs truncated, a missing pad token
replaced): those cases expect exit code 0 and assert what was reported.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rlp_align import cli
from rlp_align.models import resolve_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
GOOD = {"prompt": "Name a fruit.", "chosen": "A banana.", "rejected": "A rock."}


@dataclass(frozen=True)
class Case:
    id: str
    area: str  # data | config | model | cli | training
    problem: str  # what is wrong with the input (the doc's second column)
    handling: str  # what rlp does about it (the doc's third column)
    argv: Callable[[Path], list[str]]  # builds its files under tmp_path, returns the CLI arguments
    expect: tuple[str, ...]  # text the message (or the report) must contain
    code: int = 2
    check: Callable[[Path, str], None] | None = None  # more assertions on (tmp_path, output)
    subprocess: bool = False  # run `python -m rlp_align.cli` in a child process instead of cli.main
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # simulate the environment (a full disk ...)


# --------------------------------------------------------------------------------------------------
# Builders of bad files


def write(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def jsonl(tmp: Path, rows: list, name: str = "data.jsonl") -> Path:
    return write(tmp, name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def reward(tmp: Path, train: Path | str, *extra: str, model: str = "tiny") -> list[str]:
    return ["reward", "--model", model, "--train_file", str(train), "--output_dir", str(tmp / "out"),
            "--optim.max_steps", "1", "--optim.batch_size", "2", "--max_length", "64", "--optim.learning_rate", "1e-3",
            *extra]


def reward_rows(*rows) -> Callable[[Path], list[str]]:
    return lambda tmp: reward(tmp, jsonl(tmp, list(rows)))


def model_copy(tmp: Path, edit: Callable[[Path], None], name: str = "model") -> Path:
    """A copy of the tiny model folder, then ``edit`` breaks it."""
    folder = tmp / name
    shutil.copytree(resolve_model("tiny"), folder)
    edit(folder)
    return folder


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def reward_with_model(edit: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    return lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), model=str(model_copy(tmp, edit)))


def pickle_only(folder: Path) -> None:
    weights = folder / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), folder / "pytorch_model.bin")
    weights.unlink()


def two_labels(folder: Path) -> None:
    def change(c):
        c.update(architectures=["LlamaForSequenceClassification"], id2label={"0": "bad", "1": "good"},
                 label2id={"bad": 0, "good": 1})

    edit_json(folder / "config.json", change)


def no_eos(folder: Path) -> None:
    edit_json(folder / "tokenizer_config.json", lambda c: [c.pop(k, None) for k in ("eos_token", "unk_token",
                                                                                    "bos_token")])


def pipeline(tmp: Path, **values) -> list[str]:
    cfg = {"model": "tiny", "output_dir": str(tmp / "run"), "eval_baseline": "sft", **values}
    return ["run", "--config", str(write(tmp, "run.yaml", json.dumps(cfg)))]  # JSON is valid YAML


# --------------------------------------------------------------------------------------------------
# Checks run after a case


def nan_kept_checkpoint(tmp: Path, _: str) -> None:
    state = json.loads((tmp / "out/checkpoint/trainer_state.json").read_text())
    assert state["step"] == 1  # the last good step survives
    assert not (tmp / "out/model").exists() and not (tmp / "out/summary.json").exists()


def nothing_trained(tmp: Path, output: str) -> None:
    assert "reward:" not in output  # the training progress bar never started
    assert not any(tmp.rglob("metrics.jsonl"))


def report(key: str, value) -> Callable[[Path, str], None]:
    def check(_: Path, output: str) -> None:
        assert json.loads(output[output.index("{"):])[key] == value

    return check


def pad_distinct_from_eos(tmp: Path, _: str) -> None:
    saved = json.loads((tmp / "out/model/tokenizer_config.json").read_text())
    assert saved["pad_token"] == "<|endoftext|>" != saved["eos_token"]


# --------------------------------------------------------------------------------------------------
# Builders and checks of issue 16 (validation, model kinds, readers, I/O errors)


def causal_lm(tmp: Path) -> str:
    """A plain copy of the tiny causal LM, given where a reward model is expected."""
    return str(model_copy(tmp, lambda f: None, name="policy"))


def headless_classifier(tmp: Path) -> str:
    """A folder that claims to be a 1-label sequence classifier but whose weights have no head."""
    def change(c):
        c.update(architectures=["LlamaForSequenceClassification"], num_labels=1, id2label={"0": "LABEL_0"},
                 label2id={"LABEL_0": 0})

    return str(model_copy(tmp, lambda f: edit_json(f / "config.json", change), name="headless"))


def prompts(tmp: Path) -> Path:
    return jsonl(tmp, [{"prompt": "Name a fruit."}, {"prompt": "Name a stone."}], name="prompts.jsonl")


def ppo(tmp: Path, *extra: str) -> list[str]:
    return ["ppo", "--policy", "tiny", "--prompts_file", str(prompts(tmp)), "--output_dir", str(tmp / "out"),
            "--steps", "1", "--rollout_batch_size", "2", "--step_batch_size", "2", "--max_new_tokens", "4", *extra]


def untouched(*names: str) -> Callable[[Path, str], None]:
    def check(tmp: Path, _: str) -> None:
        for name in names:
            assert not (tmp / name).exists(), f"{name} was written although the command was refused"

    return check


def invalid_rows(*fragments: str) -> Callable[[Path, str], None]:
    def check(_: Path, output: str) -> None:
        invalid = json.loads(output[output.index("{"):])["invalid"]
        for fragment in fragments:
            assert any(fragment in row for row in invalid), (fragment, invalid)

    return check


TRL_THEN_ALPACAFARM = [GOOD, {"instruction": "Name a fruit.", "input": "", "output_1": "A banana.",
                              "output_2": "A rock.", "preference": 1}, {**GOOD, "prompt": "Name a stone."}]
DEEP = "[" * 100_000 + "]" * 100_000
SURROGATE = '{"prompt": "Name a fruit.", "chosen": "A ban\\ud800ana.", "rejected": "A rock."}'


def disk_full_on_model_save(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import PreTrainedModel

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)


def disk_full_on_second_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save's own report of a full disk (a RuntimeError without the cause), at the second checkpoint,
    with a disk that reports no free space."""
    import shutil as shutil_module

    from accelerate import Accelerator

    real_save, real_usage, calls = Accelerator.save_state, shutil_module.disk_usage, []

    def save_state(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    monkeypatch.setattr("rlp_align.core.io.shutil.disk_usage",
                        lambda p: real_usage(p)._replace(free=0) if len(calls) == 2 else real_usage(p))


def resumes_after_disk_full(tmp: Path, _: str) -> None:
    assert json.loads((tmp / "out/checkpoint/trainer_state.json").read_text())["step"] == 1  # the good one
    args = reward(tmp, tmp / "data.jsonl", "--optim.save_every", "1", "--optim.max_steps", "3")
    assert cli.main(args) == 0  # the monkeypatched save fails only once: this run resumes and finishes
    assert json.loads((tmp / "out/summary.json").read_text())["steps"] == 3


def permission_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, chmod does not stop writes: refuse the output folder's write probe instead."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".write-probe"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


# --------------------------------------------------------------------------------------------------
# The table

LONG = {"prompt": "Tell me a story. " * 20, "chosen": "Once upon a time " * 30, "rejected": "No. " * 40}
ALPACAFARM = {"instruction": "Name a fruit.", "input": "", "output_1": "A banana.", "output_2": "A rock.",
              "preference": 1}
LLMBAR = {"input": "Name a fruit.", "output_1": "A banana.", "output_2": "A rock.", "label": 1}
HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hey\n\nAssistant: Go away."}

CASES = [
    # ---- data files
    Case("malformed-jsonl-line", "data", "a JSONL line that is not JSON",
         "exit 2; DataError names the file, the row and the parse error", reward_rows(GOOD, '{"prompt": "x",'),
         ("data.jsonl, row 2", "malformed JSON line"), subprocess=True),
    Case("malformed-json-array", "data", "a JSON array file cut short",
         "exit 2; names the line and column of the parse error",
         lambda tmp: reward(tmp, write(tmp, "d.json", json.dumps([GOOD])[:-3])), ("malformed JSON at line 1",)),
    Case("row-not-object", "data", "a row that is a list, not an object", "exit 2; names the row",
         reward_rows(GOOD, [1, 2]), ("row 2", "expected a JSON object, got list")),
    Case("unrecognised-keys", "data", "rows whose keys match no supported format",
         "exit 2; lists the keys found and the supported formats", reward_rows({"question": "q", "answer": "a"}),
         ("unrecognised row with keys ['answer', 'question']", "TRL")),
    Case("missing-key", "data", "a later row lacks a required key (AlpacaFarm `output_2`)",
         "exit 2; names row and field", reward_rows(ALPACAFARM, {k: v for k, v in ALPACAFARM.items()
                                                                  if k != "output_2"}),
         ("row 2, field 'output_2': missing",)),
    Case("extra-keys", "data", "rows with keys beyond the format's (`source`)",
         "accepted: extra keys are kept in the pair's `meta`, nothing is reported invalid",
         lambda tmp: ["data", "inspect", "--json", str(jsonl(tmp, [{**GOOD, "source": "web"}]))],
         ('"kept": 1',), code=0, check=report("invalid", [])),
    Case("wrong-file-kind", "data", "an instruction file given as preference data",
         "exit 2; says which format it looks like", reward_rows({"instruction": "Name a fruit.", "output": "Kiwi"}),
         ("looks like a 'alpaca' file, not a preference file",)),
    Case("label-out-of-range", "data", "LLMBar `label` 3 (must be 1 or 2)", "exit 2; names row, field, value",
         reward_rows(LLMBAR, {**LLMBAR, "label": 3}), ("row 2, field 'label': must be 1 or 2, got 3",)),
    Case("preference-out-of-range", "data", "AlpacaFarm `preference` 0", "exit 2; names row, field, value",
         reward_rows({**ALPACAFARM, "preference": 0}), ("field 'preference': must be 1 or 2, got 0",)),
    Case("empty-prompt", "data", "an empty prompt", "exit 2; names row and field",
         reward_rows(GOOD, {**GOOD, "prompt": "  "}), ("row 2, field 'prompt': is empty",)),
    Case("empty-response", "data", "an empty chosen response", "exit 2; names row and field",
         reward_rows({**GOOD, "chosen": ""}), ("row 1, field 'chosen': is empty",)),
    Case("wrong-field-type", "data", "a response that is a number", "exit 2; names row, field and type",
         reward_rows({**GOOD, "rejected": 5}), ("field 'rejected': expected a string, got int",)),
    Case("hh-dialogues-diverge", "data", "HH-RLHF chosen/rejected with different conversations",
         "exit 2; names the row", reward_rows(HH), ("row 1", "differ before the last turn")),
    Case("non-utf8", "data", "bytes that are not UTF-8", "exit 2; names the line and byte, says to re-encode",
         lambda tmp: reward(tmp, write(tmp, "d.jsonl", json.dumps(GOOD).encode() + b'\n{"prompt": "caf\xe9"}\n')),
         ("row 2", "not valid UTF-8", "re-encode")),
    Case("empty-file", "data", "an empty data file", "exit 2", lambda tmp: reward(tmp, write(tmp, "d.jsonl", "\n")),
         ("file is empty",)),
    Case("missing-data-file", "data", "a train_file that does not exist", "exit 2",
         lambda tmp: reward(tmp, tmp / "absent.jsonl"), ("absent.jsonl: no such file",)),
    Case("data-file-is-folder", "data", "a folder given as train_file", "exit 2",
         lambda tmp: reward(tmp, write(tmp, "folder/x", "").parent),
         ("is a folder, expected a JSON, JSONL or parquet file",)),
    Case("duplicate-rows", "data", "the same pair twice",
         "accepted: exact duplicates are dropped, counted and reported (`rlp data inspect`, a warning in training)",
         lambda tmp: ["data", "inspect", "--json", str(jsonl(tmp, [GOOD, GOOD]))], ('"duplicates": 1',), code=0,
         check=report("kept", 1)),
    Case("over-long-pairs", "data", "pairs longer than max_length",
         "accepted: truncated to max_length (the prompt's beginning is kept), counted and reported as a warning",
         lambda tmp: reward(tmp, jsonl(tmp, [LONG, {**LONG, "prompt": "Another story."}]), "--max_length", "32"),
         ("2 of 2 preference pairs were truncated to max_length=32",), code=0),
    # ---- models
    Case("missing-model-path", "model", "a model folder that does not exist",
         "exit 2; says models are never downloaded", lambda tmp: reward(tmp, jsonl(tmp, [GOOD]),
                                                                         model=str(tmp / "nope")),
         ("not found", "never downloaded"), subprocess=True),
    Case("not-a-model", "model", "a plain file given as the model", "exit 2",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), model=str(write(tmp, "notes.txt", "hello"))),
         ("is not a Hugging Face model folder",)),
    Case("no-weights", "model", "a folder with config.json but no weights", "exit 2",
         reward_with_model(lambda f: (f / "model.safetensors").unlink()), ("has a config.json but no model weights",)),
    Case("corrupt-weights", "model", "a model.safetensors that is not safetensors", "exit 2; the loader's reason",
         reward_with_model(lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64)),
         ("cannot load a reward model from",)),
    Case("pickle-only-weights", "model", "only pytorch_model.bin (pickle) weights",
         "exit 2 unless --allow_pickle: pickle can run code when loaded", reward_with_model(pickle_only),
         ("holds only pickle weights", "--allow_pickle")),
    Case("rm-num-labels-2", "model", "a reward model that is a 2-label classifier", "exit 2",
         reward_with_model(two_labels), ("classifier with 2 labels", "num_labels=1")),
    Case("tokenizer-no-eos", "model", "a tokenizer with no EOS (nor UNK/BOS) token", "exit 2",
         reward_with_model(no_eos), ("has no EOS token",)),
    Case("tokenizer-no-pad", "model", "a tokenizer without a pad token (the tiny model's)",
         "accepted: an unused special token distinct from EOS becomes the pad token and is saved with the model",
         reward_rows(GOOD), ('"steps": 1',), code=0, check=pad_distinct_from_eos),
    # ---- configs and options
    Case("unknown-config-key", "config", "a misspelt option", "exit 2; suggests the closest key",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--learnig_rate", "0.1"),
         ("unknown config key 'learnig_rate'", "did you mean 'optim.learning_rate'"), subprocess=True),
    Case("unknown-nested-key", "config", "an unknown key in a YAML section", "exit 2; names the dotted key",
         lambda tmp: pipeline(tmp, ppo={"kl_coeff": 0.1}), ("unknown config key 'ppo.kl_coeff'",)),
    Case("wrong-type-int", "config", "`--optim.batch_size eight`", "exit 2; names key, expected type and value",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--optim.batch_size", "eight"),
         ("optim.batch_size: expected an integer, got 'eight'",)),
    Case("wrong-type-bool", "config", "`--lora.enabled maybe`", "exit 2",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--lora.enabled", "maybe"),
         ("lora.enabled: expected true or false",)),
    Case("bad-choice", "config", "`--ensemble_aggregate median`", "exit 2; lists the choices",
         lambda tmp: ["ppo", "--ensemble_aggregate", "median"], ("'median' is not one of 'mean', 'wco', 'uwo'",)),
    Case("invalid-yaml", "config", "a config file that is not YAML", "exit 2",
         lambda tmp: ["reward", "--config", str(write(tmp, "c.yaml", "model: [tiny\n"))], ("is not valid YAML",)),
    Case("yaml-not-mapping", "config", "a config file holding a list", "exit 2",
         lambda tmp: ["reward", "--config", str(write(tmp, "c.yaml", "- tiny\n"))], ("must hold a mapping",)),
    Case("missing-config-file", "config", "`--config` naming no file", "exit 2",
         lambda tmp: ["reward", "--config", str(tmp / "absent.yaml")], ("absent.yaml does not exist",)),
    Case("config-without-path", "config", "`--config` as the last argument", "exit 2",
         lambda tmp: ["reward", "--config"], ("--config needs a file path",)),
    Case("bare-argument", "config", "a positional word among options", "exit 2; shows the option syntax",
         lambda tmp: ["reward", "oops"], ("unexpected argument 'oops'",)),
    Case("missing-train-file", "config", "`rlp reward` without train_file", "exit 2",
         lambda tmp: ["reward", "--output_dir", str(tmp / "out")], ("needs train_file",)),
    Case("ppo-without-prompts", "config", "`rlp ppo` without prompts_file", "exit 2",
         lambda tmp: ["ppo", "--output_dir", str(tmp / "out")], ("ppo needs --prompts_file",)),
    Case("zero-learning-rate", "config", "`--optim.learning_rate 0`", "exit 2, before any model is loaded",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD])) + ["--optim.learning_rate", "0"],
         ("optim.learning_rate = 0.0 is out of range: optim.learning_rate must be > 0",)),
    Case("pipeline-owned-key", "config", "`rlp run --reward.train_file x`", "exit 2: the pipeline sets it",
         lambda tmp: pipeline(tmp, reward={"train_file": "x.jsonl"}), ("reward.train_file is set by the pipeline",)),
    Case("ppo-unused-optim-key", "config", "`rlp ppo --optim.batch_size 4`", "exit 2: names PPO's own knob",
         lambda tmp: ["ppo", "--optim.batch_size", "4", "--prompts_file", "p.jsonl"],
         ("ppo does not use optim.batch_size", "step_batch_size")),
    Case("oracle-without-spg", "config", "pipeline refine_methods [oracle] without spg",
         "exit 2: oracle labels as many pairs as SPG made", lambda tmp: pipeline(tmp, refine_methods=["oracle"]),
         ("include 'spg' in refine_methods",)),
    Case("reference-baseline-builtin-pool", "config", "eval_baseline reference with the built-in pool",
         "exit 2: the built-in pool has no reference answers",
         lambda tmp: pipeline(tmp, eval_baseline="reference"), ("set eval_baseline: sft",)),
    Case("unknown-refine-method", "config", "refine_methods [magic]", "exit 2; lists the methods",
         lambda tmp: pipeline(tmp, refine_methods=["magic"]), ("unknown refine method(s) ['magic']",)),
    Case("label-noise-out-of-range", "config", "label_noise 0.9", "exit 2",
         lambda tmp: pipeline(tmp, label_noise=0.9), ("label_noise = 0.9 is out of range: label_noise must be in [0, 0.5]",)),
    Case("unknown-command", "cli", "`rlp rewrd`", "exit 2; points to `rlp --help`",
         lambda tmp: ["rewrd"], ("unknown command 'rewrd'", "rlp --help")),
    # ---- training
    Case("nan-loss", "training", "a loss that becomes NaN (learning rate 1e30)",
         "exit 2: NonFiniteError names the quantity and step; the last good checkpoint is kept for resume",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD, {**GOOD, "prompt": "Name a stone."}]), "--optim.learning_rate",
                            "1e30", "--optim.save_every", "1", "--optim.max_steps", "3"),
         ("reward-model loss became nan at step 2", "last good checkpoint"), check=nan_kept_checkpoint),
    Case("unwritable-output-dir", "training", "an output_dir that cannot be created (under a file)",
         "exit 2 before training starts",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD])) + ["--output_dir", str(write(tmp, "f", "x") / "out")],
         ("is not writable",), check=nothing_trained),
    # ---- issue 16: ranges, model kinds, readers, I/O errors
    Case("causal-lm-as-reward-model", "model", "a causal LM folder as `ppo --reward_model`",
         "exit 2: a reward model is a sequence classifier with one output; says to make one with `rlp reward`",
         lambda tmp: ppo(tmp, "--reward_model", causal_lm(tmp)),
         ("is not a reward model", "LlamaForCausalLM", "rlp reward --model"), check=untouched("out")),
    Case("causal-lm-in-ensemble", "model", "a causal LM among `--reward_ensemble` members", "exit 2, as above",
         lambda tmp: ppo(tmp, "--reward_ensemble", f"[{causal_lm(tmp)}]"), ("is not a reward model",)),
    Case("causal-lm-rm-accuracy", "model", "a causal LM as `eval rm-accuracy --rm_path`", "exit 2, as above",
         lambda tmp: ["eval", "rm-accuracy", "--rm_path", causal_lm(tmp), "--preferences", str(jsonl(tmp, [GOOD])),
                      "--output_dir", str(tmp / "acc")], ("is not a reward model", "rlp reward")),
    Case("causal-lm-rm-annotator", "model", "a causal LM as `annotate --annotator.rm_path`", "exit 2, as above",
         lambda tmp: ["annotate", "--input", str(jsonl(tmp, [{"prompt": "Name a fruit.", "responses": ["A", "B"]}])),
                      "--annotator.kind", "rm", "--annotator.rm_path", causal_lm(tmp), "--output_dir",
                      str(tmp / "ann")], ("is not a reward model",)),
    Case("causal-lm-previous-rm", "model", "a causal LM as `refine --previous_rm`", "exit 2, as above",
         lambda tmp: ["refine", "--method", "spg", "--init", "previous_rm", "--previous_rm", causal_lm(tmp),
                      "--preference_file", str(jsonl(tmp, [GOOD])), "--synthetic_file", str(jsonl(tmp, [GOOD])),
                      "--output_dir", str(tmp / "out")], ("is not a reward model",), check=untouched("out")),
    Case("classifier-without-head", "model", "a 1-label classifier config whose weights lack the head",
         "exit 2: its head would be random", lambda tmp: ["eval", "rm-accuracy", "--rm_path",
                                                          headless_classifier(tmp), "--preferences",
                                                          str(jsonl(tmp, [GOOD]))],
         ("without trained head weights", "score.weight")),
    Case("max-steps-negative", "config", "`--optim.max_steps -3`", "exit 2 before any work; names key, value and range",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--optim.max_steps", "-3"),
         ("optim.max_steps = -3 is out of range: optim.max_steps must be >= 1",), check=nothing_trained),
    Case("epochs-zero", "config", "`--optim.epochs 0`", "exit 2 before any work",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD])) + ["--optim.max_steps", "null", "--optim.epochs", "0"],
         ("optim.epochs = 0 is out of range",), check=nothing_trained),
    Case("ppo-steps-zero", "config", "`rlp ppo --steps 0`", "exit 2 before any work",
         lambda tmp: ppo(tmp, "--steps", "0"), ("steps = 0 is out of range",), check=untouched("out")),
    Case("ppo-epochs-zero", "config", "`--ppo_epochs 0`", "exit 2", lambda tmp: ppo(tmp, "--ppo_epochs", "0"),
         ("ppo_epochs = 0 is out of range",)),
    Case("max-length-zero", "config", "`--max_length 0`", "exit 2",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--max_length", "0"), ("max_length = 0 is out of range",)),
    Case("grad-accumulation-zero", "config", "`--optim.gradient_accumulation_steps 0`", "exit 2",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--optim.gradient_accumulation_steps", "0"),
         ("optim.gradient_accumulation_steps = 0",)),
    Case("gamma-above-1", "config", "`rlp ppo --gamma 2`", "exit 2; a discount factor is in [0, 1]",
         lambda tmp: ppo(tmp, "--gamma", "2"), ("gamma = 2.0 is out of range: gamma must be in [0, 1]",)),
    Case("lam-negative", "config", "`rlp ppo --lam -1`", "exit 2", lambda tmp: ppo(tmp, "--lam", "-1"),
         ("lam = -1.0 is out of range: lam must be in [0, 1]",)),
    Case("kl-coef-negative", "config", "`--kl_coef -1`", "exit 2", lambda tmp: ppo(tmp, "--kl_coef", "-1"),
         ("kl_coef = -1.0 is out of range: kl_coef must be >= 0",)),
    Case("top-p-above-1", "config", "`rlp sample --top_p 2`", "exit 2",
         lambda tmp: ["sample", "--prompts_file", str(prompts(tmp)), "--top_p", "2"],
         ("top_p = 2.0 is out of range: top_p must be in (0, 1]",)),
    Case("similarity-threshold-above-1", "config", "`rlp spg --similarity_threshold 2`", "exit 2",
         lambda tmp: ["spg", "--similarity_threshold", "2"], ("similarity_threshold must be in [-1, 1]",)),
    Case("z-dim-zero", "config", "`rlp refine --z_dim 0`", "exit 2", lambda tmp: ["refine", "--z_dim", "0"],
         ("z_dim = 0 is out of range",)),
    Case("learning-rate-nan", "config", "`--optim.learning_rate nan`", "exit 2: NaN and inf are refused for every float",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--optim.learning_rate", "nan"),
         ("optim.learning_rate = nan is not a finite number",)),
    Case("logging-every-zero", "config", "`--optim.logging_every 0`", "exit 2",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--optim.logging_every", "0"), ("optim.logging_every = 0",)),
    Case("rollout-batch-size-zero", "config", "`--rollout_batch_size 0`", "exit 2",
         lambda tmp: ppo(tmp, "--rollout_batch_size", "0"), ("rollout_batch_size = 0 is out of range",)),
    Case("rollout-chunk-size-zero", "config", "`--rollout_chunk_size 0`", "exit 2",
         lambda tmp: ppo(tmp, "--rollout_chunk_size", "0"), ("rollout_chunk_size = 0 is out of range",)),
    Case("max-new-tokens-zero", "config", "`rlp generate --max_new_tokens 0`", "exit 2",
         lambda tmp: ["generate", "--instructions_file", str(prompts(tmp)), "--max_new_tokens", "0"],
         ("max_new_tokens = 0 is out of range",)),
    Case("rm-accuracy-batch-size-zero", "config", "`eval rm-accuracy --batch_size 0`", "exit 2",
         lambda tmp: ["eval", "rm-accuracy", "--batch_size", "0"], ("batch_size = 0 is out of range",)),
    Case("pipeline-n-eval-zero", "config", "`rlp run --data.n_eval 0`", "exit 2 before stage 1 (was: stage 12)",
         lambda tmp: pipeline(tmp) + ["--data.n_eval", "0"], ("data.n_eval = 0 is out of range",),
         check=untouched("run")),
    Case("mixed-formats", "data", "a file mixing TRL and AlpacaFarm rows",
         "exit 2; names the odd row and both formats (was: KeyError 'chosen')", reward_rows(*TRL_THEN_ALPACAFARM),
         ("row 2", "a 'alpacafarm' row in a 'trl' file")),
    Case("mixed-formats-skip-invalid", "data", "the same with `--skip_invalid`",
         "exit 0: the odd row is reported and skipped",
         lambda tmp: ["--skip_invalid", *reward(tmp, jsonl(tmp, TRL_THEN_ALPACAFARM))],
         ('"train_pairs": 2', '"steps": 1'), code=0),
    Case("deep-nesting", "data", "a JSONL row nested 100,000 levels deep",
         "exit 2; a bad row (was: RecursionError); `--skip_invalid` skips it", reward_rows(GOOD, DEEP),
         ("row 2", "nested too deeply")),
    Case("deep-nesting-json-array", "data", "a JSON array file nested 100,000 levels deep", "exit 2",
         lambda tmp: reward(tmp, write(tmp, "d.json", f"[{DEEP}]")), ("nested too deeply",)),
    Case("lone-surrogate-inspect", "data", "a lone surrogate `\\ud800` in a response (`rlp data inspect`)",
         "reported as an invalid row, naming row and field",
         lambda tmp: ["data", "inspect", "--json", str(jsonl(tmp, [GOOD, SURROGATE]))], ('"kept": 1',), code=0,
         check=invalid_rows("row 2: field 'chosen': invalid Unicode: a lone surrogate")),
    Case("lone-surrogate", "data", "the same in `rlp reward`", "exit 2 before the tokenizer sees it (was: a "
         "tokenizer crash); `--skip_invalid` skips the row", reward_rows(GOOD, SURROGATE),
         ("row 2: field 'chosen': invalid Unicode",), check=nothing_trained),
    Case("lone-surrogate-skip-invalid", "data", "the same with `--skip_invalid`",
         "exit 0: the row is reported and skipped; training sees only valid text",
         lambda tmp: ["--skip_invalid", *reward(tmp, jsonl(tmp, [GOOD, SURROGATE]))], ('"train_pairs": 1',), code=0),
    Case("disk-full", "training", "a full disk when the model is saved (ENOSPC)",
         "exit 2; one paragraph naming the path and \"No space left on device\"; no partial `model/`",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD])), ("out/model: No space left on device", "free some space"),
         patch=disk_full_on_model_save, check=untouched("out/model", "out/summary.json")),
    Case("disk-full-checkpoint", "training", "a full disk while torch writes a checkpoint (its RuntimeError)",
         "exit 2 naming the checkpoint and the cause; the last good checkpoint is kept and a rerun resumes",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--optim.save_every", "1", "--optim.max_steps", "3"),
         ("out/checkpoint: No space left on device",), patch=disk_full_on_second_checkpoint,
         check=resumes_after_disk_full),
    Case("permission-denied", "training", "an output folder without write permission", "exit 2 before training",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD])), ("is not writable", "Permission denied", "permissions"),
         patch=permission_denied, check=nothing_trained),
    Case("output-dir-is-a-file", "training", "an existing file given as output_dir", "exit 2 before training",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD])) + ["--output_dir", str(write(tmp, "taken", "x"))],
         ("taken", "is an existing file"), check=nothing_trained),
]


# ---- run folders (issue 16): path safety, run fingerprints, the run lock, `rlp run --status`


def tree(path: Path) -> dict[str, str]:
    """A file's bytes, or every file and folder under a folder: what must not change."""
    if path.is_file():
        return {str(path): path.read_bytes().hex()}
    return {str(p): p.read_bytes().hex() if p.is_file() else "folder" for p in sorted(path.rglob("*"))}


def snapshot(tmp: Path, path: Path) -> None:
    (tmp / "snapshot.json").write_text(json.dumps({"path": str(path), "tree": tree(path)}))


def unchanged(tmp: Path, _: str) -> None:
    saved = json.loads((tmp / "snapshot.json").read_text())
    assert tree(Path(saved["path"])) == saved["tree"]


def ppo_into_its_policy(tmp: Path) -> list[str]:
    ow = tmp / "ow"
    shutil.copytree(resolve_model("tiny"), ow / "model")
    snapshot(tmp, ow)
    prompts = jsonl(tmp, [{"instruction": "Name a fruit."}], "prompts.jsonl")
    return ["ppo", "--policy", str(ow / "model"), "--reward_model", "tiny", "--prompts_file", str(prompts),
            "--output_dir", str(ow), "--overwrite", "true", "--steps", "1"]


def output_file_is_input(command: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        s = jsonl(tmp, [{"prompt": [{"role": "user", "content": "Hi?"}], "responses": ["a", "b"]}], "S.jsonl")
        snapshot(tmp, s)
        args = (["spg", "--samples_file", str(s), "--reward_model", "tiny"] if command == "spg"
                else ["sample", "--prompts_file", str(s), "--n", "2"])
        return [*args, "--output_file", str(s)]

    return build


def finished_reward_run(tmp: Path, command: str = "reward", checkpoint: bool = False,
                        settings: dict | None = None) -> list[str]:
    """`reward(...)` arguments, with ``out/`` holding what a run of ``command`` with other settings left."""
    from rlp_align.core.config import load_config, parse_overrides
    from rlp_align.core.run_folder import FINGERPRINT, fingerprint
    from rlp_align.train.reward import RewardConfig

    args = reward(tmp, jsonl(tmp, [GOOD]))
    earlier = args + [x for k, v in (settings or {}).items() for x in (f"--{k}", str(v))]
    fp = fingerprint(command, load_config(RewardConfig, None, parse_overrides(earlier[1:])))
    write(tmp, f"out/{FINGERPRINT}", json.dumps(fp))
    write(tmp, "out/checkpoint/trainer_state.json" if checkpoint else "out/summary.json", json.dumps({"step": 1}))
    snapshot(tmp, tmp / "out")
    return args


HELD: list = []  # the process `locked_output` starts to hold a run lock, until `released` ends it


def locked_output(tmp: Path) -> list[str]:
    code = ("import sys, time; from rlp_align.core.run_folder import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(300)")
    HELD.append(subprocess.Popen([sys.executable, "-c", code, str(tmp / "out")], stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}))
    assert HELD[-1].stdout.readline().strip() == "locked"
    return reward(tmp, jsonl(tmp, [GOOD]))


def released(tmp: Path, output: str) -> None:
    holder = HELD.pop()
    holder.kill()
    holder.wait()
    assert f"(PID {holder.pid})" in output and not (tmp / "out" / "metrics.jsonl").exists()


CASES += [
    Case("ppo-overwrite-output-holds-policy", "cli", "`rlp ppo --policy ow/model --output_dir ow --overwrite true`",
         "exit 2 before anything is written: the output contains an input; `ow/` stays byte-identical",
         ppo_into_its_policy, ("the output", "contains the input policy"), check=unchanged),
    Case("spg-output-is-samples-file", "cli", "`rlp spg --samples_file S --output_file S`",
         "exit 2; S stays byte-identical", output_file_is_input("spg"), ("is the input samples_file",),
         check=unchanged),
    Case("sample-output-is-prompts-file", "cli", "`rlp sample --prompts_file S --output_file S` (or a symlink to S)",
         "exit 2; S stays byte-identical", output_file_is_input("sample"), ("is the input prompts_file",),
         check=unchanged),
    Case("output-file-is-a-folder", "cli", "`--output_file` naming an existing folder",
         "exit 2 before any model is loaded",
         lambda tmp: ["sample", "--prompts_file", str(jsonl(tmp, [{"instruction": "Hi"}])), "--output_file",
                      str(tmp)], ("is an existing folder",)),
    Case("rerun-finished-other-settings", "training",
         "a rerun into a finished output folder with another learning rate (or steps, or data)",
         "exit 2 naming the differing keys and offering `--overwrite true`; the old result is not returned",
         lambda tmp: finished_reward_run(tmp, settings={"optim.learning_rate": 0.5, "optim.max_steps": 4}),
         ("optim.learning_rate (0.5 -> 0.001)", "optim.max_steps (4 -> 1)", "--overwrite true"), check=unchanged),
    Case("resume-other-settings", "training", "a rerun into a folder holding a checkpoint made with other settings",
         "exit 2 naming the keys: resuming would mix two runs", lambda tmp: finished_reward_run(
             tmp, checkpoint=True, settings={"optim.batch_size": 4}), ("holds a checkpoint", "optim.batch_size (4 -> 2)"),
         check=unchanged),
    Case("folder-of-another-command", "training", "`rlp reward --output_dir` a folder written by `rlp ppo`",
         "exit 2 naming the command that wrote it", lambda tmp: finished_reward_run(tmp, command="ppo"),
         ("was written by `rlp ppo`",), check=unchanged),
    Case("output-folder-in-use", "training", "a second process on an output folder whose run lock is held",
         "exit 2 naming the holder's PID (a dead holder's lock is taken over, with a message)", locked_output,
         ("in use by another rlp process",), check=released),
    Case("status-not-a-run-folder", "cli", "`rlp run --status` on a folder with no stage manifests, or no folder",
         "exit 2: not a run folder", lambda tmp: ["run", "--status", str(tmp)], ("not a run folder",)),
]


# ---- issue 23: one guard for every output path; exit 0 only with a right result


def users_model_folder(tmp: Path) -> list[str]:
    """`reward(...)` into ``out/``, a plain folder holding the user's own ``model/`` (no rlp record)."""
    shutil.copytree(resolve_model("tiny"), tmp / "out" / "model")
    snapshot(tmp, tmp / "out")
    return reward(tmp, jsonl(tmp, [GOOD]))


def users_file(tmp: Path) -> list[str]:
    mine = write(tmp, "samples.jsonl", "my own notes\n")
    snapshot(tmp, mine)
    return ["sample", "--prompts_file", str(prompts(tmp)), "--n", "2", "--output_file", str(mine)]


def inside_a_live_run(tmp: Path) -> list[str]:
    return locked_output(tmp) + ["--output_dir", str(tmp / "out" / "model")]


def judge_replies(refuse: str) -> Callable[[pytest.MonkeyPatch], None]:
    """An LLM judge answering HTTP 200 with a refusal for every prompt containing ``refuse``."""
    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        def post(self, messages):
            user = messages[-1]["content"]
            return "I'm sorry, I can't help with that." if refuse in user else "Output (a)"

        monkeypatch.setattr("rlp_align.judge.annotators.llm.LLMJudge._post", post)

    return patch


def annotate_llm(tmp: Path) -> list[str]:
    rows = [{"prompt": p, "responses": ["A banana.", "A rock."]} for p in ("Name a fruit.", "Name a stone.")]
    return ["annotate", "--input", str(jsonl(tmp, rows)), "--annotator.kind", "llm", "--annotator.model", "judge",
            "--annotator.base_url", "http://127.0.0.1:9/v1", "--output_dir", str(tmp / "ann")]


def help_default_is_the_runs(_: Path, output: str) -> None:
    from rlp_align.train.reward import RewardConfig

    assert f"--optim.learning_rate (float, default {RewardConfig().optim.learning_rate!r})" in output


CASES += [
    Case("output-folder-holds-users-model", "cli", "`rlp reward --output_dir D`, D a plain folder holding the "
         "user's own `model/` (with or without `--overwrite true`)",
         "exit 2: a folder holding files rlp did not write is never written into; D stays byte-identical "
         "(was: silently replaced)", users_model_folder, ("holds files rlp did not write (model)",),
         check=unchanged),
    Case("output-file-not-written-by-rlp", "cli", "`--output_file` naming an existing file rlp did not write "
         "(e.g. a finished RM's `model.safetensors`)", "exit 2: only the same command's own unchanged output is "
         "replaced (its record: `.NAME.rlp.json`); the file stays byte-identical", users_file,
         ("was not written by rlp",), check=unchanged),
    Case("output-inside-live-run", "training", "`rlp reward --output_dir X/model` while another process runs in X",
         "exit 2 naming the holder's PID: the run lock covers nested paths (was: both exit 0, X's save deletes "
         "the second run)", inside_a_live_run, ("in use by another rlp process", "lies inside it"), check=released),
    Case("output-inside-input", "cli", "`rlp generate --policy M --output_file M/answers.jsonl`",
         "exit 2: an output may not be, contain or lie inside an input",
         lambda tmp: ["generate", "--policy", causal_lm(tmp), "--instructions_file", str(prompts(tmp)),
                      "--output_file", str(tmp / "policy" / "answers.jsonl")], ("lies inside the input policy",)),
    Case("yaml-duplicate-key", "config", "a YAML config with the same key twice (`optim:` twice)",
         "exit 2 naming the key and both lines (was: the first section silently dropped)",
         lambda tmp: ["reward", "--config", str(write(tmp, "c.yaml", "optim:\n  learning_rate: 0.1\nmodel: tiny\n"
                                                       "optim:\n  batch_size: 2\n"))],
         ("the key 'optim' appears twice", "lines 1 and 4")),
    Case("chosen-equals-rejected-all", "data", "a preference file whose every pair has chosen == rejected",
         "exit 2: nothing to learn from (was: trained on zero gradient, exit 0)",
         reward_rows({**GOOD, "rejected": GOOD["chosen"]}), ("1 with chosen identical to rejected",),
         check=nothing_trained),
    Case("chosen-equals-rejected-some", "data", "some pairs with chosen == rejected",
         "exit 0: those pairs are skipped with a counted warning; `rlp data inspect` counts them",
         reward_rows(GOOD, {**GOOD, "prompt": "Name a stone.", "rejected": GOOD["chosen"]}),
         ("1 of 2 preference pairs have chosen identical to rejected and are skipped", '"train_pairs": 1'), code=0),
    Case("llm-judge-refuses", "data", "an LLM judge answering HTTP 200 with a refusal (\"I'm sorry, I can't help\")",
         "exit 2 quoting the reply, nothing written (was: tie_rate 1.0 and coin-flip labels)", annotate_llm,
         ("gave no valid verdict for any of the 2 pairs", "I'm sorry"), patch=judge_replies("Name a"),
         check=untouched("ann")),
    Case("llm-judge-refuses-some", "data", "an LLM judge refusing some pairs",
         "exit 0: those pairs are left out with a counted warning (not labelled by a coin flip)", annotate_llm,
         ("no valid verdict for 1 of 2 pairs", '"n_pairs_without_verdict": 1', '"tie_rate": 0.0'), code=0,
         patch=judge_replies("stone")),
    Case("winrate-n-boot-1", "config", "`rlp eval winrate --n_boot 1`",
         "exit 2 (was: a CI that excludes its own mean)", lambda tmp: ["eval", "winrate", "--n_boot", "1"],
         ("n_boot = 1 is out of range: n_boot must be >= 100",)),
    Case("reward-model-as-policy", "model", "a reward model given as `rlp sample --policy`",
         "exit 2 (was: sampled with its score head silently dropped)",
         lambda tmp: ["sample", "--policy", headless_classifier(tmp), "--prompts_file", str(prompts(tmp)), "--n", "2",
                      "--output_file", str(tmp / "s.jsonl")], ("is a reward model", "not a policy")),
    Case("inspect-head-negative", "cli", "`rlp data inspect --head -1`", "exit 2 (was: 7 of 8 rows printed)",
         lambda tmp: ["data", "inspect", "--head", "-1", str(jsonl(tmp, [GOOD]))], ("--head -1",)),
    Case("help-default-is-the-runs", "cli", "`rlp reward --help`'s learning-rate default",
         "the help reads each default from the config's default instance, the one definition runs use "
         "(was: 1e-05 shown, 3e-06 used)", lambda tmp: ["reward", "--help"], ("default 3e-06",), code=0,
         check=help_default_is_the_runs),
]


# ---- issue 23 §3-4: memory, tracebacks, misleading messages, columnar data; rows found by tests/test_fuzz.py


def same_settings_folder(*files: tuple[str, str]) -> Callable[[Path], list[str]]:
    """`reward(...)` into ``out/`` of a run with the same settings, holding ``files`` (the last one snapshot)."""
    def build(tmp: Path) -> list[str]:
        from rlp_align.core.config import load_config, parse_overrides
        from rlp_align.core.run_folder import FINGERPRINT, config_inputs, fingerprint
        from rlp_align.train.reward import RewardConfig

        args = reward(tmp, jsonl(tmp, [GOOD]))
        cfg = load_config(RewardConfig, None, parse_overrides(args[1:]))
        write(tmp, f"out/{FINGERPRINT}", json.dumps(fingerprint("reward", cfg, config_inputs(cfg))))
        for name, content in files:
            snapshot(tmp, write(tmp, f"out/{name}", content))  # the damaged file must stay as it was
        return args

    return build


def damaged_summary(tmp: Path) -> list[str]:
    """A finished run of the same settings whose recorded summary.json was then cut to ``{``."""
    args = same_settings_folder(("summary.json", '{"train": {}}'))(tmp)
    from rlp_align.core.run_folder import FINGERPRINT, record_outputs

    record_outputs("reward", [(tmp / "out", "folder")])  # what rlp records when a run ends
    write(tmp, "out/summary.json", "{")
    snapshot(tmp, tmp / "out")
    assert FINGERPRINT in {p.name for p in (tmp / "out").iterdir()}
    return args


def table(tmp: Path, name: str, rows: list[dict]) -> Path:
    """A parquet file of ``rows`` (every row gets every column, as in a real file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in rows for k in r))
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), tmp / name)
    return tmp / name


def saved_dataset(tmp: Path) -> Path:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list([GOOD, {**GOOD, "prompt": "Name a stone."}]).save_to_disk(str(tmp / "ds"))
    return tmp / "ds"


HUGE = {**GOOD, "chosen": "word " * 1_000_000}  # a 5 MB field


def moved_finished_run(tmp: Path) -> list[str]:
    """`reward(...)` into a copy of a finished run with the same settings (found by the fuzzer)."""
    args = reward(tmp, jsonl(tmp, [GOOD]))
    assert cli.main(args) == 0
    shutil.copytree(tmp / "out", tmp / "moved")
    shutil.rmtree(tmp / "out")
    return [*args, "--output_dir", str(tmp / "moved")]


def tokenizer_changed_after_finish(tmp: Path) -> list[str]:
    """A finished reward run, then its input model's tokenizer.json cut short (found by the fuzzer)."""
    args = reward(tmp, jsonl(tmp, [GOOD]), model=str(model_copy(tmp, lambda f: None)))
    assert cli.main(args) == 0
    tokenizer = tmp / "model" / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes()[:272])
    snapshot(tmp, tmp / "out")
    return args


def reports_new_place(tmp: Path, output: str) -> None:
    result, _ = json.JSONDecoder().raw_decode(output[output.rindex('{\n  "output_dir"'):])
    assert result["output_dir"] == str(tmp / "moved") and result["model_dir"] == str(tmp / "moved/model")

CASES += [
    Case("huge-field", "data", "a 5 MB response with `--max_length 64` (the issue's was 50 MB)",
         "accepted and truncated; the field is cut by characters before tokenising (was: the whole field "
         "tokenised, 68 s and 9.2 GB for 50 MB)", reward_rows(HUGE, GOOD), ("1 of 2 preference pairs were truncated",),
         code=0),
    Case("vocab-size-mismatch", "model", "a model whose config.json vocab_size differs from its weights",
         "exit 2 naming the embedding's shape and the config's sizes (was: a transformers traceback)",
         reward_with_model(lambda f: edit_json(f / "config.json", lambda c: c.update(vocab_size=1000))),
         ("the shapes of its weights differ from its config.json", "[512, 64]", "vocab_size=1000")),
    Case("int-overflow", "config", "`--optim.batch_size 99999999999999999999`",
         "exit 2 before any work, no output folder (was: OverflowError, fingerprint.json left behind)",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--optim.batch_size", "99999999999999999999"),
         ("optim.batch_size = 99999999999999999999 is too large",), check=untouched("out")),
    Case("metrics-not-json", "training", "an unfinished output folder whose metrics.jsonl is not JSON",
         "exit 2 naming the file and line; the file is left as it was (was: JSONDecodeError)",
         same_settings_folder(("metrics.jsonl", "garbage{\n")), ("out/metrics.jsonl, line 1: not a metrics row",),
         check=unchanged),
    Case("summary-not-json", "training", "a finished output folder whose summary.json is not JSON",
         "exit 2 offering --overwrite (was: JSONDecodeError); since issue 30 the run's record of its summary "
         "speaks first", damaged_summary, ("summary.json", "not reported finished", "--overwrite true"),
         check=unchanged),
    Case("diverged-before-checkpoint", "training", "a run diverging (learning rate 1e30) before its first checkpoint",
         "exit 2 saying no checkpoint exists (was: \"the last good checkpoint is kept in out/checkpoint\")",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--optim.learning_rate", "1e30", "--optim.max_steps", "6"),
         ("became nan", "no checkpoint had been saved yet"), check=untouched("out/checkpoint")),
    Case("pipeline-n-preference-1", "config", "`rlp run --data.n_preference 1`",
         "exit 2 naming the key before stage 1 (was: stage 2 failing on an internal empty file)",
         lambda tmp: pipeline(tmp) + ["--data.n_preference", "1"], ("data.n_preference = 1 is out of range",),
         check=untouched("run")),
    Case("parquet-named-jsonl", "data", "a parquet file named train.jsonl",
         "read as parquet, recognised by its magic bytes (was: refused as \"not valid UTF-8\")",
         lambda tmp: ["data", "inspect", "--json", str(table(tmp, "train.jsonl", [GOOD]))], ('"format": "trl"',),
         code=0, check=report("kept", 1)),
    Case("parquet-bad-row", "data", "a parquet row with a null `rejected`",
         "exit 2 naming row and field, as in JSONL (a null cell is a missing field); `--skip_invalid` skips it",
         lambda tmp: reward(tmp, table(tmp, "d.parquet", [GOOD, {**GOOD, "rejected": None}])),
         ("d.parquet, row 2, field 'rejected': missing",)),
    Case("finished-run-moved", "training", "a rerun into a finished run's folder after it was moved or copied",
         "exit 0 with the finished result, its paths the folder's new place (found by the fuzzer; was: the old "
         "paths, which may be gone)", moved_finished_run, ('"steps": 1',), code=0, check=reports_new_place),
    Case("num-threads-not-a-number", "cli", "`RLP_NUM_THREADS=abc` in the environment",
         "exit 2 naming the variable (found by the fuzzer; was: ValueError traceback)",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD])), ("RLP_NUM_THREADS must be a whole number",),
         patch=lambda mp: mp.setenv("RLP_NUM_THREADS", "abc"), check=untouched("out")),
    Case("integer-too-long", "data", "a JSONL value that is an integer of 5,000 digits",
         "exit 2: a bad row naming the limit; `--skip_invalid` skips it (found by the fuzzer; was: ValueError "
         "traceback from Python's 4,300-digit limit)", reward_rows(GOOD, '{"prompt": "a", "chosen": "b", '
                                                                       '"rejected": ' + "9" * 5000 + "}"),
         ("row 2", "Exceeds the limit (4300 digits)")),
    Case("mixed-precision-env", "cli", "`ACCELERATE_MIXED_PRECISION=fp8` in the environment",
         "exit 2 naming the variable (found by the fuzzer; was: a message about the `mixed_precision` option, "
         "which the user had not set)", lambda tmp: reward(tmp, jsonl(tmp, [GOOD])),
         ("ACCELERATE_MIXED_PRECISION='fp8'",), patch=lambda mp: mp.setenv("ACCELERATE_MIXED_PRECISION", "fp8")),
    Case("finished-run-tokenizer-changed", "training",
         "a rerun into a finished run whose input model's tokenizer.json was changed since",
         "exit 2: the run fingerprint hashes the tokenizer files too (found by the fuzzer; was: exit 0 with the old "
         "result, though the same command on a clean folder fails on the broken tokenizer)",
         tokenizer_changed_after_finish, ("made with other settings", "model (content changed)"), check=unchanged),
    Case("datasets-folder", "data", "a Hugging Face `datasets` folder (save_to_disk) as data",
         "accepted: read like JSONL (format detection, row errors, --skip_invalid)",
         lambda tmp: ["data", "inspect", "--json", str(saved_dataset(tmp))], ('"format": "trl"',), code=0,
         check=report("kept", 2)),
]


# ---- issue 30 §1 and §4 (trust-a): rlp writes only what it owns; paths and resources


def users_folder(*files: tuple[str, str]) -> Callable[[Path], list[str]]:
    """`reward(...)` into ``out/``, a plain folder holding the user's ``files`` (rlp's names, no rlp marker)."""
    def build(tmp: Path) -> list[str]:
        for name, content in files:
            write(tmp, f"out/{name}", content)
        snapshot(tmp, tmp / "out")
        return reward(tmp, jsonl(tmp, [GOOD]))

    return build


_HELD_FDS: list[int] = []


def output_file_in_use(tmp: Path) -> list[str]:
    """`rlp sample --output_file S` while another process writes S (its lock, held on a separate open file)."""
    import fcntl

    fd = os.open(tmp / ".s.jsonl.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, f"{os.getppid()}\n".encode(), 0)
    _HELD_FDS.append(fd)
    return ["sample", "--prompts_file", str(prompts(tmp)), "--n", "1", "--max_new_tokens", "2", "--output_file",
            str(tmp / "s.jsonl")]


def release_and_untouched(tmp: Path, output: str) -> None:
    while _HELD_FDS:
        os.close(_HELD_FDS.pop())
    untouched("s.jsonl")(tmp, output)


def finished_with_user_file(*extra: str, inside: str = "model/my-notes.txt") -> Callable[[Path], list[str]]:
    """A finished reward run in ``out/``, then a file of the user's at ``out/<inside>``."""
    def build(tmp: Path) -> list[str]:
        args = reward(tmp, jsonl(tmp, [GOOD]))
        assert cli.main(args) == 0
        write(tmp, f"out/{inside}", "the user's")
        snapshot(tmp, tmp / "out")
        return [*args, *extra]

    return build


def stage_with_user_file(tmp: Path) -> list[str]:
    """An `rlp run` folder whose first stage finished, then a file of the user's in it; the rerun changes a
    setting of that stage (built with the stage cache itself: a whole tiny pipeline is too slow here)."""
    from rlp_align.pipeline.stages import StageCache

    cache = StageCache(tmp / "run", log=lambda _: None)
    cache.run("00_instructions", {"old": True}, lambda folder: write(folder, "sft.jsonl", "{}\n") and {})
    write(tmp, "run/00_instructions/my-notes.txt", "the user's")
    snapshot(tmp, tmp / "run" / "00_instructions")
    return pipeline(tmp)


def home_is_tmp(tmp: Path) -> list[str]:
    """`~` in YAML and in --output_dir, with HOME the case's folder (set back by the case's monkeypatch)."""
    os.environ["HOME"] = str(tmp)
    jsonl(tmp, [GOOD])
    config = write(tmp, "r.yaml", "train_file: ~/data.jsonl\n")
    return ["reward", "--config", str(config), "--model", "tiny", "--output_dir", "~/out", "--optim.max_steps",
            "1", "--optim.batch_size", "2", "--max_length", "64"]


def no_literal_tilde(tmp: Path, _: str) -> None:
    assert (tmp / "out" / "summary.json").exists() and not Path("~").exists() and not (tmp / "~").exists()


def fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.jsonl")
    return tmp / "pipe.jsonl"


def many_rows(tmp: Path) -> list[str]:
    rows = [{**GOOD, "prompt": f"Name fruit number {i}."} for i in range(3000)]
    return reward(tmp, jsonl(tmp, rows))


CASES += [
    Case("output-file-in-use", "cli", "two `rlp sample` on one `--output_file` (K01)",
         "exit 2 naming the other process; every output, file or folder, is locked while a command writes it "
         "(was: both exit 0, one result silently replaced)", output_file_in_use, ("is in use by another rlp "
         "process",), check=release_and_untouched),
    Case("users-summary-in-output-dir", "training", "`--output_dir D`, a plain folder holding only the user's "
         "summary.json (F13)", "exit 2: a folder without rlp's marker is the user's, whatever its file names (was: "
         "printed as a finished result, nothing trained)", users_folder(("summary.json", '{"train": {}}')),
         ("holds files rlp did not write (summary.json)",), check=unchanged),
    Case("users-metrics-in-output-dir", "training", "a plain folder holding the user's metrics.jsonl and "
         "tensorboard/ (F12)", "exit 2, nothing written (was: the user's metrics rows replaced or appended to)",
         users_folder(("metrics.jsonl", '{"step": 1}\n'), ("tensorboard/events.out.tfevents.1", "x")),
         ("holds files rlp did not write (metrics.jsonl, tensorboard)",), check=unchanged),
    Case("stage-holds-users-file", "training", "`rlp run` rerun with a changed setting, a file of the user's in "
         "the stage folder it replaces (F14)", "exit 2 naming the file; a stage folder is replaced only when it "
         "holds nothing but what the stage recorded (was: the user's file silently deleted)",
         stage_with_user_file, ("my-notes.txt", "rerunning the stage 00_instructions"), check=unchanged),
    Case("overwrite-users-file-in-model", "training", "`--overwrite true` on a finished run whose model/ holds "
         "a file of the user's (F09)", "exit 2 naming it; --overwrite deletes only the files the run recorded "
         "(was: deleted)", finished_with_user_file("--overwrite", "true"),
         ("model/my-notes.txt", "rlp did not write"), check=unchanged),
    Case("output-inside-another-run", "cli", "`rlp sample --output_file R/model/answers.jsonl`, R a finished "
         "reward run", "exit 2: an output may not lie inside a folder another rlp command made (its rerun or "
         "--overwrite would delete it)", lambda tmp: finished_with_user_file(inside="x")(tmp) and [
             "sample", "--prompts_file", str(prompts(tmp)), "--output_file", str(tmp / "out/model/answers.jsonl")],
         ("lies inside", "made by `rlp reward`"), check=unchanged),
    Case("tilde-paths", "config", "`~` in `--output_dir` and in a YAML file path (B13)", "expanded to the home "
         "folder by one path function, everywhere (was: a literal ./~ folder)", home_is_tmp, ('"train"',),
         code=0, check=no_literal_tilde, patch=lambda mp: mp.setenv("HOME", os.environ.get("HOME", "/"))),
    Case("inspect-dev-zero", "data", "`rlp data inspect /dev/zero --head 1` (N16)", "exit 2: only regular files "
         "are read (was: one endless line, 23 GB of RAM)", lambda tmp: ["data", "inspect", "/dev/zero", "--head",
                                                                        "1"], ("not a regular file",)),
    Case("data-file-is-a-pipe", "data", "a named pipe (FIFO) as `--train_file`", "exit 2 before opening it "
         "(was: blocked forever)", lambda tmp: reward(tmp, fifo(tmp)), ("not a regular file",)),
    Case("endless-line", "data", "a JSONL file with a line longer than 64 MiB (here the bound is patched to 1 KiB)",
         "exit 2 naming the file and line; every line is read with a bound", lambda tmp: reward(tmp, write(
             tmp, "d.jsonl", json.dumps(GOOD) + "\n" + "x" * 5000)), ("row 2: a line longer than",),
         patch=lambda mp: mp.setattr("rlp_align.core.io.MAX_LINE", 1024)),
    Case("lora-rank-above-width", "config", "`--lora.r 100000` on a 64-wide model (C11)", "exit 2 naming the "
         "width (was: 6.6 GB allocated)", lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--lora.enabled", "true",
                                                              "--lora.r", "100000"),
         ("lora.r 100000 is above the width of this model's layers",)),
    Case("one-step-many-rows", "training", "a 1-step reward run on a 3,000-row file (N13: 1M rows took 218 s, "
         "2.07 GB)", "accepted; only the rows the run's steps read are tokenised (one batch)", many_rows,
         ('"train_pairs": 3000',), code=0),
]


# --------------------------------------------------------------------------------------------------
# Issue 30, parts 2 and 3 (trust-b): models that exchange token ids share a tokenizer, weights match their config
# in full, text a tokenizer cannot read is refused, world options and method lists are checked at start-up


def tiny_rm(tmp: Path) -> str:
    """The tiny model as a reward model (a zero score head, saved): a valid RM folder for PPO."""
    from rlp_align.models import load_tokenizer, load_value_model, save_model

    folder = tmp / "rm"
    if not folder.exists():
        save_model(load_value_model("tiny"), load_tokenizer("tiny"), folder)
    return str(folder)


def tiny_variant(tmp: Path, vocab_size: int) -> str:
    """A tiny Llama with another tokenizer (``vocab_size`` tokens asked of the BPE trainer)."""
    from rlp_align.models import build_tiny_model

    build_tiny_model(tmp / f"tiny{vocab_size}", vocab_size=vocab_size)
    return str(tmp / f"tiny{vocab_size}")


def micro_model(tmp: Path) -> str:
    """The micro world's character-level model (digits, '+', '=', '.'; its unknown token is the pad)."""
    from rlp_align.worlds.micro import build_model

    build_model(tmp / "micro", hidden_size=16, layers=1)
    return str(tmp / "micro")


def micro_rm(tmp: Path) -> str:
    from rlp_align.models import load_tokenizer, load_value_model, save_model

    folder = micro_model(tmp)
    save_model(load_value_model(folder), load_tokenizer(folder), tmp / "micro_rm")
    return str(tmp / "micro_rm")


def layers(n: int) -> Callable[[Path], None]:
    return lambda folder: edit_json(folder / "config.json", lambda c: c.update(num_hidden_layers=n))


def micro_run(tmp: Path, **values) -> list[str]:
    return pipeline(tmp, world="micro", model="micro", data={"n_sft": 4, "n_preference": 4, "n_unlabelled": 2,
                                                             "n_eval": 2}, **values)


CASES += [
    Case("reference-smaller-vocab", "model", "a PPO `--reference` with a smaller vocabulary than the policy's (X01)",
         "exit 2 before any work, naming both tokenizers (was: an IndexError traceback)",
         lambda tmp: ppo(tmp, "--reward_model", tiny_rm(tmp), "--reference", micro_model(tmp)),
         ("reference", "uses another tokenizer than policy tiny", "Set reference"), check=untouched("out")),
    Case("reference-other-tokenizer", "model", "a PPO `--reference` with another tokenizer, same family (X02)",
         "exit 2 before any work (was: exit 0 with a KL of 9.79 between unrelated token spaces)",
         lambda tmp: ppo(tmp, "--reward_model", tiny_rm(tmp), "--reference", tiny_variant(tmp, 300)),
         ("uses another tokenizer than policy tiny",), check=untouched("out")),
    Case("critic-other-tokenizer", "model", "a PPO `--value_model` (separate critic) with another tokenizer",
         "exit 2 before any work: the critic reads the policy's token ids",
         lambda tmp: ppo(tmp, "--reward_model", tiny_rm(tmp), "--value_model", micro_rm(tmp)),
         ("value_model", "uses another tokenizer than policy tiny"), check=untouched("out")),
    Case("critic-defaults-to-other-rm", "model", "PPO's default critic (initialised from the RM) with an RM of "
         "another tokenizer", "exit 2 saying to set value_model or critic head (was: the critic read the policy's "
         "ids as the RM's)", lambda tmp: ppo(tmp, "--reward_model", micro_rm(tmp)),
         ("value_model", "uses another tokenizer", "or critic to head (unset, value_model is the reward model"),
         check=untouched("out")),
    Case("micro-policy-english", "model", "the micro model sampling English prompts (X03)",
         "exit 2: it reads most of each prompt as its unknown token (was: exit 0, meaningless samples)",
         lambda tmp: ["sample", "--policy", micro_model(tmp), "--prompts_file", str(prompts(tmp)), "--output_file",
                      str(tmp / "s.jsonl"), "--n", "2", "--max_new_tokens", "4"],
         ("reads 12 of the 13 tokens of a prompt as its unknown token", "cannot read this text"),
         check=untouched("s.jsonl")),
    Case("micro-rm-english", "model", "a micro RM scoring English preference pairs (X04)",
         "exit 2 naming the unknown share (was: exit 0, a win-rate over pad tokens)",
         lambda tmp: ["eval", "rm-accuracy", "--rm_path", micro_rm(tmp), "--preferences", str(jsonl(tmp, [GOOD]))],
         ("as its unknown token", "cannot read this text")),
    Case("config-more-layers", "model", "a config.json with `num_hidden_layers` 3 for 2 layers of weights (X15)",
         "exit 2: a layer would start random (was: exit 0)", reward_with_model(layers(3)),
         ("config.json does not match its weights", "would start random", "num_hidden_layers=3, the weights hold 2")),
    Case("config-fewer-layers", "model", "a config.json with `num_hidden_layers` 1 for 2 layers of weights",
         "exit 2: a layer's weights would be dropped (was: exit 0)",
         lambda tmp: ["sample", "--policy", str(model_copy(tmp, layers(1))), "--prompts_file", str(prompts(tmp)),
                      "--output_file", str(tmp / "s.jsonl"), "--n", "1", "--max_new_tokens", "2"],
         ("would be dropped", "num_hidden_layers=1, the weights hold 2"), check=untouched("s.jsonl")),
    Case("world-option-unknown", "config", "`world_options.pool.digitz` (M03)",
         "exit 2 before any stage, with did-you-mean (was: a TypeError traceback)",
         lambda tmp: micro_run(tmp, world_options={"pool": {"digitz": 3}}),
         ("unknown config key 'world_options.pool.digitz'", "did you mean 'world_options.pool.digits'"),
         check=untouched("run")),
    Case("world-digits-zero", "config", "`world_options.pool.digits 0` (M04)",
         "exit 2 before any stage (was: the whole pipeline on `0+0` prompts, exit 0)",
         lambda tmp: micro_run(tmp, world_options={"pool": {"digits": 0}}),
         ("world_options.pool.digits = 0 is out of range",), check=untouched("run")),
    Case("world-hidden-size-zero", "config", "`world_options.model.hidden_size 0` (M06)",
         "exit 2 before any stage (was: a traceback)", lambda tmp: micro_run(tmp, world_options={"model": {"hidden_size": 0}}),
         ("world_options.model.hidden_size = 0 is out of range",), check=untouched("run")),
    Case("world-nan-string", "config", "`world_options.judge.filler_penalty: \"nan\"` (a string, M07)",
         "exit 2 before any stage (was: a traceback at stage 02, after SFT)",
         lambda tmp: micro_run(tmp, world_options={"judge": {"filler_penalty": "nan"}}),
         ("world_options.judge.filler_penalty = nan is not a finite number",), check=untouched("run")),
    Case("world-options-of-other-world", "config", "the micro world's `world_options` under `world: instructions` (M08)",
         "exit 2 naming the world the option belongs to (was: a traceback)",
         lambda tmp: pipeline(tmp, world_options={"pool": {"digits": 3}}),
         ("it is an option of the 'micro' world", "set world: micro"), check=untouched("run")),
    Case("refine-methods-repeated", "config", "`refine_methods: [uml, uml]` (M10)",
         "exit 2 before any stage (was: the refinement rerun, deleting the model a finished PPO2 was trained from)",
         lambda tmp: pipeline(tmp, refine_methods=["uml", "uml"]), ("refine_methods names 'uml' more than once",),
         check=untouched("run")),
    Case("sample-output-not-writable", "cli", "`rlp sample` into a folder it may not write (permission denied)",
         "exit 2 naming `--output_file`, the setting `rlp sample` has (was: \"choose another --output_dir\")",
         lambda tmp: ["sample", "--prompts_file", str(prompts(tmp)), "--output_file", str(tmp / "o" / "s.jsonl"),
                      "--n", "1", "--max_new_tokens", "2"], ("Permission denied", "choose another --output_file"),
         patch=permission_denied, check=untouched("o/s.jsonl")),
    Case("quoted-bool", "config", "`lora: {enabled: \"true\"}` in a YAML config (a quoted true)",
         "exit 2 saying the value is text in quotes and how to write it (was: \"expected true or false, got 'true'\")",
         lambda tmp: reward(tmp, jsonl(tmp, [GOOD]), "--config", str(write(tmp, "c.yaml", 'lora: {enabled: "true"}\n'))),
         ("lora.enabled: got the text 'true', in quotes", "Write lora.enabled: true"), check=untouched("out")),
    Case("cache-under-a-file", "cli", "`RLP_ALIGN_CACHE=/dev/null/cache rlp prepare tiny` (the cache path runs "
         "through a file)", "exit 2 naming `$RLP_ALIGN_CACHE`, the setting that moves the cache (was: a hint to "
         "\"choose another path\")", lambda tmp: ["prepare", "tiny"],
         ("/dev/null/cache", "choose another cache folder (set $RLP_ALIGN_CACHE)"),
         patch=lambda mp: mp.setenv("RLP_ALIGN_CACHE", "/dev/null/cache")),
    Case("reward-ensemble-repeated", "config", "a PPO `--reward_ensemble` listing one RM twice",
         "exit 2 before any work: the ensemble would count one member twice",
         lambda tmp: ppo(tmp, "--reward_ensemble", "[a, a]"), ("reward_ensemble names 'a' more than once",),
         check=untouched("out")),
]


# --------------------------------------------------------------------------------------------------
# Running a case


LAST_COMMAND: dict[str, str] = {}  # the command of the case run last (`run_case`), for `unknown_settings`


def run_case(case: Case, tmp: Path, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr + warnings) of the real CLI on this case's input."""
    argv = case.argv(tmp)
    LAST_COMMAND[case.id] = command_of(argv)
    if case.subprocess:
        env = {"RLP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "rlp_align.cli", *argv], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})
        return proc.returncode, proc.stdout, proc.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err + "".join(f"warning: {w.message}\n" for w in caught)



@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys, monkeypatch):
    if case.patch is not None:
        case.patch(monkeypatch)
    code, out, err = run_case(case, tmp_path, capsys)
    assert "Traceback" not in out + err
    assert code == case.code, out[-2000:] + err[-2000:]
    if case.code == 2:
        assert err.count("error: ") == 1, err
        message = err.split("error: ", 1)[1].strip()
        assert message and "\n\n" not in message, f"not one paragraph: {message!r}"
        text = message
    else:
        text = out + err
    for expected in case.expect:
        assert expected in text, f"{expected!r} not in {text[-1500:]!r}"
    if case.code == 2:
        assert not unknown_settings(LAST_COMMAND[case.id], text), (unknown_settings(LAST_COMMAND[case.id], text), text)
    if case.check is not None:
        case.check(tmp_path, out + err)


# --------------------------------------------------------------------------------------------------
# Issue 30, part 5: a message names only settings that exist for the command it came from


def command_of(argv: list[str]) -> str:
    """``rlp eval rm-accuracy ...`` -> "eval rm-accuracy"; ``rlp reward ...`` -> "reward"."""
    return " ".join(argv[:2]) if argv[0] == "eval" else argv[0]


def command_settings(command: str) -> set[str]:
    """Every ``--flag`` the command takes: its config's dotted keys (sections included), and the CLI's own."""
    import dataclasses
    import importlib
    import typing

    generic = {"config", "skip_invalid", "skip-invalid", "help", "key", "section.key"}  # the last two: placeholders
    if command == "data":
        return generic | {"head", "json"}
    if command not in cli.COMMANDS:
        return generic
    module, cls_name, _, _ = cli.COMMANDS[command]
    keys: set[str] = set(generic) | ({"status"} if command == "run" else set())

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            keys.add(prefix + f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")

    walk(getattr(importlib.import_module(module), cls_name), "")
    return keys


ENV_VARS = {"RLP_ALIGN_CACHE", "RLP_DEVICE", "RLP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_HOME", "CUDA_VISIBLE_DEVICES"}


def unknown_settings(command: str, message: str) -> list[str]:
    """The flags and environment variables ``message`` names that do not exist. A flag inside a quoted command
    (`` `rlp reward --model X ...` ``) is checked against that command; any other against ``command``."""
    problems = []
    quoted = re.findall(r"`rlp ((?:eval )?[\w-]+)([^`]*)`", message)
    for other, args in quoted:
        problems += [f"--{f} (rlp {other})" for f in re.findall(r"--([A-Za-z_][\w.]*)", args)
                     if f not in command_settings(other)]
    rest = re.sub(r"`rlp [^`]*`", "", message)
    problems += [f"--{f} (rlp {command})" for f in re.findall(r"(?<![\w/])--([A-Za-z_][\w.]*)", rest)
                 if f not in command_settings(command)]
    problems += [f"${v}" for v in re.findall(r"\$([A-Z][A-Z0-9_]+)", message) if v not in ENV_VARS]
    return problems


def test_unknown_settings_finds_a_wrong_flag():
    assert unknown_settings("best-of-n", "set --output_dir to a new folder") == ["--output_dir (rlp best-of-n)"]
    assert unknown_settings("best-of-n", "set --output_file to a new file") == []
    assert unknown_settings("sample", "run `rlp reward --model M --output_dir D` first") == []
    assert unknown_settings("sample", "run `rlp reward --modell M` first") == ["--modell (rlp reward)"]
    assert unknown_settings("run", "set --ppo.kl_coef or $RLP_ALIGN_CACHE") == []
    assert unknown_settings("run", "set $RLP_CACHE") == ["$RLP_CACHE"]


def test_table_has_enough_distinct_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 25
    assert {c.area for c in CASES} == {"data", "model", "config", "cli", "training"}


# --------------------------------------------------------------------------------------------------
# The doc's case list, generated from the table

START, END = "<!-- cases:start (generated by `python tests/test_bad_input.py`) -->", "<!-- cases:end -->"


def render_cases() -> str:
    lines = ["| id | area | input | exit | how it is handled |", "|---|---|---|---|---|"]
    lines += [f"| `{c.id}` | {c.area} | {c.problem} | {c.code} | {c.handling} |" for c in CASES]
    return "\n".join(lines)


def doc_block(text: str) -> str:
    match = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    assert match, f"{DOC} lacks the generated case block"
    return match.group(1)


def test_doc_lists_every_case():
    text = DOC.read_text(encoding="utf-8")
    assert doc_block(text) == render_cases(), "docs/bad-input.md is stale: run `python tests/test_bad_input.py`"
    for case in CASES:
        assert f"`{case.id}`" in text


if __name__ == "__main__":
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(text.replace(doc_block(text), render_cases()), encoding="utf-8")
    print(f"wrote {len(CASES)} cases to {DOC}")
