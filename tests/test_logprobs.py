"""Log-probs of sampled tokens (issue 29's speed-ups): the fused backward and the LM head on the response positions
alone compute what the plain expressions computed."""

import pytest
import torch

from rlp_align.models import TINY_MODEL, load_policy
from rlp_align.models.logprobs import predicting_positions, response_logits, tempered, token_logprobs


def plain_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The expression before issue 29, differentiated by autograd."""
    logits = logits.float()
    return logits.gather(-1, tokens[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def plain_response_logits(model, input_ids, attention_mask, response_length, temperature):
    """Before issue 29: the last T + 1 positions through the LM head, the final one dropped, then z / T."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   logits_to_keep=response_length + 1, use_cache=False).logits[:, :-1]
    return logits.float() / temperature


@pytest.mark.parametrize("shape", [(3, 5, 50), (4, 97)])
def test_fused_token_logprobs_are_bitwise_autograds(shape):
    torch.manual_seed(0)
    z = (torch.randn(*shape) * 4).requires_grad_()
    tokens = torch.randint(0, shape[-1], shape[:-1])
    g = torch.randn(shape[:-1])
    ours = token_logprobs(z, tokens)
    (ours_grad,) = torch.autograd.grad(ours, z, g)
    plain = plain_token_logprobs(z, tokens)
    (plain_grad,) = torch.autograd.grad(plain, z, g)
    assert torch.equal(ours, plain) and torch.equal(ours_grad, plain_grad)
    # a hand-computed case: z = (0, log 3) -> log p = (log 1/4, log 3/4); d log p_1 / dz = onehot(1) - p
    two = torch.tensor([[0.0, float(torch.tensor(3.0).log())]], requires_grad=True)
    lp = token_logprobs(two, torch.tensor([1]))
    lp.sum().backward()
    assert lp.item() == pytest.approx(float(torch.tensor(0.75).log()))
    assert two.grad[0].tolist() == pytest.approx([-0.25, 0.25])
    with torch.inference_mode():
        assert torch.equal(token_logprobs(z, tokens), plain.detach())


def test_tempered_at_one_is_the_logits_themselves():
    z = torch.randn(2, 3)
    assert tempered(z, 1.0) is z  # no copy, no pass over [B, T, V]
    assert torch.equal(tempered(z, 0.5), z / 0.5)
    assert tempered(z.bfloat16(), 1.0).dtype == torch.float32
    assert predicting_positions(10, 4, torch.device("cpu")).tolist() == [5, 6, 7, 8]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logits_and_gradients_match_the_plain_path(temperature):
    """The policy loss's ingredients on the tiny model, left-padded: values and parameter gradients to 1e-5."""
    model = load_policy(TINY_MODEL)
    torch.manual_seed(1)
    ids = torch.randint(3, 500, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, :2] = 0
    tokens = ids[:, -5:]
    weights = torch.randn(3, 5)

    def loss_and_grads(logits_fn, logprobs_fn):
        model.zero_grad(set_to_none=True)
        logits = logits_fn(model, ids, mask, 5, temperature)
        logprobs = logprobs_fn(logits, tokens)
        (logprobs * weights).sum().backward()
        return logits.detach(), logprobs.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ours = loss_and_grads(response_logits, token_logprobs)
    plain = loss_and_grads(plain_response_logits, plain_token_logprobs)
    assert ours[0].shape == plain[0].shape == (3, 5, model.config.vocab_size)
    torch.testing.assert_close(ours[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], plain[1], rtol=1e-5, atol=1e-5)
    for name, grad in plain[2].items():
        torch.testing.assert_close(ours[2][name], grad, rtol=1e-5, atol=1e-5, msg=name)
