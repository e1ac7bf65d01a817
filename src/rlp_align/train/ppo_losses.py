"""PPO's pure pieces: masked statistics, KL-shaped rewards, GAE, clipped losses, the adaptive KL controller.

Every tensor is [B, T] over response tokens with a 0/1 ``mask`` (1 up to and including EOS, 0 on padding),
and nothing is ever read where the mask is 0: padded positions contribute exactly zero.
References: Schulman et al. 2016 (GAE, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation"), Schulman et al. 2017 (PPO, "Proximal Policy Optimization Algorithms"), Ziegler et al. 2019
("Fine-Tuning Language Models from Human Preferences"), Dubois et al. 2023 (AlpacaFarm), Ahmadian et al. 2024
("Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs", RLOO).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


SumOverRanks = Callable[[torch.Tensor], torch.Tensor]


def masked_moments(
    x: torch.Tensor, mask: torch.Tensor, reduce: SumOverRanks | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased (Bessel-corrected, as in TRL/AlpacaFarm) variance of ``x`` over the masked positions.

    ``reduce`` sums a tensor over ranks (an all-reduce); with it the moments are those of the global batch,
    so a 2-rank run whitens exactly as a 1-rank run would. Two passes, for numerical stability.
    """
    total = reduce or (lambda t: t)
    mask = mask.to(x.dtype)
    n, s = total(torch.stack([mask.sum(), (x * mask).sum()])).unbind()
    mean = s / n.clamp(min=1.0)
    var = total((((x - mean) ** 2) * mask).sum()) / (n - 1).clamp(min=1.0)
    return mean, var


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
    reduce: SumOverRanks | None = None,
) -> torch.Tensor:
    """Normalise over the masked positions: (x - mean) / sqrt(var + eps); padded positions become 0.

    With ``shift_mean=False`` the mean is added back, x' = (x - mean)/std + mean, which is how AlpacaFarm
    and TRL whiten *rewards* (scale only) while advantages are fully whitened. ``reduce``: see `masked_moments`.
    """
    mean, var = masked_moments(x, mask, reduce)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def kl_penalty(kl: torch.Tensor, clamp: bool) -> torch.Tensor:
    """The per-token KL term the penalty charges: log(pi/pi_ref) itself, or AlpacaFarm's max(0, log(pi/pi_ref)).

    The clamp (Dubois et al. 2023, their PPO trainer's reward shaping) never pays the policy for a token it
    finds less likely than the reference; AlpacaFarm's ``kl_coef`` was tuned with it (docs/decisions.md).
    """
    return kl.clamp(min=0.0) if clamp else kl


def kl_penalty_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float,
    clamp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of Ziegler et al. 2019, Eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)).

    The KL term is spread over tokens, r_t = -beta * (log pi(y_t|.) - log pi_ref(y_t|.)) (with ``clamp``,
    -beta * max(0, .), see `kl_penalty`), and the sequence score r(x, y) [B] is added at the last real token
    (EOS when produced). Returns ``(rewards [B, T], kl [B, T])``, both zero where ``mask`` is 0; ``kl`` is the
    unclamped log-ratio, whose sum over tokens estimates KL(pi || pi_ref) without bias.
    """
    mask_f = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask_f
    rewards = -kl_coef * kl_penalty(kl, clamp)
    last = (mask_f.sum(-1).long() - 1).clamp(min=0)  # prefix masks: the last real token of each row
    at_last = torch.nn.functional.one_hot(last, rewards.shape[1]).to(rewards.dtype) * mask_f
    rewards = rewards + scores.to(rewards.dtype)[:, None] * at_last
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, Eq. 16) and returns.

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)  (V = 0 past the last real token), and
    A_t = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}, R_t = A_t + V(s_t).
    The discounted sum is one matrix product with D[t', t] = (gamma*lam)^(t'-t) for t' >= t, instead of a
    Python loop over tokens. Masks must be prefixes (1s then 0s), as responses are right-padded.
    Returns ``(advantages [B, T], returns [B, T])``, zero where ``mask`` is 0.
    """
    mask_f = mask.to(values.dtype)
    values = values * mask_f
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask_f
    steps = torch.arange(deltas.shape[1], device=deltas.device)
    exponent = (steps[:, None] - steps[None, :]).to(deltas.dtype)  # t' - t
    discount = torch.where(exponent >= 0, (gamma * lam) ** exponent.clamp(min=0), 0.0)
    advantages = (deltas @ discount) * mask_f
    return advantages, (advantages + values) * mask_f


