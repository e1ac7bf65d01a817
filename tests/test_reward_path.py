"""One reward path: PPO's token path and every text path give the RM the same tokens, cut answers included."""

import pytest
import torch

from rlp_align.data.records import user_prompt
from rlp_align.data.reward_path import append_eos, apply_missing_eos_penalty, response_ids, truncated_share
from rlp_align.data.templates import encode_pair
from rlp_align.models import load_policy, load_reward_model, load_tokenizer, score_texts
from rlp_align.train.best_of_n import best_of_n
from rlp_align.train.ensemble import RewardModelFn
from rlp_align.train.ppo import PPOConfig
from rlp_align.train.ppo_rollout import ActorCritic, make_rollout

WORDS = [" the", " a", " and", " of", " to", " in", " is", " you", " for"]  # one token each, no merges across


def word_policy(tokenizer, seed: int, eos_bias: float = 1.0):
    """A tiny policy that only says whole words (which re-tokenise to the same ids) or EOS.

    The sampled text then decodes and re-encodes to the sampled ids, so token path and text path can be
    compared exactly; ``eos_bias`` makes some rows end with EOS within a few tokens and others get cut.
    """
    torch.manual_seed(seed)
    policy = load_policy("tiny")
    allowed = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in WORDS]
    bias = torch.full((len(tokenizer),), -1e4)
    bias[allowed] = 0.0
    bias[tokenizer.eos_token_id] = eos_bias
    policy.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
    return policy


@pytest.fixture(scope="module")
def tiny_rm():
    tokenizer = load_tokenizer("tiny")
    torch.manual_seed(1)
    rm = load_reward_model("tiny", new_head=True)
    with torch.no_grad():
        for p in rm.parameters():
            p.normal_(0, 0.2)
    return tokenizer, rm.eval()


def test_append_eos_adds_eos_only_to_cut_rows():
    eos, pad = 2, 0
    response = torch.tensor([[5, 6, eos, pad], [7, 8, 9, 10], [11, pad, pad, pad]])
    mask = (torch.arange(4)[None] < torch.tensor([[3], [4], [1]])).long()
    ids, m, cut = append_eos(response, mask, eos, pad)
    assert cut.tolist() == [False, True, True]
    assert ids.tolist() == [[5, 6, eos, pad, pad], [7, 8, 9, 10, eos], [11, eos, pad, pad, pad]]
    assert m.sum(-1).tolist() == [3, 5, 2]
    ended = torch.tensor([[5, eos]])
    assert append_eos(ended, torch.ones_like(ended), eos, pad)[0] is ended  # nothing to add: unchanged


def test_missing_eos_penalty_subtracts_a_constant_from_cut_answers():
    scores = torch.tensor([1.0, 0.5, -0.25])
    assert apply_missing_eos_penalty(scores, [True, False, True], 0.5).tolist() == [0.5, 0.5, -0.75]
    assert apply_missing_eos_penalty(scores, [True, True, True], None) is scores
    assert truncated_share([True, False, False, True]) == 0.5 and truncated_share([]) == 0.0


def test_ppo_token_path_equals_the_text_path_row_by_row_with_cut_rows(tiny_rm):
    tokenizer, rm = tiny_rm
    policy, ref = word_policy(tokenizer, 0), word_policy(tokenizer, 0)
    ac = ActorCritic(policy, rm)
    prompts = [user_prompt(f"Question {i}: tell me about the water cycle.") for i in range(8)]
    cfg = PPOConfig(max_new_tokens=5, rollout_chunk_size=8, missing_eos_penalty=0.7)
    rollout, texts = make_rollout(ac, ref, tokenizer, RewardModelFn(rm, tokenizer), prompts, cfg,
                                  torch.Generator().manual_seed(0), True, {})
    cut = rollout.truncated.tolist()
    assert 0 < sum(cut) < len(cut), cut  # both kinds of row are present
    # the text path: decode, re-encode with EOS (encode_pair), score through score_texts
    text_scores = score_texts(rm, tokenizer, prompts, texts, batch_size=3)
    torch.testing.assert_close(rollout.raw_scores, text_scores, atol=1e-5, rtol=0)
    # and the penalty is the one subtraction, on the cut rows only
    expected = text_scores - 0.7 * rollout.truncated.float()
    torch.testing.assert_close(rollout.scores, expected, atol=1e-5, rtol=0)
    # encode_pair reads the same response ids the sampler produced, plus EOS where it was cut
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
        n = int(rollout.mask[i].sum())
        sampled = rollout.response[i, :n].tolist()
        enc = encode_pair(tokenizer, prompt, text, 1024)
        assert enc.input_ids[enc.prompt_length:] == (sampled + [tokenizer.eos_token_id] if cut[i] else sampled)
        assert response_ids(tokenizer, text) == enc.input_ids[enc.prompt_length:]


def test_best_of_n_applies_the_same_penalty_and_keeps_the_flags(tiny_rm):
    tokenizer, rm = tiny_rm
    policy = word_policy(tokenizer, 0)
    prompts = [user_prompt("Name a colour."), user_prompt("Count to three.")]
    reward_fn = RewardModelFn(rm, tokenizer)
    plain = best_of_n(policy, tokenizer, reward_fn, prompts, n=6, max_new_tokens=4, batch_size=12, seed=0)
    huge = best_of_n(policy, tokenizer, reward_fn, prompts, n=6, max_new_tokens=4, batch_size=12, seed=0,
                     missing_eos_penalty=100.0)
    for a, b in zip(plain, huge):
        assert a.responses == b.responses and a.truncated == b.truncated  # same samples (same seed)
        assert b.scores == pytest.approx([s - 100.0 * t for s, t in zip(a.scores, a.truncated)], abs=1e-4)
        if not all(a.truncated):  # with a huge penalty the best answer is one that ended
            assert not b.best_truncated
        assert b.best_truncated == b.truncated[b.scores.index(max(b.scores))]
    assert any(t for r in plain for t in r.truncated) and not all(t for r in plain for t in r.truncated)
