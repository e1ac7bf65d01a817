"""Reward-model ensembles (Coste et al. 2024): mean / WCO / UWO aggregation, on hand-made and real members."""

import pytest
import torch

from rlp_align.core.errors import UserError
from rlp_align.data.records import user_prompt
from rlp_align.data.templates import collate, encode_pair
from rlp_align.models import load_reward_model, load_tokenizer, reward_head, save_model
from rlp_align.train.ensemble import EnsembleReward, RewardModelFn, aggregate, make_reward_fn


def test_aggregate_by_hand():
    scores = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # [k=2 members, N=3 responses]
    assert aggregate(scores, "mean").tolist() == [2.0, 2.0, 2.0]
    assert aggregate(scores, "wco").tolist() == [1.0, 2.0, 1.0]
    # population variance over members: [1, 0, 1]
    assert aggregate(scores, "uwo", uwo_lambda=0.5).tolist() == pytest.approx([1.5, 2.0, 1.5])
    assert aggregate(scores[:1], "uwo", uwo_lambda=3.0).tolist() == [1.0, 2.0, 3.0]  # one member: no penalty
    with pytest.raises(UserError):
        aggregate(scores, "median")


def make_rm(folder, seed: int) -> str:
    tokenizer, model = load_tokenizer("tiny"), load_reward_model("tiny", new_head=True)
    torch.manual_seed(seed)
    torch.nn.init.normal_(reward_head(model).weight, std=1.0)
    save_model(model, tokenizer, folder)
    return str(folder)


@pytest.fixture(scope="module")
def two_rms(tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    return [make_rm(root / "rm0", 0), make_rm(root / "rm1", 1)]


def test_ensemble_aggregates_its_members(two_rms):
    prompts = [user_prompt("Name a colour."), user_prompt("Count to three.")] * 2
    responses = ["Blue.", "1, 2, 3.", "The sky is blue.", "one two three"]
    singles = torch.stack([RewardModelFn.from_path(p)(prompts, responses) for p in two_rms])
    assert not torch.allclose(singles[0], singles[1])  # two different reward models
    for method in ("mean", "wco", "uwo"):
        ensemble = EnsembleReward(two_rms, method, uwo_lambda=2.0)
        assert torch.allclose(ensemble.member_scores(prompts, responses), singles, atol=1e-5)
        assert torch.allclose(ensemble(prompts, responses), aggregate(singles, method, 2.0), atol=1e-5)
    assert torch.allclose(EnsembleReward(two_rms, "wco")(prompts, responses), singles.min(0).values, atol=1e-5)


def test_token_scores_match_text_scores(two_rms):
    ensemble = EnsembleReward(two_rms, "uwo")
    tokenizer = ensemble.tokenizer
    prompts, responses = [user_prompt("Name a colour."), user_prompt("hi")], ["Blue.", "hello there"]
    ids, mask = collate([encode_pair(tokenizer, p, r, 64).input_ids for p, r in zip(prompts, responses)],
                        tokenizer.pad_token_id, side="left")
    assert torch.allclose(ensemble.score_tokens(ids, mask), ensemble(prompts, responses), atol=1e-5)


def test_make_reward_fn_picks_ensemble_or_single(two_rms):
    assert isinstance(make_reward_fn(None, two_rms, "wco"), EnsembleReward)
    assert isinstance(make_reward_fn(two_rms[0], []), RewardModelFn)
    with pytest.raises(UserError):
        make_reward_fn(None, [])
    with pytest.raises(UserError):
        EnsembleReward(two_rms, "max")


def test_judge_reward_scores_each_prompt_with_its_own_instruction():
    """Issue 28's gold PPO: the world's judge as the reward, each response scored against its prompt's truth."""
    from rlp_align.train.ensemble import JudgeReward
    from rlp_align.worlds import micro

    a, b = micro.pool(2, seed=3)
    reward = JudgeReward(micro.judge(filler_penalty=0.1), [a, b])
    scores = reward([b.prompt, a.prompt, a.prompt], [b.meta["answer"], "." + a.meta["answer"], b.meta["answer"]])
    assert scores.dtype == torch.float32 and scores.tolist() == pytest.approx([1.0, 0.9, 0.0])
    assert reward.tokenizer is None  # text path: PPO decodes its samples for it
    with pytest.raises(UserError, match="no instruction"):
        reward([user_prompt("9+9")], ["81"])
