"""The reward readout (models.scoring): ``last`` token or ``sum`` of per-token scores, recorded in the checkpoint."""

import pytest
import torch

from rlp_align import models
from rlp_align.core.errors import UserError
from rlp_align.data import Preference, user_prompt
from rlp_align.data.templates import collate, encode_pair
from rlp_align.train.reward import RewardConfig, set_readout, train_reward_model


def _sum_rm():
    rm = models.load_reward_model("tiny", new_head=True)
    torch.manual_seed(0)
    torch.nn.init.normal_(models.reward_head(rm).weight)
    rm.config.rlp_reward_readout = "sum"
    return rm.eval()


def test_sum_readout_is_the_sum_of_per_token_scores_and_ignores_padding():
    tok, rm = models.load_tokenizer("tiny"), _sum_rm()
    pairs = [encode_pair(tok, user_prompt("Why is the sky blue?"), r, 128).input_ids for r in ["Rayleigh.", "x"]]
    ids, mask = collate([pairs[0]], tok.pad_token_id)
    with torch.no_grad():
        hidden = rm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state[0]  # [T, H]
        by_hand = (hidden @ models.reward_head(rm).weight[0]).sum()  # Σ_t w·h_t
        score, state = models.reward_scores(rm, ids, mask)
        assert torch.allclose(score[0], by_hand, atol=1e-4) and torch.allclose(state[0], hidden.sum(0), atol=1e-4)
        alone = torch.cat([models.reward_scores(rm, *collate([p], tok.pad_token_id))[0] for p in pairs])
        for side in ("left", "right"):
            both, _ = models.reward_scores(rm, *collate(pairs, tok.pad_token_id, side))
            assert torch.allclose(both, alone, atol=1e-4)


def test_sum_readout_compares_two_responses_on_their_own_tokens():
    """The prompt's positions do not see the response (causal backbone): their part cancels in a comparison."""
    tok, rm = models.load_tokenizer("tiny"), _sum_rm()
    prompt = user_prompt("2+2")
    a, b = (encode_pair(tok, prompt, r, 64) for r in ("four", "five!"))
    n_prompt = len(encode_pair(tok, prompt, "", 64).input_ids) - 1  # the template's own tokens before the answer
    assert a.input_ids[:n_prompt] == b.input_ids[:n_prompt]
    with torch.no_grad():
        w = models.reward_head(rm).weight[0]
        per_token = [rm.base_model(input_ids=torch.tensor([e.input_ids])).last_hidden_state[0] @ w for e in (a, b)]
        diff = models.reward_scores(rm, torch.tensor([a.input_ids]), torch.ones(1, len(a.input_ids)))[0] - \
            models.reward_scores(rm, torch.tensor([b.input_ids]), torch.ones(1, len(b.input_ids)))[0]
    assert torch.allclose(diff[0], per_token[0][n_prompt:].sum() - per_token[1][n_prompt:].sum(), atol=1e-4)


def test_readout_is_saved_with_the_model_and_an_existing_rm_keeps_its_own(tmp_path):
    prefs = [Preference(prompt=user_prompt(f"q{i}"), chosen="good answer", rejected="bad") for i in range(8)]
    cfg = RewardConfig(model="tiny", output_dir=str(tmp_path / "rm"), readout="sum")
    cfg.optim.max_steps, cfg.optim.batch_size, cfg.optim.learning_rate = 2, 4, 1e-3
    train_reward_model(cfg, prefs)
    rm = models.load_reward_model(tmp_path / "rm" / "model")
    assert models.readout_of(rm) == "sum"
    set_readout(rm, None, "rm")
    assert models.readout_of(rm) == "sum"  # unset: the model's own
    with pytest.raises(UserError, match="readout 'sum'"):
        set_readout(rm, "last", "rm")
    assert models.readout_of(models.load_reward_model("tiny", new_head=True)) == "last"  # HF's own default
