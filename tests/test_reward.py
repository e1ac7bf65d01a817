import json
import math

import pytest
import torch
from helpers import marker_prefs
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlp_align.core.errors import NonFiniteError, UserError
from rlp_align.data.templates import encode_pair
from rlp_align.models import apply_lora, load_reward_model, load_tokenizer, resolve_model, reward_scores
from rlp_align.train import reward as reward_module
from rlp_align.train import training
from rlp_align.train.reward import (
    RewardConfig,
    RewardScorer,
    bradley_terry_loss,
    centering_loss,
    encode_preferences,
    evaluate_preferences,
    micro_batches,
    pair_accuracy,
    train_reward_model,
)
from rlp_align.train.training import LoraConfig, OptimConfig, make_accelerator, read_metrics

pytestmark = pytest.mark.device  # also runs on RLP_TEST_DEVICE (benchmarks/gpu_check.sh)


def small_cfg(out, lora: LoraConfig | None = None, eval_every: int = 0, **optim) -> RewardConfig:
    """A tiny RM run; other keyword arguments are `optim` settings."""
    optim = OptimConfig(**{"learning_rate": 1e-3, "batch_size": 8, "max_steps": 6, **optim})
    return RewardConfig(model="tiny", output_dir=str(out), max_length=64, eval_every=eval_every, optim=optim,
                        lora=lora or LoraConfig())


# ------------------------------------------------------------------------------------------------
# Losses


def test_bradley_terry_loss_hand_computed():
    r_w, r_l = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert bradley_terry_loss(r_w, r_l).item() == pytest.approx(expected, abs=1e-6)
    with_margin = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert bradley_terry_loss(r_w, r_l, margin=1.0).item() == pytest.approx(with_margin, abs=1e-6)
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2), abs=1e-6)


def test_centering_loss_hand_computed():
    r_w, r_l = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    assert centering_loss(r_w, r_l, 0.5).item() == pytest.approx(0.5 * (4.0 + 1.0) / 2)
    assert centering_loss(r_w, r_l, 0.0).item() == 0.0


def test_a_tied_pair_counts_half_in_training_and_held_out_accuracy():
    """Issue 28 N8: a tie is chance, not a miss (as `judge.evaluate.rm_accuracy` counts it)."""
    r_w, r_l = torch.tensor([3.0, 2.0, 1.0, 5.0]), torch.tensor([1.0, 2.0, 4.0, 5.0])  # right, tie, wrong, tie
    assert pair_accuracy(r_w, r_l) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)

    class FirstToken(torch.nn.Module):  # scores a sequence by its first token id
        def forward(self, ids, mask):
            return ids[:, 0].float(), torch.zeros(len(ids), 1)

    pairs = [([3], [1]), ([2], [2]), ([1], [4]), ([5], [5])]
    held_out = evaluate_preferences(FirstToken(), pairs, 0, 2, make_accelerator(0))
    assert held_out["accuracy"] == pytest.approx(0.5) and held_out["pairs"] == 4


def test_micro_batches_cover_rows_and_views():
    chunks = micro_batches([5, 6, 7, 8, 9], 3, 2)
    assert [r for c in chunks for r in c[0]] == [5, 6, 7, 8, 9]
    assert [c[1] for c in chunks] == [[], [0, 1, 2]]  # every view in the last chunk: L_M once per step
    assert len(micro_batches([1], 0, 4)) == 1  # never an empty chunk of pairs


# ------------------------------------------------------------------------------------------------
# Training


