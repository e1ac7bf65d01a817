"""PPO runs policy and value without dropout: the first ratio is 1 even for a checkpoint that has dropout."""

import pytest
import torch
from torch import nn

from rlp_align.data.records import user_prompt
from rlp_align.models import load_policy, load_tokenizer, save_model
from rlp_align.models.dropout import disable_dropout
from rlp_align.train import ppo, ppo_models
from rlp_align.train.ppo import PPOConfig, train_ppo
from rlp_align.train.training import OptimConfig


def test_disable_dropout_zeroes_modules_and_attention_attributes():
    model = load_policy("tiny")
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.3
    model.extra = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Dropout(0.0))
    assert disable_dropout(model) == model.config.num_hidden_layers + 1
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    assert all(m.attention_dropout == 0.0 for m in model.modules() if hasattr(m, "attention_dropout"))
    assert disable_dropout(model) == 0


@pytest.fixture(scope="module")
def dropout_policy(tmp_path_factory):
    """The tiny Llama saved with attention dropout 0.5 (a checkpoint whose training mode is stochastic)."""
    folder = tmp_path_factory.mktemp("dropout") / "policy"
    tokenizer, model = load_tokenizer("tiny"), load_policy("tiny")
    model.config.attention_dropout = 0.5
    save_model(model, tokenizer, folder)
    assert load_policy(folder).config.attention_dropout == 0.5
    return str(folder)


def first_log_ratio(monkeypatch, tmp_path, policy: str) -> float:
    """max |log pi - log pi_old| over the tokens of PPO's first minibatch."""
    seen = []
    original = ppo.policy_loss

    def spy(logprobs, old_logprobs, advantages, mask, clip_range):
        seen.append(float(((logprobs - old_logprobs).detach().abs() * mask).max()))
        return original(logprobs, old_logprobs, advantages, mask, clip_range)

    monkeypatch.setattr(ppo, "policy_loss", spy)
    prompts = [user_prompt(f"Write about topic {i}") for i in range(8)]
    reward = lambda p, r: torch.tensor([x.count("e") / 4.0 for x in r])  # noqa: E731
    train_ppo(PPOConfig(policy=policy, output_dir=str(tmp_path), steps=1, ppo_epochs=1, rollout_batch_size=8,
                        step_batch_size=8, max_new_tokens=8, seed=0,
                        optim=OptimConfig(learning_rate=1e-3, save_every=100)),
              prompts, reward)
    return seen[0]


def test_first_ppo_ratio_is_one_with_a_dropout_checkpoint(monkeypatch, tmp_path, dropout_policy):
    assert first_log_ratio(monkeypatch, tmp_path / "off", dropout_policy) < 1e-5
    # the control: with dropout left on, the same update sees a ratio far from 1
    monkeypatch.setattr(ppo_models, "disable_dropout", lambda model: 0)
    assert first_log_ratio(monkeypatch, tmp_path / "on", dropout_policy) > 1e-2
