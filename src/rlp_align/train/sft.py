"""Supervised fine-tuning (RLHF step 0): the policy learns the reference answers of instructions.

    L = -(1 / |R|) Σ_{t ∈ R} log π(y_t | x, y_<t)

a causal-LM cross-entropy averaged over the response tokens R only (reference answer + EOS); the prompt
tokens are context, never targets (AlpacaFarm's SFT, 2e-5 for 3 epochs by default).

Outputs in ``output_dir``: ``model/`` (a causal-LM folder, LoRA merged in), ``metrics.jsonl``,
``tensorboard/``, ``summary.json``; ``checkpoint/`` while running, removed at the end unless
``keep_checkpoint``. Rerunning a finished run returns its summary; an unfinished one resumes.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from rlp_align.core.errors import UserError
from rlp_align.core.run_folder import config_inputs
from rlp_align.data.records import Instruction
from rlp_align.data.templates import collate, encode_pair
from rlp_align.models import apply_lora, load_policy, load_tokenizer
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

Example = tuple[list[int], int]  # (prompt + response + EOS token ids, prompt length)


@dataclass
class SFTConfig:
    model: str = "tiny"
    train_file: str | None = None
    eval_file: str | None = None
    output_dir: str = "runs/sft"
    max_length: int = 512
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(learning_rate=2e-5, epochs=3))
    lora: LoraConfig = field(default_factory=LoraConfig)
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over target positions: -(1/|R|) Σ_{t∈R} log π(y_t | y_<t).

    ``logits`` [B, T, V] at position t predict ``input_ids`` at t + 1; ``loss_mask`` [B, T] is 1 on the
    tokens that are targets (response tokens), so prompt and padding positions contribute nothing.
    """
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(logits.dtype)
    token_nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="none")
    return (token_nll * mask.flatten()).sum() / mask.sum().clamp(min=1.0)


def encode_examples(tokenizer, records: list[Instruction], max_length: int) -> list[Example]:
    """(ids, prompt length) per instruction with a non-empty reference; warns about what it drops or cuts."""
    examples, missing, truncated = [], 0, 0
    for r in records:
        if not (r.reference or "").strip():
            missing += 1
            continue
        encoded = encode_pair(tokenizer, r.prompt, r.reference, max_length)
        truncated += encoded.truncated
        examples.append((encoded.input_ids, encoded.prompt_length))
    if missing:
        warnings.warn(f"{missing} of {len(records)} instructions have no reference answer and are skipped",
                      RuntimeWarning, stacklevel=2)
    if truncated:
        warnings.warn(f"{truncated} examples were truncated to max_length={max_length} tokens", RuntimeWarning,
                      stacklevel=2)
    return examples


def sft_batch(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, loss_mask); loss_mask is 1 on response tokens only."""
    ids, attention = collate([e[0] for e in examples], pad_id)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    prompt_lengths = torch.tensor([e[1] for e in examples]).unsqueeze(1)
    return ids, attention, attention * (positions >= prompt_lengths).long()


@torch.no_grad()
def evaluate_sft(model, examples: list[Example], pad_id: int, batch_size: int, accelerator: Accelerator) -> float:
    """Token-weighted mean response cross-entropy on held-out examples (ranks share the examples)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    rows = shard(list(range(len(examples))), accelerator)
    for start in range(0, len(rows), batch_size):
        ids, attention, loss_mask = sft_batch([examples[i] for i in rows[start : start + batch_size]], pad_id)
        logits = model(input_ids=ids.to(accelerator.device), attention_mask=attention.to(accelerator.device)).logits
        n_tokens = loss_mask[:, 1:].sum().item()
        total += torch.tensor([sft_loss(logits, ids.to(logits.device), loss_mask.to(logits.device)).item() * n_tokens,
                               n_tokens], dtype=torch.float64, device=accelerator.device)
    model.train(was_training)
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1].clamp(min=1)).item()


