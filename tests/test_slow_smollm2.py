"""The built-in SmolLM2-135M through the real CLI: `rlp reward`, `rlp ppo`, `rlp refine --method uml`
and `rlp spg` each run a few steps and write checkpoints that Hugging Face's Auto classes load.

Marked slow (minutes on 2 CPU cores); they still run in CI.
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlp_align.cli import main
from rlp_align.data.records import Preference, SampleSet, user_prompt
from rlp_align.data.writers import write_preferences
from rlp_align.models import BUILTIN_MODEL
from rlp_align.train.sample import write_sample_sets

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "How many legs does a spider have?",
             "What is 2 + 2?"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("smol")
    good = ["Paris.", "Red.", "Eight.", "Four."]
    bad = ["I do not know.", "Maybe.", "Many.", "Twenty-two."]
    prefs = [Preference(user_prompt(q), g, b) for q, g, b in zip(QUESTIONS, good, bad)]
    write_preferences(root / "prefs.jsonl", prefs)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    sets = [SampleSet(user_prompt(q), [g, f"The answer is {g.lower()}", b]) for q, g, b in zip(QUESTIONS, good, bad)]
    write_sample_sets(root / "samples.jsonl", sets)
    return root


@pytest.fixture(scope="module")
def reward_model(files):
    out = files / "rm"
    assert main(["reward", "--model", BUILTIN_MODEL, "--train_file", str(files / "prefs.jsonl"), "--output_dir",
                 str(out), "--optim.max_steps", "2", "--optim.batch_size", "4", "--max_length", "64",
                 "--optim.learning_rate", "1e-5"]) == 0
    return out / "model"


def test_reward_cli_writes_a_loadable_sequence_classifier(reward_model):
    model = AutoModelForSequenceClassification.from_pretrained(reward_model)
    assert model.config.num_labels == 1
    assert torch.count_nonzero(model.score.weight) > 0  # the zero-initialised head was trained


def test_ppo_cli_writes_a_loadable_policy(files, reward_model):
    out = files / "ppo"
    assert main(["ppo", "--policy", BUILTIN_MODEL, "--reward_model", str(reward_model), "--prompts_file",
                 str(files / "prompts.jsonl"), "--output_dir", str(out), "--steps", "1", "--rollout_batch_size",
                 "4", "--step_batch_size", "4", "--max_new_tokens", "8", "--optim.save_every", "1"]) == 0
    policy = AutoModelForCausalLM.from_pretrained(out / "model")
    assert sum(p.numel() for p in policy.parameters()) == 134_515_008
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 1 and metrics[0]["kl"] == metrics[0]["kl"]  # finite, reported


def test_refine_uml_cli_writes_a_loadable_reward_model(files, reward_model):
    out = files / "refine"
    assert main(["refine", "--method", "uml", "--base_model", BUILTIN_MODEL, "--previous_rm", str(reward_model),
                 "--preference_file", str(files / "prefs.jsonl"), "--samples_file", str(files / "samples.jsonl"),
                 "--output_dir", str(out), "--optim.max_steps", "2", "--optim.batch_size", "4", "--uml_batch_size", "4",
                 "--max_length", "64", "--optim.learning_rate", "1e-5"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == 1 and not (out / "model" / "uml_head.safetensors").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("d_skl" in m or "uml/d_skl" in m or any("skl" in k for k in m) for m in metrics)


def test_spg_cli_on_smollm2_scores(files, reward_model):
    out = files / "spg.jsonl"
    assert main(["spg", "--samples_file", str(files / "samples.jsonl"), "--reward_model", str(reward_model),
                 "--output_file", str(out), "--gamma", "0.3"]) == 0
    stats = json.loads((files / "spg.jsonl.stats.json").read_text())
    assert stats["instructions"] == 4 and stats["pairs"] == len(out.read_text().splitlines())
