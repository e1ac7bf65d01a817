"""PPO against a reward function, AlpacaFarm-style (RLP steps 3 and 5).

One PPO step, as in Ziegler et al. 2019 and AlpacaFarm (Dubois et al. 2023):
  1. rollout: sample responses to a global batch of prompts with the policy (KV cache, left padding),
             keeping log pi(y_t | ...) and the entropy of each distribution sampled from;
  2. score:  one batched forward each for the frozen reference's log-probs and the value model's values,
             plus the reward r(x, y) read at the last real token of the response;
  3. shape:  per-token rewards r_t = -beta * (log pi - log pi_ref) (clamped at 0 per token by default, as
             AlpacaFarm: ``kl_clamp``), plus r(x, y) at the last token; optional
             truncation penalty; optional reward whitening; GAE advantages, whitened;
  4. update: ``ppo_epochs`` passes over shuffled minibatches with the clipped policy and value losses.
Losses and GAE are pure functions in `rlp_align.train.ppo_losses`. The value model starts as a copy of the RM.
``estimator: rloo`` swaps step 3 for REINFORCE leave-one-out (Ahmadian et al. 2024): k samples per prompt, each
sample's baseline the mean KL-penalised reward of the other k-1, and no critic. With ``lora`` the reference is
the policy's own base with the adapters off; the critic is ``critic: separate | lora | head``
(`rlp_align.train.ppo_models`).
Multi-process: each rank takes its shard of the global rollout batch; metrics are averaged over ranks.
The run checkpoints every ``save_every`` steps and resumes from there; at the end it writes ``model/`` and drops
``checkpoint/`` unless ``keep_checkpoint``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from rlp_align.core.device import default_device
from rlp_align.core.errors import UserError
from rlp_align.core.run_folder import config_inputs
from rlp_align.data.records import Messages
from rlp_align.data.templates import encode_prompts
from rlp_align.models import load_tokenizer
from rlp_align.models.generation import seeded_generator
from rlp_align.models.logprobs import token_logprobs
from rlp_align.train.ensemble import RewardFn, make_reward_fn, same_vocabulary
from rlp_align.train.ppo_config import PPOConfig
from rlp_align.train.ppo_eval import evaluation_point
from rlp_align.train.ppo_losses import (
    AdaptiveKLController,
    SumOverRanks,
    gae,
    kl_penalty,
    kl_penalty_rewards,
    masked_mean,
    policy_loss,
    rloo_advantages,
    sequence_policy_loss,
    value_loss,
    whiten,
)
from rlp_align.train.ppo_models import build_models, check_tokenizers
from rlp_align.train.ppo_rollout import ActorCritic, Rollout, make_rollout
from rlp_align.train.training import (
    OptimConfig,
    TrainingRun,
    adamw,
    batch_indices,
    check_finite,
    make_accelerator,
    shard,
)

log = logging.getLogger(__name__)


def shape_rewards(
    rollout: Rollout, cfg: PPOConfig, kl_coef: float, reduce: SumOverRanks | None = None
) -> torch.Tensor:
    """Step 3: KL-penalised per-token rewards -> GAE -> whitened advantages (in place); returns the KL [B, T].

    ``reduce`` (a sum over ranks) makes the whitening statistics those of the global rollout batch.
    """
    rewards, kl = kl_penalty_rewards(rollout.scores, rollout.logprobs, rollout.ref_logprobs, rollout.mask, kl_coef,
                                     cfg.kl_clamp)
    if cfg.whiten_rewards:
        rewards = whiten(rewards, rollout.mask, shift_mean=False, reduce=reduce)
    advantages, rollout.returns = gae(rewards, rollout.values, rollout.mask, cfg.gamma, cfg.lam)
    rollout.advantages = whiten(advantages, rollout.mask, reduce=reduce)
    return kl


# PPO's batches come from rollouts: the supervised data-loop keys of `optim` have PPO counterparts instead.
PPO_REFUSES = {"epochs": "ppo_epochs", "max_steps": "steps", "batch_size": "step_batch_size",
               "gradient_accumulation_steps": "micro_batch_size", "eval_batch_size": "reward_batch_size"}


def check_optim(cfg: PPOConfig) -> None:
    """Refuse the `optim` keys PPO does not read, rather than ignore them."""
    default = OptimConfig()
    for key, instead in PPO_REFUSES.items():
        if getattr(cfg.optim, key) != getattr(default, key):
            raise UserError(f"ppo does not use optim.{key} (its batches come from rollouts): set {instead} instead")


def _check(cfg: PPOConfig, num_processes: int) -> None:
    check_optim(cfg)
    if cfg.rollout_batch_size % num_processes or cfg.step_batch_size % num_processes:
        raise UserError(f"rollout_batch_size ({cfg.rollout_batch_size}) and step_batch_size ({cfg.step_batch_size}) "
                        f"must be multiples of the number of processes ({num_processes})")
    if cfg.rollout_batch_size % cfg.step_batch_size:
        raise UserError(f"rollout_batch_size ({cfg.rollout_batch_size}) must be a multiple of step_batch_size "
                        f"({cfg.step_batch_size})")
    if cfg.temperature <= 0:
        raise UserError("PPO samples from the policy: temperature must be > 0")
    if cfg.estimator == "rloo" and (cfg.rloo_k < 2 or cfg.rollout_batch_size % (cfg.rloo_k * num_processes)):
        raise UserError(f"RLOO needs rloo_k >= 2 (got {cfg.rloo_k}) and a rollout_batch_size "
                        f"({cfg.rollout_batch_size}) that is a multiple of rloo_k x processes ({num_processes}): "
                        "each prompt's k samples stay together on one rank")


def shape_rloo(rollout: Rollout, cfg: PPOConfig, kl_coef: float) -> torch.Tensor:
    """Step 3 for RLOO: the sequence's leave-one-out advantage on every one of its tokens; returns the KL [B, T].

    ``rloo_ratio: sequence`` reads it back once per response (`ppo_losses.sequence_policy_loss`, TRL's
    RLOOTrainer); ``token`` uses it as every token's advantage in PPO's per-token surrogate. With one epoch of one
    minibatch both are REINFORCE with the leave-one-out baseline, summed over a response's tokens (sequence) or
    averaged over the minibatch's tokens (token); from the second epoch on they clip differently.
    """
    mask = rollout.mask.to(rollout.logprobs.dtype)
    advantages, _ = rloo_advantages(rollout.scores, rollout.logprobs, rollout.ref_logprobs, mask, kl_coef,
                                    cfg.rloo_k, cfg.kl_clamp)
    rollout.advantages = advantages[:, None] * mask
    rollout.returns = torch.zeros_like(mask)
    return (rollout.logprobs - rollout.ref_logprobs) * mask


def ppo_update(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator, rollout: Rollout,
    cfg: PPOConfig, step: int, base_lrs: list[float], split_backward: bool | None = None,
) -> dict[str, float]:
    """Step 4: ``ppo_epochs`` passes over shuffled minibatches of this rank's rollout; one optimiser step each.

    A minibatch may be split into micro-batches (gradient accumulation); each micro-batch's masked-mean loss
    is weighted by its share of the minibatch's tokens, so the result equals the minibatch's masked mean
    (RLOO's sequence-level loss is a mean over responses: its share is the micro-batch's share of the rows).
    Returns the token-weighted means of the loss statistics over all updates of this step.

    ``split_backward`` (default: on with one process) backpropagates the policy loss before the value model's
    forward pass, so the two activation graphs are never held together. Policy and value share no
    parameters, so the gradients are those of the summed loss; peak memory drops by about one model's
    activations. Under DDP one forward and one backward must cover all parameters, so it stays off there.
    """
    actor_critic: ActorCritic = accelerator.unwrap_model(model)
    has_critic = actor_critic.critic != "none"
    # RLOO with one ratio per response: its loss is a mean over sequences, so micro-batches weigh by rows
    per_sequence = cfg.estimator == "rloo" and cfg.rloo_ratio == "sequence"
    # a value head on the policy's trunk shares its forward pass: one pass, one backward
    split = accelerator.num_processes == 1 if split_backward is None else split_backward
    split = split and actor_critic.critic != "head"
    local_minibatch = cfg.step_batch_size // accelerator.num_processes
    micro = cfg.micro_batch_size or local_minibatch
    updates_per_step = cfg.ppo_epochs * (cfg.rollout_batch_size // cfg.step_batch_size)
    update = step * updates_per_step  # global optimiser-update count, for the warm-up
    rng = np.random.default_rng([cfg.seed, step, accelerator.process_index])  # a pure function of the step
    model.train()
    sums: dict[str, float] = {}
    for _epoch in range(cfg.ppo_epochs):
        order = torch.as_tensor(rng.permutation(rollout.mask.shape[0]), device=rollout.mask.device)
        for minibatch in order.split(local_minibatch):
            # the mean token count per rank: DDP averages gradients over ranks, so each rank's loss is its
            # token sum over this, and the update is the global minibatch's token mean whatever the lengths
            minibatch_tokens = accelerator.reduce(rollout.mask[minibatch].sum().float(), reduction="mean")
            minibatch_tokens = minibatch_tokens.clamp(min=1.0)
            warmup = min(1.0, (update + 1) / cfg.optim.warmup_steps) if cfg.optim.warmup_steps else 1.0
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * warmup
            chunks = minibatch.split(micro)
            for i, rows in enumerate(chunks):
                b = rollout.rows(rows)
                share = len(rows) / len(minibatch) if per_sequence else b["mask"].sum() / minibatch_tokens
                # gradients are all-reduced across ranks only on the minibatch's last micro-batch
                inputs = (b["input_ids"], b["attention_mask"], b["response"].shape[1])
                with contextlib.nullcontext() if i == len(chunks) - 1 else accelerator.no_sync(model):
                    if not has_critic:  # RLOO: the policy loss alone
                        logits = model(*inputs, cfg.temperature)[0]
                    elif split:
                        logits = actor_critic.logits(*inputs, cfg.temperature)
                    else:
                        logits, values = model(*inputs, cfg.temperature)
                    logprobs = token_logprobs(logits, b["response"])
                    if per_sequence:  # shape_rloo put the sequence advantage on every token: read the first
                        pg_loss, clip_fraction, approx_kl = sequence_policy_loss(
                            logprobs, b["logprobs"], b["advantages"][:, 0], b["mask"], cfg.clip_range)
                    else:
                        pg_loss, clip_fraction, approx_kl = policy_loss(
                            logprobs, b["logprobs"], b["advantages"], b["mask"], cfg.clip_range)
                    stats = {"policy_loss": pg_loss, "clip_fraction": clip_fraction, "approx_kl": approx_kl}
                    if has_critic and split:
                        accelerator.backward(pg_loss * share)  # frees the policy's graph
                        del logits, logprobs
                        pg_loss, values = pg_loss.detach(), actor_critic.values(*inputs)
                    loss = pg_loss
                    if has_critic:
                        vf_loss, vf_clip_fraction = value_loss(
                            values.float(), b["values"], b["returns"], b["mask"], cfg.value_clip_range)
                        loss = pg_loss + cfg.vf_coef * vf_loss
                        stats.update(value_loss=vf_loss, value_clip_fraction=vf_clip_fraction)
                    accelerator.backward(loss * share)
                check_finite("loss", loss, step + 1, cfg.output_dir)
                for key, v in stats.items():
                    sums[key] = sums.get(key, 0.0) + float(v.detach()) * float(share) / updates_per_step
            if cfg.optim.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            update += 1
    return sums


def train_ppo(
    cfg: PPOConfig, prompts: list[Messages], reward_fn: RewardFn,
    gold_fn: Callable[[list[Messages], list[str]], Any] | None = None,
    eval_prompts: list[Messages] | None = None,
) -> dict[str, Any]:
    """Run PPO from ``cfg.policy`` on ``prompts`` against ``reward_fn``; resumes from output_dir/checkpoint.

    With ``cfg.eval_every`` and ``eval_prompts``, an evaluation point (`rlp_align.train.ppo_eval`) is logged before
    the first step and after every ``eval_every`` steps and the last, as ``eval/*`` metrics.
    """
    if not prompts:
        raise UserError("PPO needs at least one prompt")
    accelerator = make_accelerator(cfg.seed, mixed_precision=cfg.optim.mixed_precision)
    _check(cfg, accelerator.num_processes)
    # every prompt is cut the same way at every step: count (and warn about) the cut ones once, and refuse a
    # max_prompt_length the chat template does not fit in, before any model is loaded
    tokenizer = load_tokenizer(cfg.policy, trust_remote_code=cfg.trust_remote_code)
    encode_prompts(tokenizer, prompts, cfg.max_prompt_length, "ppo")
    check_tokenizers(cfg)  # the reference and a separate critic read the policy's token ids
    out_dir = Path(cfg.output_dir)
    run = TrainingRun(out_dir, accelerator, cfg.overwrite, cfg.optim, inputs=config_inputs(cfg))
    if run.finished is not None:  # the same run (its fingerprint matched): this command's config, its numbers
        return {**run.finished, "config": asdict(cfg)}
    device = accelerator.device

    trust = {"allow_pickle": cfg.allow_pickle, "trust_remote_code": cfg.trust_remote_code}
    actor_critic, ref, groups = build_models(cfg, device, **trust)
    base_lrs = [g["lr"] for g in groups]
    optimizer = adamw(groups, weight_decay=cfg.optim.weight_decay)
    model, optimizer = accelerator.prepare(actor_critic, optimizer)
    unwrapped: ActorCritic = accelerator.unwrap_model(model)
    score_tokens = (hasattr(reward_fn, "score_tokens") and getattr(reward_fn, "tokenizer", None) is not None
                    and same_vocabulary(reward_fn.tokenizer, tokenizer))
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target if cfg.adaptive_kl else None, cfg.kl_horizon)

    state = run.resume()
    start = run.start_step
    if state is not None:
        kl_ctl.value = float(state["kl_coef"])
        log.info("resuming PPO from step %d", start)
    sum_over_ranks = (lambda t: accelerator.reduce(t, reduction="sum")) if accelerator.num_processes > 1 else None
    metrics: dict[str, float] = {}

    def eval_point(step: int) -> dict[str, Any]:
        if not (cfg.eval_every and eval_prompts) or (step % cfg.eval_every and step != cfg.steps):
            return {}
        return evaluation_point(unwrapped, ref, tokenizer, reward_fn, gold_fn, eval_prompts, cfg, cfg.seed,
                                score_tokens, accelerator)

    if start == 0 and (first := eval_point(0)):
        run.log(0, first)  # the initial policy: KL 0
    for step in range(start, cfg.steps):
        # ---- 1-2. rollout and scoring
        timings: dict[str, float] = {}
        k = cfg.rloo_k if cfg.estimator == "rloo" else 1  # RLOO: k consecutive samples of each prompt
        indices = shard(batch_indices(len(prompts), cfg.rollout_batch_size // k, step, cfg.seed), accelerator)
        batch_prompts = [prompts[i] for i in indices for _ in range(k)]
        generator = seeded_generator(cfg.seed, step, accelerator.process_index, device=device)
        with accelerator.autocast():  # the rollout's forwards bypass the prepared (autocast) forward
            rollout, texts = make_rollout(unwrapped, ref, tokenizer, reward_fn, batch_prompts, cfg, generator,
                                          score_tokens, timings)
        check_finite("reward", rollout.raw_scores, step + 1, out_dir)

        # ---- 3. KL-shaped rewards, GAE, whitened advantages (PPO), or leave-one-out advantages (RLOO)
        if cfg.estimator == "rloo":
            kl = shape_rloo(rollout, cfg, kl_ctl.value)
        else:
            kl = shape_rewards(rollout, cfg, kl_ctl.value, reduce=sum_over_ranks)

        # ---- 4. PPO epochs over minibatches
        t0 = time.perf_counter()
        losses = ppo_update(model, optimizer, accelerator, rollout, cfg, step, base_lrs)
        timings["time_update"] = time.perf_counter() - t0
        update_tokens = cfg.ppo_epochs * (rollout.query_mask.sum() + rollout.mask.sum()).item()
        timings["update_tokens_per_second"] = update_tokens / max(timings["time_update"], 1e-9)

        # ---- metrics (mean over ranks), KL controller, checkpoint
        seq_kl = kl.sum(-1)
        local = {
            "reward": rollout.raw_scores.mean(), "reward_std": rollout.raw_scores.std(unbiased=False),
            "score": rollout.scores.mean(), "kl": seq_kl.mean(),
            "kl_per_token": masked_mean(kl, rollout.mask),
            "entropy": masked_mean(rollout.entropy, rollout.mask),
            "response_length": rollout.mask.sum(-1).float().mean(),
            "truncated_fraction": rollout.truncated.float().mean(),
            "non_score_reward": (-kl_ctl.value * kl_penalty(kl, cfg.kl_clamp).sum(-1)).mean(),
            **{k: torch.tensor(v) for k, v in losses.items()},
            **{k: torch.tensor(v) for k, v in timings.items()},
        }
        if gold_fn is not None:
            local["gold_reward"] = torch.as_tensor(gold_fn(batch_prompts, texts), dtype=torch.float32).mean()
        names = list(local)
        reduced = accelerator.reduce(torch.stack([local[k].float().to(device) for k in names]), reduction="mean")
        metrics = dict(zip(names, reduced.tolist()))
        metrics["kl_coef"] = kl_ctl.value
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        kl_ctl.update(metrics["kl"], cfg.rollout_batch_size)
        run.log(step + 1, {**metrics, **eval_point(step + 1)})
        if accelerator.is_main_process and ((step + 1) % cfg.optim.logging_every == 0 or step + 1 == cfg.steps):
            log.info("ppo step %d/%d reward %.4f kl %.4f", step + 1, cfg.steps, metrics["reward"], metrics["kl"])
        run.checkpoint(step + 1, cfg.steps, {"kl_coef": kl_ctl.value})

    # ---- outputs: the policy as a plain HF folder, metrics, summary
    run.close()
    accelerator.wait_for_everyone()
    summary = {"steps": cfg.steps, "resumed_from": start, "seconds": run.seconds,
               "model": str(out_dir / "model"), "final_kl_coef": kl_ctl.value, "final": metrics,
               "config": asdict(cfg)}
    return run.save(unwrapped.policy, tokenizer, summary)


def run_ppo(cfg: PPOConfig) -> dict[str, Any]:
    """`rlp ppo`: prompts from ``prompts_file``, reward from ``reward_model`` or ``reward_ensemble``."""
    from rlp_align.data.readers import read_instructions

    check_optim(cfg)
    if not cfg.prompts_file:
        raise UserError("ppo needs --prompts_file (unlabelled instructions)")
    prompts = [inst.prompt for inst in read_instructions(cfg.prompts_file, skip_invalid=cfg.skip_invalid)]
    reward_fn = make_reward_fn(cfg.reward_model or None, cfg.reward_ensemble, cfg.ensemble_aggregate, cfg.uwo_lambda,
                               device=default_device(), batch_size=cfg.reward_batch_size,
                               max_length=cfg.max_prompt_length + cfg.max_new_tokens + 1,
                               max_prompt_length=cfg.max_prompt_length)
    return train_ppo(cfg, prompts, reward_fn)
