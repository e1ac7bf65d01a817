"""The one device rule (`rlp_align.core.device`), and the sampler and the UML head on the test device
(``RLP_TEST_DEVICE``; the CPU by default)."""

import math

import pytest
import torch

from rlp_align.core.device import autocast, default_device, requested_device
from rlp_align.core.errors import UserError
from rlp_align.data.records import user_prompt
from rlp_align.data.templates import collate, encode_prompt
from rlp_align.models import load_policy, load_tokenizer
from rlp_align.models.generation import generate, sample_tokens
from rlp_align.rlp.uml import MultiViewHead
from rlp_align.train.training import make_accelerator


def test_rlp_device_cpu_wins_over_a_visible_gpu(monkeypatch):
    monkeypatch.setenv("RLP_DEVICE", "cpu")
    assert requested_device() == torch.device("cpu")
    monkeypatch.delenv("RLP_DEVICE")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert requested_device() == expected


def test_bad_rlp_device_is_a_user_error(monkeypatch):
    monkeypatch.setenv("RLP_DEVICE", "cuda:1")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES"):
        requested_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("RLP_DEVICE", "cuda")
        with pytest.raises(UserError, match="no GPU"):
            requested_device()


def test_an_existing_accelerator_decides_the_device(monkeypatch):
    accelerator = make_accelerator(0)
    monkeypatch.setenv("RLP_DEVICE", "cpu")  # read only before an Accelerator exists
    assert default_device() == accelerator.device


def test_autocast_is_off_for_no_and_validates():
    with autocast("no", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(UserError):
        autocast("fp32", "cpu")


# ------------------------------------------------------------------------------ on the test device


@pytest.fixture(scope="module")
def tiny_on_device(device):
    model = load_policy("tiny")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.2)
    return load_tokenizer("tiny"), model.to(device)


PROMPTS = [user_prompt("hi"), user_prompt("a much longer prompt about the water cycle, clouds and rain")]


@pytest.mark.device
def test_sampler_on_device_pads_left_and_scores_its_own_tokens(tiny_on_device, device):
    tokenizer, model = tiny_on_device
    batched = generate(model, tokenizer, PROMPTS, temperature=0, max_new_tokens=10, batch_size=2, progress=False)
    alone = generate(model, tokenizer, PROMPTS[1:], temperature=0, max_new_tokens=10, batch_size=1, progress=False)
    assert batched.response_ids[1] == alone.response_ids[0]
    # sampled log-probs are those of one full forward over prompt + response
    ids, mask = collate([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id, side="left")
    ids, mask = ids.to(device), mask.to(device)
    response, rmask, logprobs, _ = sample_tokens(model, ids, mask, max_new_tokens=6,
                                                 eos_token_id=tokenizer.eos_token_id,
                                                 pad_token_id=tokenizer.pad_token_id, temperature=1.0,
                                                 generator=torch.Generator(device=device).manual_seed(0),
                                                 with_logprobs=True)
    assert response.device.type == device.type
    full, full_mask = torch.cat([ids, response], 1), torch.cat([mask, rmask], 1)
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=full_mask,
                       position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits[:, ids.shape[1] - 1 : -1]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, response[..., None]).squeeze(-1) * rmask
    torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=0)


@pytest.mark.device
def test_sampler_in_bf16_on_device(tiny_on_device):
    tokenizer, model = tiny_on_device
    with autocast("bf16", model.device):
        out = generate(model, tokenizer, PROMPTS, temperature=1.0, max_new_tokens=8, batch_size=2, progress=False)
    assert len(out.response_ids) == 2 and all(len(r) > 0 for r in out.response_ids)
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.device
def test_uml_head_learns_on_device(device):
    g = torch.Generator().manual_seed(0)
    content = torch.randn(16, 16, generator=g)
    h1 = (content + 0.1 * torch.randn(16, 16, generator=g)).to(device)
    h2 = (content + 0.1 * torch.randn(16, 16, generator=g)).to(device)
    torch.manual_seed(0)
    # beta rises from 1e-3 as in refine; at beta = 1 from the start mib stays collapsed (issue 22)
    head = MultiViewHead(hidden_size=16, z_dim=8, method="mib", beta=1.0, beta_schedule="exponential",
                         beta_anneal_steps=120).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for step in range(120):
        loss, stats = head(h1, h2, step)
        assert math.isfinite(stats["loss"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1