def train_sft(cfg: SFTConfig, records: list[Instruction], eval_records: list[Instruction] | None = None) -> dict:
    """Fine-tune ``cfg.model`` on the reference answers of ``records``; write ``cfg.output_dir``."""
    acc = make_accelerator(cfg.seed, mixed_precision=cfg.optim.mixed_precision)
    out = Path(cfg.output_dir)
    run = TrainingRun(out, acc, cfg.overwrite, cfg.optim, inputs=config_inputs(cfg))
    if run.finished is not None:  # the same run (its fingerprint matched): this command's config, its numbers
        return {**run.finished, "config": asdict(cfg)}
    if cfg.optim.learning_rate <= 0 or cfg.optim.batch_size < acc.num_processes * cfg.optim.gradient_accumulation_steps:
        raise UserError(f"need learning_rate > 0 and batch_size ({cfg.optim.batch_size}) >= processes "
                        f"({acc.num_processes}) x gradient_accumulation_steps ({cfg.optim.gradient_accumulation_steps})")

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    examples = encode_examples(tokenizer, records, cfg.max_length)
    if not examples:
        raise UserError("no instruction with a reference answer to fine-tune on: SFT needs (prompt, reference) rows")
    eval_examples = encode_examples(tokenizer, eval_records or [], cfg.max_length)
    model = load_policy(cfg.model, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout)
    pad_id = tokenizer.pad_token_id
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * max(1, len(examples) // cfg.optim.batch_size)

    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.learning_rate,
                      weight_decay=cfg.optim.weight_decay)
    scheduler = linear_schedule(optimizer, cfg.optim.warmup_steps, total_steps)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    # after prepare: FSDP replaces the parameters by sharded ones (the optimiser's groups are updated)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    clip = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
    last: dict[str, float] = {}
    model.train()  # from_pretrained returns models in eval mode
    with run:
        run.resume()
        start = run.start_step
        bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc="sft",
                   disable=not acc.is_main_process)
        for step in bar:
            rows = shard(batch_indices(len(examples), cfg.optim.batch_size, step, cfg.seed), acc)
            chunks = [c.tolist() for c in np.array_split(np.asarray(rows, dtype=int),
                                                         max(1, min(cfg.optim.gradient_accumulation_steps, len(rows))))]
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for i, chunk in enumerate(chunks):
                # Gradients are all-reduced once per step, on the last micro-batch.
                with acc.no_sync(model) if i < len(chunks) - 1 else contextlib.nullcontext():
                    ids, attention, loss_mask = sft_batch([examples[j] for j in chunk], pad_id)
                    ids, attention, loss_mask = ids.to(acc.device), attention.to(acc.device), loss_mask.to(acc.device)
                    logits = model(input_ids=ids, attention_mask=attention).logits
                    loss = sft_loss(logits, ids, loss_mask)
                    check_finite("SFT loss", acc.reduce(loss.detach(), "mean"), step + 1, out)
                    acc.backward(loss / len(chunks))
                loss_sum += loss.item() / len(chunks)
            grad_norm = acc.clip_grad_norm_(params, clip)
            check_finite("gradient norm", grad_norm, step + 1, out)
            optimizer.step()
            scheduler.step()

            if (step + 1) % cfg.optim.logging_every == 0 or step + 1 == total_steps:
                loss_mean = acc.reduce(torch.tensor(loss_sum, device=acc.device), "mean").item()
                last = {"loss": loss_mean, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
                run.log(step + 1, last)
                bar.set_postfix(loss=f"{loss_mean:.4f}")
            run.checkpoint(step + 1, total_steps, {"config": asdict(cfg)})

        eval_loss = evaluate_sft(acc.unwrap_model(model), eval_examples, pad_id, cfg.optim.eval_batch_size, acc) \
            if eval_examples else None
        if eval_loss is not None:
            run.log(total_steps, {"eval/loss": eval_loss})

    summary = {
        "output_dir": str(out),
        "model_dir": str(out / "model"),
        "steps": total_steps,
        "resumed_from_step": start,
        "train_examples": len(examples),
        "eval_examples": len(eval_examples),
        "train": last,
        "eval": {"loss": eval_loss} if eval_loss is not None else {},
        "seconds": round(run.seconds, 2),
        "config": asdict(cfg),
    }
    return run.save(acc.unwrap_model(model), tokenizer, summary)


def run_sft(cfg: SFTConfig) -> dict:
    """`rlp sft`: read the instruction files (``reference`` = target answer) and fine-tune the policy."""
    if not cfg.train_file:
        raise UserError("SFT needs train_file: an instruction file with reference answers (e.g. Alpaca JSON)")
    from rlp_align.data.readers import read_instructions

    records = read_instructions(cfg.train_file, skip_invalid=cfg.skip_invalid)
    eval_records = read_instructions(cfg.eval_file, skip_invalid=cfg.skip_invalid) if cfg.eval_file else None
    return train_sft(cfg, records, eval_records)
