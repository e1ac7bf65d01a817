"""Reward modelling (RLHF step 2): a Bradley-Terry reward model on preference pairs.

    L = -E_D[ log σ(r(x, y_w) - r(x, y_l) - m) ]  +  c · E_D[ (r(x, y_w) + r(x, y_l))² ]

The first term is the paper's Eq. 1 without L_M (Ouyang et al. 2022, Eq. 1) with an optional margin m;
the second is the optional reward-centring term of Eisenstein et al. (2023). r = backbone (SFT policy) +
a zero-initialised linear head read at the last real token (`models.load_reward_model`). Chosen and
rejected responses go through the model in one concatenated batch.

`train_reward_model` is reused by the RLP refinement (`rlp_align.rlp.refine`), which adds λ·L_M through an
`AuxiliaryLoss`: extra sequences (the two views) scored in the same forward pass as the pairs.

Outputs in ``output_dir``: ``model/`` (a sequence classifier with ``num_labels=1``, LoRA merged in),
``metrics.jsonl``, ``tensorboard/``, ``summary.json``; ``checkpoint/`` while running, removed at the end
unless ``keep_checkpoint``. Rerunning a finished run returns its summary; an unfinished one resumes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from rlp_align.core.errors import UserError
from rlp_align.core.run_folder import HOW_NOT_WHAT, config_inputs, flatten
from rlp_align.data.records import Preference
from rlp_align.data.templates import collate, encode_pair
from rlp_align.models import (
    apply_lora,
    load_reward_model,
    load_tokenizer,
    reward_scores,
)
from rlp_align.train.training import (
    LoraConfig,
    OptimConfig,
    TrainingRun,
    adamw,
    batch_indices,
    check_finite,
    linear_schedule,
    make_accelerator,
    shard,
)

EncodedPair = tuple[list[int], list[int]]  # token ids of (prompt + chosen, prompt + rejected), or of two views


@dataclass
class RewardConfig:
    model: str = "tiny"  # the SFT policy (a causal-LM folder) or an existing reward model
    train_file: str | None = None
    eval_file: str | None = None
    output_dir: str = "runs/reward"
    max_length: int = 512
    margin: float = 0.0
    center_coef: float = 0.0
    eval_fraction: float = 0.0  # held out of train_file when there is no eval_file
    eval_every: int = 0  # 0: evaluate at the end only
    # How r(x, y) is read off the final states (models.scoring): "last" token (TRL/OpenRLHF) or "sum" of per-token
    # scores. None: the model's own (an existing RM), "last" for a new head.
    readout: Literal["last", "sum"] | None = None
    seed: int = 0
    # AlpacaFarm's learning rate; tiny models want ~1e-3
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=3e-6))
    lora: LoraConfig = field(default_factory=LoraConfig)
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


# --------------------------------------------------------------------------------------------------
# Losses


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """-E[log σ(r(x, y_w) - r(x, y_l) - margin)]: the Bradley-Terry term of Eq. 1 (Ouyang et al. 2022, Eq. 1).

    A positive margin asks the chosen reward to exceed the rejected one by at least ``margin``.
    """
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def centering_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, coef: float) -> torch.Tensor:
    """coef · E[(r(x, y_w) + r(x, y_l))²]: keeps rewards centred on 0 (Eisenstein et al. 2023)."""
    return coef * (r_chosen + r_rejected).pow(2).mean()


# --------------------------------------------------------------------------------------------------
# Pieces


def set_readout(model: nn.Module, wanted: str | None, source: str) -> None:
    """Record the readout in the model's config (saved with it): ``wanted``, else the model's own, else "last".
    An existing reward model keeps the readout it was trained with; asking for another is refused."""
    own = getattr(model.config, "rlp_reward_readout", None)
    if wanted and own and wanted != own:
        raise UserError(f"{source} is a reward model read with readout '{own}'; --readout {wanted} would score it "
                        f"with another readout than it was trained with: leave --readout unset or set it to '{own}'")
    model.config.rlp_reward_readout = wanted or own or "last"


class RewardScorer(nn.Module):
    """Calls `models.reward_scores` inside ``forward`` so that DDP sees the forward pass and syncs gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return reward_scores(self.model, input_ids, attention_mask)


