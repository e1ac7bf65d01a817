"""RLP-UML: unsupervised multi-view learning on policy samples (paper section "RLP-UML").

Two views of one instruction x are v1 = (x, y_a) and v2 = (x, y_b), two different policy samples. The reward
model's final-layer hidden state at the last real token of each view (h1, h2) is encoded into a factorised
Gaussian p(z|v) and the multi-view information bottleneck (MIB, Federici et al., ICLR 2020) is minimised:

    L_M = E[ -I(z1; z2) + beta * D_SKL(p(z|v1) || p(z|v2)) ]

with I(z1; z2) estimated by the Jensen-Shannon estimator of Deep InfoMax (Hjelm et al., ICLR 2019).
The refinement trainer (Bradley-Terry + lambda * L_M) lives in `rlp_align.rlp.refine`; this module only has the
losses, the encoder/critic and the choice of views.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rlp_align.core.errors import UserError
from rlp_align.data.records import Messages, SampleSet

Method = Literal["mib", "mvi", "infomax", "contrastive"]
METHODS = ("mib", "mvi", "infomax", "contrastive")
BetaSchedule = Literal["constant", "linear", "exponential"]
BETA_SCHEDULES = ("constant", "linear", "exponential")
InputNorm = Literal["batch", "layer"]
INPUT_NORMS = ("batch", "layer")


# ----------------------------------------------------------------------------------------------------------
# Losses: small pure functions


def symmetric_kl(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """Symmetrised KL between factorised Gaussians, in closed form, one value per example.

    D_SKL = 1/2 (KL(p1||p2) + KL(p2||p1))  (Federici et al. 2020, Eq. 5), where for diagonal Gaussians
    KL(p1||p2) = sum_d [ log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2 ].
    The log terms cancel in the sum, leaving
    D_SKL = 1/4 sum_d [ (s1^2 + dm^2) / s2^2 + (s2^2 + dm^2) / s1^2 - 2 ].
    Inputs are [B, D] (or any shape ending in D); returns [B].
    """
    var1, var2 = sigma1.pow(2), sigma2.pow(2)
    dm2 = (mu1 - mu2).pow(2)
    return 0.25 * ((var1 + dm2) / var2 + (var2 + dm2) / var1 - 2.0).sum(-1)


def jsd_mutual_information(critic_pos: torch.Tensor, critic_neg: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon mutual-information estimate (Hjelm et al. 2019, Eq. 4; Federici et al. 2020, App. C).

    I_JSD ~= E_pos[-softplus(-T)] - E_neg[softplus(T)], with T the critic's scores on samples of the joint
    (positives: both views of one instruction) and of the product of marginals (negatives: views of
    different instructions). Returns a scalar. It is <= 0: -2 log 2 for an uninformative critic (T = 0),
    rising towards 0 as the critic separates positives from negatives.
    """
    return (-F.softplus(-critic_pos)).mean() - F.softplus(critic_neg).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (van den Oord et al. 2018; CLIP-style) over a batch of paired embeddings.

    logits_ij = cos(a_i, b_j) / tau; loss = 1/2 [CE(logits, diag) + CE(logits^T, diag)].
    log(B) - loss is a lower bound on I(a; b).
    """
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def beta_at(step: int, beta: float, schedule: BetaSchedule = "constant", anneal_steps: int = 0,
            start: float = 1e-3) -> float:
    """The compression weight beta_t of L_M at optimiser step ``step`` (0-based).

    - ``constant``: beta.
    - ``linear``: 0 -> beta linearly over ``anneal_steps``.
    - ``exponential``: ``start`` -> beta log-linearly, beta_t = start * (beta / start)^(t / anneal_steps), then beta
      (the ExponentialScheduler of Federici et al.'s MIB trainer, which starts at 1e-3 and ends at 1).
    A strong bottleneck early collapses z before I(z1; z2) is learned: with beta = 1 from the first step the
    estimate never leaves its floor -2 log 2 (issue 22). ``anneal_steps`` <= 0 with a rising schedule: beta.
    """
    if schedule == "constant" or anneal_steps <= 0:
        return beta
    progress = min(1.0, step / anneal_steps)
    if schedule == "linear":
        return beta * progress
    if beta <= 0:
        return 0.0
    return start * (beta / start) ** progress


def standardise_views(h1: torch.Tensor, h2: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Both view batches [B, H] standardised per feature with the mean and variance over all 2B states.

    (h - mean) / sqrt(var + eps), as a BatchNorm without affine parameters. Last-token states of a young RM
    share one large common component (cosine 0.98 between different instructions on the tiny model, 0.99
    within one after a per-example LayerNorm); removing it across the batch is what lets the critic see the
    instruction (cosine 0.45 within, -0.11 between). Both views share one statistic, so it carries no
    pair-specific information.
    """
    both = torch.cat([h1, h2]).float()
    mean, var = both.mean(0), both.var(0, unbiased=False)
    scale = torch.rsqrt(var + eps)
    return (h1.float() - mean) * scale, (h2.float() - mean) * scale


# ----------------------------------------------------------------------------------------------------------
# Modules


def mlp(d_in: int, width: int, d_out: int) -> nn.Sequential:
    """The 3-layer MLP used for mu, sigma and the critics."""
    return nn.Sequential(
        nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, d_out)
    )


