"""One reward path: PPO's token path and every text path give the RM the same tokens, cut answers included."""

import pytest
import torch

from rlp_align.core.errors import UserError
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


# a 1,463-character prompt whose end is the question (issue 22 section 7)
LONG = ("Here is some background you may or may not need. " * 30)[: 1463 - len(" Please answer now.")] \
    + " Please answer now."
HEADER, GENERATION_PROMPT = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"


def test_a_long_prompt_keeps_its_chat_template_and_is_counted(caplog):
    """Cutting a prompt to max_prompt_length removes the start of the user's text, never the template."""
    from rlp_align.data.templates import encode_prompt, fit_prompt
    from rlp_align.models.generation import generate

    tokenizer = load_tokenizer("tiny")
    assert len(LONG) == 1463
    ids, cut = fit_prompt(tokenizer, user_prompt(LONG), 16)
    text = tokenizer.decode(ids)
    assert cut and len(ids) <= 16
    assert text.startswith(HEADER) and text.endswith(GENERATION_PROMPT), text
    for budget in (16, 24, 64):  # what is left of the user's text is the end of it, as long as the budget allows
        kept = tokenizer.decode(fit_prompt(tokenizer, user_prompt(LONG), budget)[0])[len(HEADER):-len(GENERATION_PROMPT)]
        assert kept and LONG.endswith(kept) and len(kept) >= budget - 16, (budget, kept)
    # a pair cut to max_length (RM training, the text path) keeps the template and the whole short answer
    pair = encode_pair(tokenizer, user_prompt(LONG), "Yes.", 40)
    text = tokenizer.decode(pair.input_ids)
    assert len(pair.input_ids) <= 40 and pair.truncated and pair.prompt_cut
    assert text.startswith(HEADER) and text.endswith(GENERATION_PROMPT + "Yes." + tokenizer.eos_token), text
    short = user_prompt("Hi.")  # 18 tokens with the template
    assert fit_prompt(tokenizer, short, 20) == (encode_prompt(tokenizer, short), False)  # fits: untouched
    # the sampler sees the same cut prompt, and says how many prompts it cut
    with caplog.at_level("WARNING"):
        gens = generate(load_policy("tiny"), tokenizer, [user_prompt(LONG), short, user_prompt(LONG + " Twice.")],
                        max_new_tokens=2, max_prompt_length=20, progress=False)
    assert gens.prompt_ids[0] == fit_prompt(tokenizer, user_prompt(LONG), 20)[0]
    assert "2 of 3 prompts are longer than 20 tokens" in caplog.text
    # a template that cannot fit is refused with the number of tokens it needs
    with pytest.raises(UserError, match="even without any of its user text"):
        fit_prompt(tokenizer, user_prompt(LONG), 8)


def test_a_long_prompt_scores_the_same_on_the_token_and_the_text_path(tiny_rm):
    """PPO scores the sampled ids after the cut prompt; best-of-n, SPG and evaluation score text: with the
    policy's max_prompt_length the RM reads the same tokens on both (issue 22 section 7)."""
    tokenizer, rm = tiny_rm
    policy, ref = word_policy(tokenizer, 0), word_policy(tokenizer, 0)
    ac = ActorCritic(policy, rm)
    prompts = [user_prompt(LONG), user_prompt("Hi."), user_prompt("Another " + LONG)]  # "Hi.": 18 tokens, whole
    cfg = PPOConfig(max_new_tokens=4, max_prompt_length=20, rollout_chunk_size=8)
    reward_fn = RewardModelFn(rm, tokenizer, max_length=cfg.max_prompt_length + cfg.max_new_tokens + 1,
                              max_prompt_length=cfg.max_prompt_length)
    runs = [make_rollout(ac, ref, tokenizer, reward_fn, prompts, cfg, torch.Generator().manual_seed(0), tokens, {})
            for tokens in (True, False)]
    (by_tokens, texts), (by_text, same_texts) = runs
    assert texts == same_texts  # same seed, same samples
    torch.testing.assert_close(by_tokens.raw_scores, by_text.raw_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_tokens.raw_scores, reward_fn(prompts, texts), atol=1e-5, rtol=0)
    for row in (0, 2):  # the model saw the chat header and the generation prompt of the cut prompts
        query = tokenizer.decode(by_tokens.query[row][by_tokens.query_mask[row].bool()])
        assert query.startswith(HEADER) and query.endswith(GENERATION_PROMPT), query
    # without the policy's max_prompt_length the text path reads more of the prompt: a different score
    whole = score_texts(rm, tokenizer, prompts, texts, max_length=4096)
    assert not torch.allclose(whole[[0, 2]], by_tokens.raw_scores[[0, 2]], atol=1e-4)
    torch.testing.assert_close(whole[1], by_tokens.raw_scores[1], atol=1e-5, rtol=0)


def test_spg_scores_samples_on_the_prompt_the_policy_read(tiny_rm, tmp_path):
    """A sample set records the max_prompt_length it was sampled with; SPG's RM cuts the prompt the same way."""
    from rlp_align.data.records import SampleSet
    from rlp_align.models.load import save_model
    from rlp_align.rlp.spg import SPGConfig, _score

    tokenizer, rm = tiny_rm
    save_model(rm, tokenizer, tmp_path / "rm")
    answers = [" the water", " a cycle"]
    sets = [SampleSet(user_prompt(LONG), answers, {"max_prompt_length": 20}),
            SampleSet(user_prompt("Another " + LONG), answers, {})]  # no record: the whole prompt
    scores = _score(SPGConfig(reward_model=str(tmp_path / "rm"), max_length=4096), sets, [True, True])
    cut = score_texts(rm, tokenizer, [user_prompt(LONG)] * 2, answers, max_length=4096, max_prompt_length=20)
    whole = score_texts(rm, tokenizer, [user_prompt("Another " + LONG)] * 2, answers, max_length=4096)
    assert scores[0] == pytest.approx(cut.tolist(), abs=1e-5) and scores[1] == pytest.approx(whole.tolist(), abs=1e-5)
    assert scores[0] != pytest.approx(score_texts(rm, tokenizer, [user_prompt(LONG)] * 2, answers,
                                                  max_length=4096).tolist(), abs=1e-4)