@dataclass
class AuxiliaryLoss:
    """An extra term ``weight · head(h1, h2, step, total_steps)`` on the hidden states of view pairs scored with the pairs.

    RLP-UML: ``head`` is a `uml.MultiViewHead` giving L_M, ``views(step)`` the step's global batch of
    (view 1, view 2) token ids, ``weight`` is λ. The head is trained and checkpointed with the RM and saved
    beside it as ``<name>_head.safetensors``, never inside ``model/``.
    """

    head: nn.Module
    views: Callable[[int], list[EncodedPair]]
    weight: float
    name: str = "uml"
    stat_keys: tuple[str, ...] = ("loss", "i_jsd", "d_skl")
    learning_rate: float | None = None  # the head's own LR, constant (no warm-up or decay); None: the RM's peak


def encode_preferences(tokenizer, prefs: list[Preference], max_length: int) -> list[EncodedPair]:
    """Token ids of (prompt + chosen + EOS, prompt + rejected + EOS) per pair; warns about truncation."""
    out, truncated = [], 0
    for p in prefs:
        chosen = encode_pair(tokenizer, p.prompt, p.chosen, max_length)
        rejected = encode_pair(tokenizer, p.prompt, p.rejected, max_length)
        truncated += chosen.truncated or rejected.truncated
        out.append((chosen.input_ids, rejected.input_ids))
    if truncated:
        warnings.warn(f"{truncated} of {len(prefs)} preference pairs were truncated to max_length={max_length} "
                      "tokens", RuntimeWarning, stacklevel=2)
    return out


