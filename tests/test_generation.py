"""Batched KV-cache sampling: left padding changes nothing, EOS ends a response, seeds make it deterministic."""

import json
import warnings

import pytest
import torch

from rlp_align.core.errors import UserError
from rlp_align.data.records import user_prompt
from rlp_align.data.templates import collate, encode_prompt
from rlp_align.models import generation, load_policy, load_tokenizer
from rlp_align.models.generation import (
    GenerateConfig,
    generate,
    inverse_cdf,
    inverse_cdf_sample,
    run_generate,
    sample_next_token,
    sample_tokens,
    special_ids_but_eos,
)

pytestmark = pytest.mark.device  # also runs on RLP_TEST_DEVICE (benchmarks/gpu_check.sh)

PROMPTS = [user_prompt("hi"), user_prompt("a much longer prompt about the water cycle, clouds and rain")]


@pytest.fixture(scope="module")
def tiny():
    """The tiny model with larger random weights, so greedy answers depend on the context (the stock
    initialisation always continues with a newline)."""
    model = load_policy("tiny")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    return load_tokenizer("tiny"), model


def test_left_padding_does_not_change_greedy_tokens(tiny):
    tokenizer, model = tiny
    batched = generate(model, tokenizer, PROMPTS, temperature=0, max_new_tokens=12, batch_size=2, progress=False)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, tokenizer, [prompt], temperature=0, max_new_tokens=12, batch_size=1, progress=False)
        assert batched.response_ids[i] == alone.response_ids[0]
        assert batched.prompt_ids[i] == encode_prompt(tokenizer, prompt)
    assert len(set(batched.response_ids[0])) > 3  # a varied continuation, so the comparison means something


def favouring_pad_and_bos(tokenizer):
    """The tiny model with +8 on the logits of PAD and BOS: left free, it says them ~99.9 % of the time."""
    model = load_policy("tiny")
    bias = torch.zeros(model.config.vocab_size)
    bias[[tokenizer.pad_token_id, tokenizer.bos_token_id]] = 8.0
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + bias)
    return model