def rloo_advantages(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float,
    k: int, clamp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, Sec. 3.2; Kool et al. 2019):

    R_i = r(x, y_i) - beta * sum_t (log pi(y_i,t | .) - log pi_ref(y_i,t | .))  (each term max(0, .) with
    ``clamp``, see `kl_penalty`),
    A_i = R_i - 1/(k-1) * sum_{j != i} R_j,
    for the k samples y_1..y_k of one prompt, which are consecutive rows (row g * k + i is sample i of prompt g).
    The baseline is the mean of the *other* samples' KL-penalised rewards, so it does not depend on y_i and
    the estimator stays unbiased; no critic. Returns ``(advantages [B], penalised rewards R [B])``.
    """
    if k < 2 or scores.shape[0] % k:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt and a batch of whole groups (k={k}, "
                         f"batch={scores.shape[0]})")
    kl = kl_penalty((logprobs - ref_logprobs) * mask.to(logprobs.dtype), clamp).sum(-1)
    rewards = scores.to(kl.dtype) - kl_coef * kl
    groups = rewards.view(-1, k)
    baseline = (groups.sum(-1, keepdim=True) - groups) / (k - 1)
    return (groups - baseline).reshape(-1), rewards


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise:

    L = E_t[ max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps, 1 + eps)) ],  rho_t = exp(log pi - log pi_old).
    Returns ``(loss, clip_fraction, approx_kl)`` where approx_kl = E[(log pi - log pi_old)^2] / 2.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = 0.5 * masked_mean(log_ratio.pow(2), mask)
    return loss, clip_fraction.detach(), approx_kl.detach()


def sequence_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate with the whole response as one action (RLOO as TRL's RLOOTrainer computes it):

    L = E_i[ max(-A_i * rho_i, -A_i * clip(rho_i, 1 - eps, 1 + eps)) ],
    rho_i = pi(y_i|x) / pi_old(y_i|x) = exp(sum_t (log pi(y_i,t|.) - log pi_old(y_i,t|.))),
    the mean over sequences, with ``advantages`` [B] one per sequence (Ahmadian et al. 2024, Sec. 3: a response
    is one action). At rho = 1 the gradient is REINFORCE's, -A_i * grad sum_t log pi(y_i,t|.), per sequence.
    Returns ``(loss, clip_fraction, approx_kl)`` with approx_kl = E_i[(log rho_i)^2] / 2.
    """
    log_ratio = ((logprobs - old_logprobs) * mask.to(logprobs.dtype)).sum(-1)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = torch.maximum(unclipped, clipped).mean()
    clip_fraction = (clipped > unclipped).to(logprobs.dtype).mean()
    approx_kl = 0.5 * log_ratio.pow(2).mean()
    return loss, clip_fraction.detach(), approx_kl.detach()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (Schulman et al. 2017, Sec. 5 / the openai baselines PPO2 form):

    L_V = 1/2 E_t[ max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -eps, eps) - R_t)^2) ].
    Returns ``(loss, clip_fraction)``.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_loss = (values - returns).pow(2)
    clipped_loss = (clipped_values - returns).pow(2)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    clip_fraction = masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask)
    return loss, clip_fraction.detach()


class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. 2019, Eq. 3 (Sec. 2.2):

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2);  beta_{t+1} = beta_t * (1 + K_beta * e_t),
    with K_beta = n_steps / horizon (n_steps = samples in this PPO step). A fixed controller keeps beta.
    """

    def __init__(self, init_kl_coef: float, target: float | None = None, horizon: float = 10000.0):
        self.value = float(init_kl_coef)
        self.target, self.horizon = target, float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
