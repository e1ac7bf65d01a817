"""Security defaults: safetensors only, no remote code, no network.

- Weights load from safetensors only. A folder with only pickle weights (``.bin``) is refused unless
  ``allow_pickle`` is given, and a refused pickle is never unpickled: the tests plant a pickle whose
  unpickling would create a marker file and check the marker never appears.
- ``trust_remote_code`` is False by default in every config dataclass that has the field and in every loader.
- A reward-model run, including building the tiny model into an empty cache, completes with every
  socket connection and DNS lookup made to fail.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pathlib
import shutil
import socket
import typing

import pytest
import torch
from safetensors.torch import load_file

from rlp_align import cli, models
from rlp_align.core.errors import UserError
from rlp_align.models import load_policy, load_reward_model, resolve_model


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``: a stand-in for arbitrary code in a pickle checkpoint."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def tiny_copy(tmp_path: pathlib.Path, name: str = "model") -> pathlib.Path:
    folder = tmp_path / name
    shutil.copytree(resolve_model("tiny"), folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Safetensors only


@pytest.mark.parametrize("loader", [load_policy, load_reward_model], ids=["policy", "reward_model"])
def test_pickle_only_weights_are_refused_and_never_unpickled(tmp_path, loader):
    folder = tiny_copy(tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, folder / "pytorch_model.bin")

    with pytest.raises(UserError, match="only pickle weights.*--allow_pickle"):
        loader(folder)
    assert not marker.exists()


def test_safetensors_win_over_a_pickle_beside_them(tmp_path):
    folder = tiny_copy(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, folder / "pytorch_model.bin")

    policy = load_policy(folder)
    expected = load_file(str(folder / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(policy.model.embed_tokens.weight, expected)
    assert not marker.exists()


def test_allow_pickle_loads_trusted_pickle_weights(tmp_path):
    folder = tiny_copy(tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    with pytest.raises(UserError):
        load_policy(folder)
    policy = load_policy(folder, allow_pickle=True)
    assert torch.equal(policy.model.embed_tokens.weight, weights["model.embed_tokens.weight"])


def bert_pickle_folder(tmp_path: pathlib.Path, marker: pathlib.Path, num_labels: int = 0) -> pathlib.Path:
    """A tiny BERT folder (config + vocabulary) whose only weights are a booby-trapped pickle."""
    from transformers import BertConfig, BertTokenizerFast

    folder = tmp_path / "bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    if num_labels:
        config.num_labels = num_labels
        config.architectures = ["BertForSequenceClassification"]
    config.save_pretrained(folder)
    torch.save({"embeddings.word_embeddings.weight": _Payload(marker)}, folder / "pytorch_model.bin")
    return folder


def test_sentence_encoder_refuses_pickle_weights(tmp_path):
    from rlp_align.models.embeddings import SentenceEncoder

    marker = tmp_path / "pwned"
    with pytest.raises(UserError, match="safetensors"):
        SentenceEncoder(bert_pickle_folder(tmp_path, marker))
    assert not marker.exists()


def test_nli_model_refuses_pickle_weights(tmp_path):
    from rlp_align.rlp.clustering import NLIEntailment

    marker = tmp_path / "pwned"
    with pytest.raises(UserError, match="safetensors"):
        NLIEntailment(bert_pickle_folder(tmp_path, marker, num_labels=3))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# No remote code


def config_classes() -> list[type]:
    """Every config dataclass reachable from a CLI command, nested sections included."""
    found: dict[str, type] = {}

    def walk(cls: type) -> None:
        if f"{cls.__module__}.{cls.__qualname__}" in found:
            return
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        for tp in typing.get_type_hints(cls).values():
            for candidate in (tp, *typing.get_args(tp)):
                if dataclasses.is_dataclass(candidate):
                    walk(candidate)

    for module_name, cls_name, _, _ in cli.COMMANDS.values():
        walk(getattr(importlib.import_module(module_name), cls_name))
    return list(found.values())


def test_trust_remote_code_defaults_false_in_every_config():
    with_field = []
    for cls in config_classes():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if "trust_remote_code" in fields:
            with_field.append(cls.__name__)
            assert cls().trust_remote_code is False, cls.__name__
        if "allow_pickle" in fields:
            assert cls().allow_pickle is False, cls.__name__
    # The trainers that load models from user paths all expose the switch.
    assert {"RewardConfig", "PPOConfig", "SFTConfig", "RefineConfig"} <= set(with_field)


@pytest.mark.parametrize("fn", [models.load_tokenizer, models.load_policy, models.load_reward_model])
def test_loaders_default_to_no_remote_code_and_no_pickle(fn):
    params = inspect.signature(fn).parameters
    assert params["trust_remote_code"].default is False
    if "allow_pickle" in params:
        assert params["allow_pickle"].default is False


# --------------------------------------------------------------------------------------------------
# No network


def test_reward_run_needs_no_network(tmp_path, monkeypatch, capsys):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network access attempted during an offline run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(OSError):  # the guard works
        socket.create_connection(("example.com", 443), timeout=1)
    attempts.clear()

    monkeypatch.setenv("RLP_ALIGN_CACHE", str(tmp_path / "cache"))  # empty: the tiny model is built offline too
    train = tmp_path / "prefs.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Name fruit {i}.", "chosen": "A banana.", "rejected": "A rock."})
                             + "\n" for i in range(4)))
    code = cli.main(["reward", "--model", "tiny", "--train_file", str(train), "--output_dir", str(tmp_path / "rm"),
                     "--optim.max_steps", "2", "--optim.batch_size", "2", "--optim.learning_rate", "1e-3", "--max_length", "64"])

    assert code == 0, capsys.readouterr().err[-2000:]
    assert attempts == []
    assert (tmp_path / "cache/tiny-llama/model.safetensors").exists()
    summary = json.loads((tmp_path / "rm/summary.json").read_text())
    assert summary["steps"] == 2
    assert (tmp_path / "rm/model/model.safetensors").exists()
    assert not list((tmp_path / "rm/model").glob("*.bin"))
