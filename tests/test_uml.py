import math
import random

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from rlp_align.core.errors import UserError
from rlp_align.data.records import SampleSet, user_prompt
from rlp_align.rlp.uml import (
    Critic,
    GaussianEncoder,
    MultiViewHead,
    beta_at,
    jsd_mutual_information,
    pick_views,
    standardise_views,
    symmetric_kl,
)

pytestmark = pytest.mark.device  # also runs on RLP_TEST_DEVICE (benchmarks/gpu_check.sh)


def test_symmetric_kl_of_identical_gaussians_is_zero():
    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(5, 8, generator=g), torch.rand(5, 8, generator=g) + 0.1
    assert torch.allclose(symmetric_kl(mu, sigma, mu, sigma), torch.zeros(5), atol=1e-6)


def test_symmetric_kl_hand_computed_1d():
    # KL(N(0,1)||N(1,4)) = log 2 + 2/8 - 1/2; KL(N(1,4)||N(0,1)) = -log 2 + 5/2 - 1/2; mean = 0.875
    d = symmetric_kl(torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]), torch.tensor([[2.0]]))
    assert d.item() == pytest.approx(0.875, abs=1e-6)


def test_symmetric_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu1, mu2 = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    s1, s2 = torch.rand(6, 16, generator=g) + 0.05, torch.rand(6, 16, generator=g) * 3 + 0.05
    p1, p2 = Independent(Normal(mu1, s1), 1), Independent(Normal(mu2, s2), 1)
    expected = 0.5 * (kl_divergence(p1, p2) + kl_divergence(p2, p1))
    assert torch.allclose(symmetric_kl(mu1, s1, mu2, s2), expected, rtol=1e-5, atol=1e-5)


def test_jsd_of_uninformative_critic_is_minus_2_log_2():
    value = jsd_mutual_information(torch.zeros(4), torch.zeros(12))
    assert value.item() == pytest.approx(-2 * math.log(2), abs=1e-6)


def test_jsd_with_fixed_good_critic_is_higher_for_dependent_pairs():
    # T = 5 - ||z1 - z2||^2 tells pairs that are close (dependent) from far ones: a fixed, good critic.
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(64, 4, generator=g)
    dependent = z1 + 0.1 * torch.randn(64, 4, generator=g)
    independent = torch.randn(64, 4, generator=g)

    def estimate(z2):
        grid = 5.0 - torch.cdist(z1, z2).pow(2)
        off = ~torch.eye(64, dtype=torch.bool)
        return jsd_mutual_information(grid.diagonal(), grid[off]).item()

    assert estimate(dependent) > estimate(independent) + 1.0