def test_reward_model_learns_marker_preference_and_saves_a_loadable_classifier(tmp_path):
    prefs = marker_prefs(260)
    out = tmp_path / "rm"
    cfg = small_cfg(out, batch_size=16, max_steps=15, eval_every=10)
    summary = train_reward_model(cfg, prefs[:200], prefs[200:])
    assert summary["eval"]["accuracy"] >= 0.9
    assert summary["eval"]["pairs"] == 60
    assert (out / "summary.json").exists() and (out / "tensorboard").is_dir()
    assert not (out / "checkpoint").exists()  # removed at the end unless keep_checkpoint
    rows = read_metrics(out)
    assert {"loss", "bt_loss", "accuracy", "margin", "reward_mean", "reward_std", "lr"} <= set(rows[0])
    assert any("eval/accuracy" in r for r in rows)
    assert rows[-1]["step"] == 15

    # the saved folder is a plain num_labels=1 sequence classifier that reproduces the scores
    loaded = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert loaded.config.num_labels == 1 and loaded.score.weight.shape[0] == 1
    tokenizer = load_tokenizer(out / "model")
    acc = make_accelerator(0)
    again = evaluate_preferences(RewardScorer(loaded), encode_preferences(tokenizer, prefs[200:], 64),
                                 tokenizer.pad_token_id, 16, acc)
    for key in ("accuracy", "margin", "reward_mean", "reward_std"):
        assert again[key] == pytest.approx(summary["eval"][key], abs=1e-5)
    # HF's own forward agrees with ours on an unpadded sequence whose last token is not the pad/EOS token
    ids = torch.tensor([encode_pair(tokenizer, prefs[0].prompt, prefs[0].chosen, 64).input_ids[:-1]])
    ours, _ = reward_scores(loaded, ids, torch.ones_like(ids))
    assert loaded(input_ids=ids).logits.squeeze().item() == pytest.approx(ours.item(), abs=1e-5)

    # a finished run is not retrained
    assert train_reward_model(cfg, prefs[:200], prefs[200:]) == json.loads((out / "summary.json").read_text())


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    prefs = marker_prefs(64, seed=1)
    full = train_reward_model(small_cfg(tmp_path / "full", save_every=2), prefs)
    assert full["resumed_from_step"] == 0

    original_log = training.MetricsLogger.log

    def crash_at_step_5(self, step, metrics):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")
        original_log(self, step, metrics)

    monkeypatch.setattr(training.MetricsLogger, "log", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(small_cfg(tmp_path / "cut", save_every=2), prefs)
    assert json.loads((tmp_path / "cut/checkpoint/trainer_state.json").read_text())["step"] == 4
    monkeypatch.setattr(training.MetricsLogger, "log", original_log)

    resumed = train_reward_model(small_cfg(tmp_path / "cut", save_every=2), prefs)
    assert resumed["resumed_from_step"] == 4
    a = load_file(tmp_path / "full/model/model.safetensors")
    b = load_file(tmp_path / "cut/model/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-7), key
    assert [r["step"] for r in read_metrics(tmp_path / "cut") if "loss" in r] == list(range(1, 7))


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = reward_module.bradley_terry_loss

    def nan_from_step_4(r_w, r_l, margin=0.0):
        calls["n"] += 1
        loss = real_loss(r_w, r_l, margin)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(reward_module, "bradley_terry_loss", nan_from_step_4)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteError, match="step 4"):
        train_reward_model(small_cfg(out, save_every=2), marker_prefs(40))
    assert json.loads((out / "checkpoint/trainer_state.json").read_text())["step"] == 2
    assert not (out / "summary.json").exists() and not (out / "model").exists()


def test_lora_trains_only_adapters_and_head(tmp_path):
    peft_model = apply_lora(load_reward_model("tiny", new_head=True), r=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("score" in n for n in trainable)

    out = tmp_path / "lora"
    train_reward_model(small_cfg(out, lora=LoraConfig(enabled=True, r=4), max_steps=4), marker_prefs(40))
    base = load_file(resolve_model("tiny") / "model.safetensors")
    tuned = load_file(out / "model/model.safetensors")
    assert torch.equal(base["model.embed_tokens.weight"], tuned["model.embed_tokens.weight"])
    assert torch.equal(base["model.norm.weight"], tuned["model.norm.weight"])
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"],
                           tuned["model.layers.0.self_attn.q_proj.weight"])  # merged adapter
    assert tuned["score.weight"].abs().sum() > 0  # the zero-initialised head was trained
    assert not any("lora" in k for k in tuned)


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="no training preference pairs"):
        train_reward_model(small_cfg(tmp_path / "a"), [])
    with pytest.raises(UserError, match="batch_size"):
        train_reward_model(small_cfg(tmp_path / "b", batch_size=2, gradient_accumulation_steps=4), marker_prefs(4))
    with pytest.raises(UserError, match="train_file"):
        reward_module.run_reward(RewardConfig(output_dir=str(tmp_path / "c")))