class GaussianEncoder(nn.Module):
    """p(z|v) = N(mu(h), diag(sigma(h)^2)) from two 3-layer MLPs; sigma = softplus(.) + 1e-7."""

    def __init__(self, hidden_size: int, z_dim: int = 64, width: int | None = None):
        super().__init__()
        width = width or hidden_size
        self.mu = mlp(hidden_size, width, z_dim)
        self.sigma = mlp(hidden_size, width, z_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (mu, sigma, z) with z = mu + sigma * eps, a reparameterised sample (gradients flow)."""
        mu = self.mu(h)
        sigma = F.softplus(self.sigma(h)) + 1e-7
        z = mu + sigma * torch.randn_like(mu)
        return mu, sigma, z


class Critic(nn.Module):
    """T(a, b) = MLP([a; b]) -> scalar. ``pairs`` scores every (a_i, b_j) of a batch."""

    def __init__(self, dim_a: int, dim_b: int, width: int):
        super().__init__()
        self.net = mlp(dim_a + dim_b, width, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, b], dim=-1)).squeeze(-1)

    def pairs(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(positives [B], negatives [B*(B-1)]): T(a_i, b_i) and T(a_i, b_j) for all j != i.

        Each row of the batch is one instruction, so b_j (j != i) comes from another instruction: a sample
        of the product of marginals. All B*(B-1) off-diagonal pairs are used.
        """
        n = a.shape[0]
        grid = self(a.unsqueeze(1).expand(n, n, -1), b.unsqueeze(0).expand(n, n, -1))  # [B, B]
        off_diag = ~torch.eye(n, dtype=torch.bool, device=a.device)
        return grid.diagonal(), grid[off_diag]


class MultiViewHead(nn.Module):
    """L_M on the RM's hidden states of two views; ``forward(h1, h2) -> (loss, stats)``.

    Methods (paper Table 4 ablations):
    - ``mib`` (default): -I_JSD(z1; z2) + beta * mean D_SKL(p(z|v1) || p(z|v2)).
    - ``mvi``: multi-view InfoMax, MIB without the compression term (beta = 0): -I_JSD(z1; z2).
    - ``infomax``: single-view Deep InfoMax. For each view separately, maximise I_JSD(h; z) between the RM
      hidden state h and its own sampled z, with a critic on [h; z] and negatives (h_i, z_j), j != i, from the
      batch; the loss is the mean over the two views. There is no cross-view term.
    - ``contrastive``: symmetric InfoNCE between the deterministic embeddings mu(v1) and mu(v2), other
      instructions of the batch as negatives, temperature ``temperature``.

    stats (Python floats): ``loss``, ``d_skl`` (always computed; only a diagnostic when beta = 0 or for
    infomax/contrastive), ``i_jsd`` (mib, mvi: I(z1; z2); infomax: mean I(h; z)) or ``i_nce`` (contrastive:
    log B - InfoNCE loss), ``beta``.

    beta_t follows ``beta_schedule`` (`beta_at`; refine uses ``exponential`` from ``beta_start`` to ``beta`` over
    the run, this class defaults to ``constant``); ``input_norm`` picks how h is normalised (`standardise_views`).

    A batch with fewer than 2 instructions has no negatives: the loss is a zero tensor (no gradient from
    L_M, so the Bradley-Terry part of a refinement step still runs), a ``RuntimeWarning`` is issued and
    ``stats["skipped"] = 1.0``. Never NaN.
    """

    def __init__(
        self,
        hidden_size: int,
        z_dim: int = 64,
        method: Method = "mib",
        beta: float = 1.0,
        width: int | None = None,
        temperature: float = 0.1,
        beta_schedule: BetaSchedule = "constant",
        beta_anneal_steps: int | None = 0,
        beta_start: float = 1e-3,
        input_norm: InputNorm = "batch",
    ):
        super().__init__()
        if method not in METHODS:
            raise UserError(f"unknown multi-view method '{method}': choose one of {', '.join(METHODS)}")
        if beta < 0:
            raise UserError(f"multi-view beta must be >= 0, got {beta}")
        if temperature <= 0:
            raise UserError(f"contrastive temperature must be > 0, got {temperature}")
        if beta_schedule not in BETA_SCHEDULES:
            raise UserError(f"unknown beta_schedule '{beta_schedule}': choose one of {', '.join(BETA_SCHEDULES)}")
        if beta_anneal_steps is not None and beta_anneal_steps < 0:
            raise UserError(f"beta_anneal_steps must be >= 0 (or unset: the whole run), got {beta_anneal_steps}")
        if beta_start <= 0:
            raise UserError(f"beta_start must be > 0 (the exponential schedule's first beta), got {beta_start}")
        if input_norm not in INPUT_NORMS:
            raise UserError(f"unknown input_norm '{input_norm}': choose one of {', '.join(INPUT_NORMS)}")
        self.beta_schedule, self.beta_anneal_steps, self.beta_start = beta_schedule, beta_anneal_steps, beta_start
        self.input_norm = input_norm
        width = width or hidden_size
        self.method, self.beta, self.temperature = method, float(beta), float(temperature)
        self.encoder = GaussianEncoder(hidden_size, z_dim, width)
        if method in ("mib", "mvi"):
            self.critic = Critic(z_dim, z_dim, width)
        elif method == "infomax":
            self.critic = Critic(hidden_size, z_dim, width)

    def beta_at(self, step: int, total_steps: int | None = None) -> float:
        """beta_t at optimiser ``step``; an unset ``beta_anneal_steps`` anneals over ``total_steps`` (the run)."""
        anneal = self.beta_anneal_steps if self.beta_anneal_steps is not None else (total_steps or 0)
        return beta_at(step, self.beta, self.beta_schedule, anneal, self.beta_start)

    def forward(
        self, h1: torch.Tensor, h2: torch.Tensor, step: int = 0, total_steps: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_M and its parts for view batches [B, H]; ``step`` of ``total_steps`` optimiser steps sets beta_t."""
        beta = self.beta_at(step, total_steps)
        if h1.dim() != 2 or h1.shape != h2.shape:
            raise ValueError(f"h1 and h2 must both be [B, H]; got {tuple(h1.shape)} and {tuple(h2.shape)}")
        if h1.shape[0] < 2:
            warnings.warn(
                "multi-view loss skipped: a batch with a single instruction has no negatives for the "
                "mutual-information estimate (use a batch size >= 2)",
                RuntimeWarning,
                stacklevel=2,
            )
            # zero, but attached to every head parameter so DDP sees all of them used on every rank
            zero = 0.0 * sum(p.sum() for p in self.parameters())
            return zero, {"loss": 0.0, "i_jsd": 0.0, "d_skl": 0.0, "beta": beta, "skipped": 1.0}

        # [decided] parameter-free normalisation first: last-token states of a young RM differ by ~1 % between
        # inputs. "batch" (default) removes the component all states share (`standardise_views`); "layer", the
        # per-example LayerNorm used before issue 22, keeps it and the critic never separates the views.
        if self.input_norm == "batch":
            h1, h2 = standardise_views(h1, h2)
        else:
            h1 = nn.functional.layer_norm(h1, h1.shape[-1:])
            h2 = nn.functional.layer_norm(h2, h2.shape[-1:])
        mu1, sigma1, z1 = self.encoder(h1)
        mu2, sigma2, z2 = self.encoder(h2)
        d_skl = symmetric_kl(mu1, sigma1, mu2, sigma2).mean()
        stats: dict[str, float] = {"d_skl": d_skl.item(), "beta": beta}

        if self.method == "contrastive":
            nce = info_nce(mu1, mu2, self.temperature)
            loss = nce + 0.0 * d_skl  # 0 * d_skl keeps the sigma MLP in the graph (DDP: no unused parameters)
            stats["i_nce"] = math.log(h1.shape[0]) - nce.item()
        elif self.method == "infomax":
            i_1 = jsd_mutual_information(*self.critic.pairs(h1, z1))
            i_2 = jsd_mutual_information(*self.critic.pairs(h2, z2))
            i_jsd = 0.5 * (i_1 + i_2)
            loss = -i_jsd
            stats["i_jsd"] = i_jsd.item()
        else:
            i_jsd = jsd_mutual_information(*self.critic.pairs(z1, z2))
            loss = -i_jsd + (beta if self.method == "mib" else 0.0) * d_skl
            stats["i_jsd"] = i_jsd.item()
        stats["loss"] = loss.item()
        return loss, stats


# ----------------------------------------------------------------------------------------------------------
# Views


def pick_views(sample_sets: list[SampleSet], rng: random.Random) -> list[tuple[Messages, str, str]]:
    """One random pair of distinct responses per instruction: [(prompt, response_a, response_b), ...].

    Empty (whitespace-only) responses are dropped and duplicates count once; an instruction left with fewer
    than 2 distinct responses has no second view and is skipped with one warning giving the count.
    """
    views, skipped = [], 0
    for s in sample_sets:
        distinct = list(dict.fromkeys(r for r in s.responses if r and r.strip()))
        if len(distinct) < 2:
            skipped += 1
            continue
        a, b = rng.sample(distinct, 2)
        views.append((s.prompt, a, b))
    if skipped:
        warnings.warn(
            f"pick_views: skipped {skipped} of {len(sample_sets)} instructions with fewer than 2 distinct "
            "non-empty responses",
            RuntimeWarning,
            stacklevel=2,
        )
    return views