def test_no_sampler_emits_a_special_token_but_eos():
    """Issue 28 N7: decoding hides PAD/BOS from gold while the RM scores them, so no sampler may draw them."""
    tokenizer = load_tokenizer("tiny")
    banned = special_ids_but_eos(tokenizer)
    assert set(banned) == {tokenizer.pad_token_id, tokenizer.bos_token_id} and tokenizer.eos_token_id not in banned
    model = favouring_pad_and_bos(tokenizer)
    for temperature, top_p in ((1.0, 1.0), (1.0, 0.9), (0, 1.0)):  # sampling, nucleus, greedy
        gens = generate(model, tokenizer, PROMPTS * 4, n=2, temperature=temperature, top_p=top_p,
                        max_new_tokens=8, batch_size=8, progress=False)
        drawn = {t for ids in gens.response_ids for t in ids}
        assert drawn and not drawn & set(banned), (temperature, top_p, drawn & set(banned))
    # the PPO/RLOO path (`ppo_rollout.make_rollout` passes the same ids): log-probs stay the policy's own
    ids, mask = collate([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id, side="left")
    response, rmask, logprobs, _ = sample_tokens(
        model, ids, mask, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(0), with_logprobs=True, banned_token_ids=banned)
    assert not set(response[rmask.bool()].tolist()) & set(banned)
    assert (logprobs[rmask.bool()] < -7).all()  # drawn from outside the ~99.9 % the policy puts on PAD/BOS


def test_kv_cache_matches_a_full_forward(tiny):
    tokenizer, model = tiny
    ids, mask = collate([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id, side="left")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response, rmask = sample_tokens(model, ids, mask, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, temperature=0)
    assert not [w for w in caught if "deprecated" in str(w.message)]  # the cache goes in as `cache=`
    # greedy with the cache == argmax of a full forward over prompt + response (positions from the mask)
    full = torch.cat([ids, response], 1)
    full_mask = torch.cat([mask, rmask], 1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=full_mask,
                       position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert torch.equal(logits[:, ids.shape[1] - 1 : -1].argmax(-1), response)


def test_sampling_log_probs_are_those_of_a_full_forward(tiny):
    tokenizer, model = tiny
    ids, mask = collate([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id, side="left")
    kwargs = {"max_new_tokens": 5, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    response, rmask, logprobs, entropy = sample_tokens(model, ids, mask, temperature=0.7, with_logprobs=True,
                                                       generator=torch.Generator().manual_seed(0), **kwargs)
    full, full_mask = torch.cat([ids, response], 1), torch.cat([mask, rmask], 1)
    with torch.no_grad():
        z = model(input_ids=full, attention_mask=full_mask,
                  position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, ids.shape[1] - 1 : -1] / 0.7
    expected = torch.log_softmax(z, -1).gather(-1, response[..., None]).squeeze(-1) * rmask
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=0)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(entropy, -(p * torch.log_softmax(z, -1)).sum(-1) * rmask, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="greedy"):
        sample_tokens(model, ids, mask, temperature=0, with_logprobs=True, **kwargs)


def test_eos_ends_a_response_and_nothing_follows(tiny):
    tokenizer, model = tiny
    eos = tokenizer.eos_token_id
    calls = []

    def force_eos_for_row_0_at_token_3(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:  # prefill gives token 1, then one call per token
            output = output.clone()
            output[0, -1, eos] = 1e4
        return output

    handle = model.lm_head.register_forward_hook(force_eos_for_row_0_at_token_3)
    try:
        gens = generate(model, tokenizer, PROMPTS, temperature=0, max_new_tokens=8, batch_size=2, progress=False)
    finally:
        handle.remove()
    assert len(gens.response_ids[0]) == 3 and gens.response_ids[0][-1] == eos
    assert gens.truncated == [False, True]
    assert len(gens.response_ids[1]) == 8 and eos not in gens.response_ids[1]
    assert "<|im_end|>" not in gens.texts[0]  # decoded without special tokens


def test_sampling_is_seeded_and_n_is_prompt_major(tiny):
    tokenizer, model = tiny
    kw = dict(n=3, max_new_tokens=10, temperature=1.0, batch_size=4, progress=False)
    a = generate(model, tokenizer, PROMPTS, seed=1, **kw)
    b = generate(model, tokenizer, PROMPTS, seed=1, **kw)
    c = generate(model, tokenizer, PROMPTS, seed=2, **kw)
    assert a.texts == b.texts and a.texts != c.texts
    assert len(a) == 6 and [len(g) for g in a.grouped()] == [3, 3]
    assert a.prompt_ids[:3] == [encode_prompt(tokenizer, PROMPTS[0])] * 3
    assert len(set(a.grouped()[0])) > 1  # samples of one prompt differ
    greedy = [generate(model, tokenizer, PROMPTS, seed=s, temperature=0, max_new_tokens=5, progress=False).texts
              for s in (1, 2)]
    assert greedy[0] == greedy[1]


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next_token(logits, 0.7, gen)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 excludes the rest
    assert {int(sample_next_token(logits, 0.01, gen)) for _ in range(20)} == {0}


def test_inverse_cdf_sampling_matches_the_distribution():
    probs = torch.tensor([[0.0, 0.5, 0.3, 0.0, 0.15, 0.05, 0.0],   # zeros at the ends and in the middle
                          [2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0]])    # unnormalised weights: 1/4 and 3/4
    gen = torch.Generator().manual_seed(0)
    n = 20000
    draws = torch.stack([inverse_cdf_sample(probs, gen) for _ in range(n)])  # [n, 2]
    for row in range(2):
        p = probs[row] / probs[row].sum()
        freq = torch.bincount(draws[:, row], minlength=7).double() / n
        assert freq[p == 0].sum() == 0  # a zero-weight token is never drawn
        sigma = (p * (1 - p) / n).sqrt()
        assert ((freq - p).abs() <= 5 * sigma + 1e-12).all(), (freq, p)
    assert torch.equal(inverse_cdf_sample(probs, torch.Generator().manual_seed(3)),
                       inverse_cdf_sample(probs, torch.Generator().manual_seed(3)))  # seeded = reproducible
    with pytest.raises(UserError, match="NaN, infinite or all zero"):
        inverse_cdf_sample(torch.tensor([[0.0, float("nan")]]), gen)
    with pytest.raises(UserError, match="NaN, infinite or all zero"):
        inverse_cdf_sample(torch.zeros(1, 3), gen)


def test_two_level_inverse_cdf_matches_one_cumulative_sum():
    """The block search picks the index a single float64 cumulative sum over the vocabulary picks."""
    gen = torch.Generator().manual_seed(0)
    for vocab in (7, 512, 1300):  # smaller than a block, one block, and a ragged last block
        probs = torch.rand(64, vocab, generator=gen) ** 4
        probs[:, :: 3] = 0.0  # zero-weight tokens everywhere, never drawn
        u = torch.rand(64, 1, generator=gen, dtype=torch.float64)
        cumulative = probs.double().cumsum(-1)
        expected = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True).squeeze(-1)
        got = inverse_cdf(probs, u)
        assert torch.equal(got, expected.clamp(max=vocab - 1)), vocab
        assert (probs.gather(1, got[:, None]) > 0).all()


@pytest.mark.parametrize("group_rows", [16, 5])
def test_rows_leaving_the_batch_keep_log_probs_exact(tiny, monkeypatch, group_rows):
    """Rows that said EOS leave the batch (the cache shrinks); the rest still sample what a full forward gives.
    With 5 rows per prefill group the 12 prompts are prefilled in 3 groups of similar length."""
    monkeypatch.setattr(generation, "PREFILL_GROUP_ROWS", group_rows)
    tokenizer, model = tiny
    prompts = [user_prompt(f"prompt {i} " + "more words " * i) for i in range(12)]
    ids, mask = collate([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id, side="left")
    kwargs = {"max_new_tokens": 12, "pad_token_id": tokenizer.pad_token_id, "temperature": 1.5,
              "with_logprobs": True}
    first = sample_tokens(model, ids, mask, eos_token_id=tokenizer.eos_token_id,
                          generator=torch.Generator().manual_seed(0), **kwargs)[0]
    eos = int(torch.mode(first.flatten()).values)  # a frequent token as "EOS": rows end at different steps
    response, rmask, logprobs, entropy = sample_tokens(model, ids, mask, eos_token_id=eos,
                                                       generator=torch.Generator().manual_seed(0), **kwargs)
    lengths = rmask.sum(-1)
    assert (lengths < response.shape[1]).sum() >= 3 and len(set(lengths.tolist())) >= 3, lengths  # drops happened
    assert ((response == eos).long().cumsum(-1) * rmask <= 1).all()  # nothing after a row's EOS is kept
    full, full_mask = torch.cat([ids, response], 1), torch.cat([mask, rmask], 1)
    with torch.no_grad():
        z = model(input_ids=full, attention_mask=full_mask,
                  position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, ids.shape[1] - 1 : -1] / 1.5
    expected = torch.log_softmax(z, -1).gather(-1, response[..., None]).squeeze(-1) * rmask
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=0)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(entropy, -(p * torch.log_softmax(z, -1)).sum(-1) * rmask, atol=1e-5, rtol=0)
    # one uniform number per original row and step: rows leaving the batch change no other row's draws, so
    # each row repeats, up to its own end, what it drew when no row ended early
    for row, n in enumerate(lengths.tolist()):
        assert torch.equal(response[row, :n], first[row, :n]), row


def test_run_generate_writes_answer_rows(tmp_path):
    src = tmp_path / "eval.json"
    src.write_text(json.dumps([
        {"instruction": "Name a colour.", "input": "", "output": "Blue.", "dataset": "x"},
        {"instruction": "Count to three.", "input": "", "output": "1, 2, 3."},
    ]))
    out = tmp_path / "answers.jsonl"
    summary = run_generate(GenerateConfig(policy="tiny", instructions_file=str(src), output_file=str(out),
                                          max_new_tokens=8, seed=3))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["answers"] == 2 and len(rows) == 2
    assert rows[0]["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert rows[0]["reference"] == "Blue." and rows[0]["subset"] is None and rows[0]["constraints"] == []
    assert rows[0]["meta"]["temperature"] == 0.7 and rows[0]["meta"]["generator"] == "tiny"
    assert rows[0]["meta"]["dataset"] == "x" and isinstance(rows[0]["meta"]["truncated"], bool)
    assert all(isinstance(r["response"], str) for r in rows)