def score_sequences(scorer: nn.Module, sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(scores [N], last-token hidden states [N, H]) of token sequences, right-padded into one batch."""
    ids, mask = collate(sequences, pad_id)
    return scorer(ids.to(device), mask.to(device))


def pair_accuracy(r_w: torch.Tensor, r_l: torch.Tensor) -> float:
    """Fraction of pairs ranked right, a tie (equal scores) counting 1/2, as `judge.evaluate.rm_accuracy` counts
    it: a scorer that cannot tell two answers apart is at chance on that pair, not wrong (issue 28, N8)."""
    return ((r_w > r_l).double() + 0.5 * (r_w == r_l).double()).mean().item()


@torch.no_grad()
def evaluate_preferences(
    scorer: nn.Module, pairs: list[EncodedPair], pad_id: int, batch_size: int, accelerator: Accelerator
) -> dict[str, float]:
    """Held-out accuracy P(r_w > r_l) (a tie counts 1/2), mean margin, BT loss and reward mean/std (ranks share the pairs)."""
    was_training = scorer.training
    scorer.eval()
    rows = shard(list(range(len(pairs))), accelerator)
    local = []
    for start in range(0, len(rows), batch_size):
        chunk = [pairs[i] for i in rows[start : start + batch_size]]
        scores, _ = score_sequences(scorer, [c for c, _ in chunk] + [r for _, r in chunk], pad_id, accelerator.device)
        local += list(zip(scores[: len(chunk)].tolist(), scores[len(chunk) :].tolist()))
    scorer.train(was_training)
    both = torch.tensor(gather_object(local), dtype=torch.float64).reshape(-1, 2)
    r_w, r_l = both[:, 0], both[:, 1]
    return {
        "accuracy": pair_accuracy(r_w, r_l),
        "margin": (r_w - r_l).mean().item(),
        "loss": bradley_terry_loss(r_w, r_l).item(),
        "reward_mean": both.mean().item(),
        "reward_std": both.std().item() if both.numel() > 1 else 0.0,
        "pairs": float(len(r_w)),
    }


def rows_read(num_rows: int, batch_size: int, total_steps: int, seed: int) -> list[int]:
    """The rows that `batch_indices` gives over ``total_steps`` steps, sorted: epoch by epoch, each epoch's
    steps read a prefix of its permutation, so this costs one permutation per epoch, not one per step."""
    if num_rows <= batch_size:
        return list(range(num_rows)) if total_steps else []
    per_epoch = num_rows // batch_size
    seen = np.zeros(num_rows, dtype=bool)
    for epoch in range(-(-total_steps // per_epoch)):
        steps = min(per_epoch, total_steps - epoch * per_epoch)
        seen[np.random.default_rng([seed, epoch]).permutation(num_rows)[: steps * batch_size]] = True
        if seen.all():
            break
    return np.flatnonzero(seen).tolist()


def held_out_split(prefs: list[Preference], fraction: float, seed: int) -> tuple[list[Preference], list[Preference]]:
    """A seeded (train, eval) split with at least one pair on each side."""
    n_eval = min(len(prefs) - 1, max(1, round(len(prefs) * fraction)))
    order = np.random.default_rng(seed).permutation(len(prefs))
    return [prefs[i] for i in order[n_eval:]], [prefs[i] for i in order[:n_eval]]


def micro_batches(rows: list[int], n_views: int, n: int) -> list[tuple[list[int], list[int]]]:
    """Split this rank's pair rows into ``n`` gradient-accumulation chunks (none empty of pairs); every view
    goes to the last chunk, so L_M is computed once per optimiser step over the whole view batch (its
    negatives are the batch's other instructions: split per chunk, 4 views over 4 chunks had none at all)."""
    n = max(1, min(n, len(rows)))
    row_chunks = np.array_split(np.asarray(rows, dtype=int), n)
    return [(r.tolist(), list(range(n_views)) if i == n - 1 else []) for i, r in enumerate(row_chunks)]


def gather_views(h: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """This rank's view representations [v, H] -> every rank's, [V, H], in rank order, with gradient to ours.

    The other ranks' rows are constants here; ours carry the gradient, scaled by the number of processes so
    that DDP's gradient mean over ranks gives the full-batch gradient of L_M (each rank's backward reaches
    only its own views). One process: ``h`` itself.
    """
    world = accelerator.num_processes
    if world == 1:
        return h
    sizes = gather_object([h.shape[0]])
    padded = accelerator.pad_across_processes(h.detach(), dim=0)
    rows = accelerator.gather(padded).split(padded.shape[0])
    mine = h * world - h.detach() * (world - 1)  # value h, gradient world * dL/dh
    parts = [mine if r == accelerator.process_index else rows[r][: sizes[r]] for r in range(world)]
    return torch.cat(parts)


def _warn_changed(saved: dict | None, current: dict) -> None:
    saved, current = flatten(saved or {}), flatten(current)  # dotted keys: optim.learning_rate, ...
    changed = sorted(k for k in saved if k in current and saved[k] != current[k]
                     and k.split(".")[-1] not in HOW_NOT_WHAT)
    if changed:
        warnings.warn(f"resuming with a changed configuration ({', '.join(changed)}); the run continues from "
                      "the checkpoint with the new values", RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------
# Training


def train_reward_model(
    cfg: RewardConfig,
    train_prefs: list[Preference],
    eval_prefs: list[Preference] | None = None,
    *,
    extra_loss: AuxiliaryLoss | None = None,
    summary_extra: dict | None = None,
) -> dict:
    """Train r on ``train_prefs`` (+ ``extra_loss``), evaluate on ``eval_prefs``; write ``cfg.output_dir``."""
    acc = make_accelerator(cfg.seed, mixed_precision=cfg.optim.mixed_precision)
    out = Path(cfg.output_dir)
    run = TrainingRun(out, acc, cfg.overwrite, cfg.optim, inputs=config_inputs(cfg))
    if run.finished is not None:  # the same run (its fingerprint matched): this command's config, its numbers
        return {**run.finished, "config": asdict(cfg)}
    if not train_prefs:
        raise UserError("no training preference pairs: the reward model needs at least one (chosen, rejected) pair")
    if (cfg.optim.learning_rate <= 0 or cfg.optim.batch_size < acc.num_processes * cfg.optim.gradient_accumulation_steps
            or cfg.optim.batch_size % acc.num_processes):  # equal shards: the ranks' mean gradient is the batch's
        raise UserError(f"need learning_rate > 0 and batch_size ({cfg.optim.batch_size}) >= processes "
                        f"({acc.num_processes}) x gradient_accumulation_steps ({cfg.optim.gradient_accumulation_steps}), "
                        "and batch_size a multiple of the number of processes")
    if eval_prefs is None and cfg.eval_fraction > 0 and len(train_prefs) > 1:
        train_prefs, eval_prefs = held_out_split(train_prefs, cfg.eval_fraction, cfg.seed)

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = load_reward_model(cfg.model, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
                              new_head=True)  # from the SFT policy
    set_readout(model, cfg.readout, cfg.model)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * max(1, len(train_prefs) // cfg.optim.batch_size)
    # only the rows the run's batches will read are tokenised (a 1-step run on 1M rows: one batch, not 1M rows)
    used = rows_read(len(train_prefs), cfg.optim.batch_size, total_steps, cfg.seed)
    train_pairs = dict(zip(used, encode_preferences(tokenizer, [train_prefs[j] for j in used], cfg.max_length)))
    eval_pairs = encode_preferences(tokenizer, eval_prefs or [], cfg.max_length)
    pad_id = tokenizer.pad_token_id

    scorer = RewardScorer(model)
    modules = [scorer] + ([extra_loss.head] if extra_loss else [])
    groups = [{"params": [p for p in scorer.parameters() if p.requires_grad]}]
    if extra_loss is not None:
        groups.append({"params": list(extra_loss.head.parameters()),
                       "lr": extra_loss.learning_rate or cfg.optim.learning_rate})
    optimizer = adamw(groups, lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay)
    scheduler = linear_schedule(optimizer, cfg.optim.warmup_steps, total_steps, constant_groups=len(groups) - 1)
    *modules, optimizer, scheduler = acc.prepare(*modules, optimizer, scheduler)
    # after prepare: FSDP replaces the parameters by sharded ones (the optimiser's groups are updated)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scorer, head = modules[0], (modules[1] if extra_loss else None)

    clip = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
    aux_keys = extra_loss.stat_keys if extra_loss else ()
    last: dict[str, float] = {}
    skipped_steps = 0  # optimiser steps whose view batch had < 2 instructions, so L_M was zero (this run)

    for m in modules:
        m.train()  # from_pretrained returns models in eval mode
    with run:
        state = run.resume()  # after every module is built, so restored RNG states are what step k saw
        start = run.start_step
        if state:
            _warn_changed(state.get("config"), asdict(cfg))
        bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc="reward",
                   disable=not acc.is_main_process)
        for step in bar:
            rows = shard(batch_indices(len(train_prefs), cfg.optim.batch_size, step, cfg.seed), acc)
            views = shard(extra_loss.views(step), acc) if extra_loss else []
            chunks = micro_batches(rows, len(views), cfg.optim.gradient_accumulation_steps)
            optimizer.zero_grad(set_to_none=True)
            sums = torch.zeros(6, dtype=torch.float64)
            aux_stats: dict[str, float] = {}
            for i, (rows_i, views_i) in enumerate(chunks):
                # Gradients are all-reduced once per step, on the last micro-batch.
                with contextlib.ExitStack() as stack:
                    if i < len(chunks) - 1:
                        for m in modules:
                            stack.enter_context(acc.no_sync(m))
                    pairs = [train_pairs[j] for j in rows_i]
                    pair_views = [views[j] for j in views_i]
                    n, v = len(pairs), len(pair_views)
                    sequences = ([c for c, _ in pairs] + [r for _, r in pairs]
                                 + [a for a, _ in pair_views] + [b for _, b in pair_views])
                    scores, hidden = score_sequences(scorer, sequences, pad_id, acc.device)
                    r_w, r_l = scores[:n], scores[n : 2 * n]

                    # Eq. 1: Bradley-Terry on D (∪ D̂) + λ·L_M on the views
                    bt = bradley_terry_loss(r_w, r_l, cfg.margin)
                    loss = bt + centering_loss(r_w, r_l, cfg.center_coef)
                    check_finite("reward-model loss", acc.reduce(loss.detach(), "mean"), step + 1, out)
                    scaled = loss / len(chunks)
                    if extra_loss is not None and i == len(chunks) - 1:  # once per step, all ranks' views
                        l_m, aux_stats = head(gather_views(hidden[2 * n : 2 * n + v], acc),
                                              gather_views(hidden[2 * n + v :], acc), step, total_steps)
                        check_finite("multi-view loss", l_m.detach(), step + 1, out)
                        skipped_steps += int(aux_stats.get("skipped", 0.0))
                        scaled = scaled + extra_loss.weight * l_m
                    acc.backward(scaled)
                with torch.no_grad():
                    r = torch.cat([r_w, r_l]).double()
                    sums += torch.tensor([loss.item(), bt.item(), pair_accuracy(r_w.detach(), r_l.detach()),
                                          (r_w - r_l).mean().item(), r.mean().item(),
                                          r.std().item() if r.numel() > 1 else 0.0], dtype=torch.float64)
            grad_norm = acc.clip_grad_norm_(params, clip)
            check_finite("gradient norm", grad_norm, step + 1, out)
            optimizer.step()
            scheduler.step()

            if (step + 1) % cfg.optim.logging_every == 0 or step + 1 == total_steps:
                means = acc.reduce(sums.to(acc.device) / len(chunks), "mean").tolist()
                names = ["loss", "bt_loss", "accuracy", "margin", "reward_mean", "reward_std"]
                last = dict(zip(names, means))
                last.update(lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm))
                if extra_loss is not None:  # L_M is one value per step (the same on every rank)
                    last.update({f"{extra_loss.name}/{k}": float(aux_stats.get(k, 0.0)) for k in aux_keys})
                    last["loss"] += extra_loss.weight * last[f"{extra_loss.name}/loss"]
                    last[f"{extra_loss.name}/lambda"] = extra_loss.weight
                    last[f"{extra_loss.name}/skipped_steps"] = float(skipped_steps)
                run.log(step + 1, last)
                bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.2f}")
            if cfg.eval_every and eval_pairs and (step + 1) % cfg.eval_every == 0 and step + 1 < total_steps:
                metrics = evaluate_preferences(acc.unwrap_model(scorer), eval_pairs, pad_id, cfg.optim.eval_batch_size, acc)
                run.log(step + 1, {f"eval/{k}": v for k, v in metrics.items()})
            run.checkpoint(step + 1, total_steps, {"config": asdict(cfg)})

        final_eval = evaluate_preferences(acc.unwrap_model(scorer), eval_pairs, pad_id, cfg.optim.eval_batch_size,
                                          acc) if eval_pairs else {}
        if final_eval:
            run.log(total_steps, {f"eval/{k}": v for k, v in final_eval.items()})

    summary = {
        "output_dir": str(out),
        "model_dir": str(out / "model"),
        "steps": total_steps,
        "resumed_from_step": start,
        "train_pairs": len(train_prefs),
        "eval_pairs": len(eval_pairs),
        "train": last,
        "eval": final_eval,
        "seconds": round(run.seconds, 2),
        "config": asdict(cfg),
        **(summary_extra or {}),
    }
    heads = {f"{extra_loss.name}_head.safetensors": acc.unwrap_model(head)} if extra_loss is not None else None
    return run.save(acc.unwrap_model(scorer).model, tokenizer, summary, heads)


def run_reward(cfg: RewardConfig) -> dict:
    """`rlp reward`: read the preference files and train the reward model."""
    if not cfg.train_file:
        raise UserError("reward training needs train_file: a preference file (TRL, AlpacaFarm, HH-RLHF or LLMBar)")
    from rlp_align.data.readers import read_preferences

    train = read_preferences(cfg.train_file, skip_invalid=cfg.skip_invalid)
    held_out = read_preferences(cfg.eval_file, skip_invalid=cfg.skip_invalid) if cfg.eval_file else None
    return train_reward_model(cfg, train, held_out)