def _trained_critic_estimate(noise: float | None, steps: int = 200) -> float:
    """Train a critic on fresh batches of (z1, z2) pairs, then estimate I_JSD on a held-out batch.

    noise: z2 = z1 + noise * eps (dependent); None: z2 drawn independently of z1.
    """
    torch.manual_seed(0)

    def batch(n: int = 32):
        z1 = torch.randn(n, 4)
        z2 = torch.randn(n, 4) if noise is None else z1 + noise * torch.randn(n, 4)
        return z1, z2

    critic = Critic(4, 4, width=32)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = -jsd_mutual_information(*critic.pairs(*batch()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return jsd_mutual_information(*critic.pairs(*batch(256))).item()


def test_jsd_with_trained_critic_is_higher_for_dependent_pairs():
    i_dep = _trained_critic_estimate(noise=0.3)
    i_ind = _trained_critic_estimate(noise=None)
    assert i_dep > i_ind + 0.5, (i_dep, i_ind)
    # with independent views no critic beats the uninformative one (-2 log 2) on held-out pairs
    assert i_ind < -2 * math.log(2) + 0.05


def test_gaussian_encoder_shapes_and_positive_sigma():
    enc = GaussianEncoder(hidden_size=12, z_dim=5)
    mu, sigma, z = enc(torch.randn(3, 12))
    assert mu.shape == sigma.shape == z.shape == (3, 5)
    assert (sigma > 0).all()
    assert enc.mu[0].out_features == 12  # width defaults to the hidden size
    assert len([m for m in enc.mu if isinstance(m, torch.nn.Linear)]) == 3


def _dependent_views(batch: int = 16, hidden: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(batch, hidden, generator=g)
    h1 = content + 0.1 * torch.randn(batch, hidden, generator=g)
    h2 = content + 0.1 * torch.randn(batch, hidden, generator=g)
    return h1, h2


@pytest.mark.parametrize("method", ["mib", "mvi", "infomax", "contrastive"])
def test_multiview_loss_falls_on_fixed_dependent_views(method):
    torch.manual_seed(0)
    h1, h2 = _dependent_views()
    # mib: beta rises from 1e-3 (the refine default); at beta = 1 from the start it stays collapsed (issue 22)
    head = MultiViewHead(hidden_size=16, z_dim=8, method=method, beta=1.0,
                         beta_schedule="exponential" if method == "mib" else "constant", beta_anneal_steps=None)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for step in range(120):
        loss, stats = head(h1, h2, step, 120)
        assert math.isfinite(stats["loss"]) and math.isfinite(stats["d_skl"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.1, (method, first, last)


def test_multiview_stats_and_gradient_reaches_hidden_states():
    h1, h2 = _dependent_views(batch=4, hidden=8)
    h1.requires_grad_(True)
    head = MultiViewHead(hidden_size=8, z_dim=4)
    loss, stats = head(h1, h2)
    assert set(stats) >= {"loss", "i_jsd", "d_skl"}
    assert stats["loss"] == pytest.approx(-stats["i_jsd"] + 1.0 * stats["d_skl"], rel=1e-5)
    loss.backward()
    assert h1.grad is not None and h1.grad.abs().sum() > 0  # L_M regularises the RM backbone

    _, nce_stats = MultiViewHead(hidden_size=8, z_dim=4, method="contrastive")(h1, h2)
    assert "i_nce" in nce_stats and "i_jsd" not in nce_stats
    _, mvi_stats = MultiViewHead(hidden_size=8, z_dim=4, method="mvi")(h1, h2)
    assert mvi_stats["loss"] == pytest.approx(-mvi_stats["i_jsd"], rel=1e-5)  # no compression term


def test_single_instruction_batch_returns_zero_loss_with_warning():
    head = MultiViewHead(hidden_size=8, z_dim=4)
    h = torch.randn(1, 8, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="single instruction"):
        loss, stats = head(h, h + 1)
    assert loss.item() == 0.0 and stats["skipped"] == 1.0
    loss.backward()  # attached to the head's parameters with zero gradient, never NaN
    assert all(p.grad is not None and (p.grad == 0).all() for p in head.parameters())


@pytest.mark.parametrize("method", ["mib", "mvi", "infomax", "contrastive"])
def test_every_head_parameter_gets_a_gradient(method):
    # DDP without find_unused_parameters needs every parameter in the graph
    head = MultiViewHead(hidden_size=8, z_dim=4, method=method)
    loss, _ = head(*_dependent_views(batch=4, hidden=8))
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="unknown multi-view method"):
        MultiViewHead(hidden_size=8, method="nope")
    with pytest.raises(UserError):
        MultiViewHead(hidden_size=8, beta=-1)


def test_beta_at_each_schedule():
    assert beta_at(0, 0.7) == 0.7  # constant
    assert [beta_at(t, 1.0, "linear", 100) for t in (0, 50, 500)] == [0.0, 0.5, 1.0]
    # exponential (Federici et al.): 1e-3 -> 1 log-linearly, 1e-3 * 1000^(t / 100)
    assert [beta_at(t, 1.0, "exponential", 100) for t in (0, 50, 100, 500)] == pytest.approx(
        [1e-3, 1e-3 * 1000**0.5, 1.0, 1.0])
    assert beta_at(10, 2.0, "exponential", 20, start=0.02) == pytest.approx(0.2)  # sqrt(0.02 * 2)
    assert beta_at(10, 1.0, "exponential", 0) == 1.0 and beta_at(10, 0.0, "exponential", 20) == 0.0


def test_an_unset_anneal_length_spans_the_whole_run():
    head = MultiViewHead(hidden_size=8, beta_schedule="exponential", beta_anneal_steps=None)
    assert head.beta_at(0, 10) == pytest.approx(1e-3) and head.beta_at(10, 10) == 1.0
    assert head.beta_at(5, 10) == pytest.approx(1e-3 * 1000**0.5)


def test_standardise_views_hand_computed():
    # feature 0 over the 4 states {1, 3, 5, 7}: mean 4, variance 5; feature 1 is constant -> 0
    h1, h2 = torch.tensor([[1.0, 2.0], [3.0, 2.0]]), torch.tensor([[5.0, 2.0], [7.0, 2.0]])
    a, b = standardise_views(h1, h2, eps=0.0 + 1e-12)
    assert torch.allclose(a[:, 0], torch.tensor([-3.0, -1.0]) / math.sqrt(5), atol=1e-5)
    assert torch.allclose(b[:, 0], torch.tensor([1.0, 3.0]) / math.sqrt(5), atol=1e-5)
    assert torch.all(a[:, 1] == 0) and torch.all(b[:, 1] == 0)


def _mib_toy(beta_schedule: str, input_norm: str = "batch", steps: int = 300) -> tuple[float, float]:
    """Two noisy views of a shared 32-d state whose common offset dwarfs its variation (as in a young RM's
    last-token states); batch 8, Adam 3e-3. Returns the mean I_JSD and D_SKL of the last 30 steps."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    offset = 10.0 * torch.randn(32, generator=g)
    head = MultiViewHead(32, z_dim=16, beta=1.0, beta_schedule=beta_schedule,
                         beta_anneal_steps=0 if beta_schedule == "constant" else steps, input_norm=input_norm)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    history = []
    for step in range(steps):
        shared = torch.randn(8, 32, generator=g)
        h1 = offset + shared + 0.1 * torch.randn(8, 32, generator=g)
        h2 = offset + shared + 0.1 * torch.randn(8, 32, generator=g)
        loss, stats = head(h1, h2, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((stats["i_jsd"], stats["d_skl"]))
    return tuple(sum(h[k] for h in history[-30:]) / 30 for k in (0, 1))


def test_mib_learns_the_information_term_with_a_rising_beta_and_collapses_with_beta_one():
    """Issue 22: with beta = 1 from the first step I_JSD sits at its floor -2 log 2 (the encoder collapses,
    D_SKL ~ 0); the exponential schedule from 1e-3 (Federici et al.) lets the critic learn first."""
    floor = -2 * math.log(2)
    i_rising, _ = _mib_toy("exponential")
    i_constant, d_constant = _mib_toy("constant")
    assert i_rising > floor + 0.3
    assert i_constant < floor + 0.05 and d_constant < 0.05


def test_pick_views_distinct_pairs_seeded_and_skips_counted():
    sets = [
        SampleSet(user_prompt("a"), ["x", "y", "z", "x"]),
        SampleSet(user_prompt("b"), ["same", "same", " ", ""]),  # one distinct non-empty response
        SampleSet(user_prompt("c"), ["only"]),
        SampleSet(user_prompt("d"), ["", "p", "q"]),
    ]
    with pytest.warns(RuntimeWarning, match="skipped 2 of 4"):
        views = pick_views(sets, random.Random(0))
    assert [v[0] for v in views] == [user_prompt("a"), user_prompt("d")]
    for _, a, b in views:
        assert a != b and a.strip() and b.strip()
    assert set(views[1][1:]) == {"p", "q"}
    with pytest.warns(RuntimeWarning):
        assert pick_views(sets, random.Random(0)) == views
