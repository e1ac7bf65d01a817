"""Plumbing shared by every trainer: Accelerate set-up, metrics, checkpoints with resume, NaN guards,
final outputs.

Resume contract: a trainer saves, every ``save_every`` steps, the model(s), optimiser, scheduler, all
RNG states (through ``Accelerator.save_state``) and its step counter. Batches are drawn from a
deterministic, seeded order indexed by step (``batch_indices``), so a resumed run sees exactly the
batches the uninterrupted run would have seen and ends with the same parameters.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from rlp_align.core.errors import NonFiniteError, UserError
from rlp_align.core.io import append_jsonl, atomic_path, check_writable, io_errors, write_json
from rlp_align.core.run_folder import (
    CHECKPOINT_FILES,
    FINGERPRINT,
    PYTHON,
    STAGE,
    RunLock,
    clear_run,
    folder_kind,
    guard_output,
    marker,
    read_fingerprint,
    record_outputs,
    refuse_unowned,
)
from rlp_align.core.threads import fit_threads
from rlp_align.models import merge_lora, save_model


@dataclass
class OptimConfig:
    """How a trainer optimises and checkpoints: one section (``optim:``) shared by SFT, RM, refine and PPO.

    Each trainer sets its own defaults (``SFTConfig.optim`` starts at learning_rate 2e-5, for instance).
    PPO draws its batches from rollouts (``steps``, ``step_batch_size``, ``micro_batch_size``, ``ppo_epochs``),
    so it refuses the data-loop keys ``epochs``, ``max_steps``, ``batch_size``, ``gradient_accumulation_steps``
    and ``eval_batch_size`` when set.
    """

    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0  # optimiser steps of linear warm-up
    max_grad_norm: float = 1.0  # <= 0: no clipping
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 8  # examples (pairs) per optimiser step, over all ranks
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 16
    logging_every: int = 1
    save_every: int = 0  # checkpoint every n steps (0: never, no resume)
    keep_checkpoint: bool = False  # keep checkpoint/ after the run instead of removing it
    # bf16/fp16: forwards under autocast, parameters, gradients and optimiser state fp32; "no": the launcher's
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"


@dataclass
class LoraConfig:
    """LoRA adapters instead of full fine-tuning (``lora:``), merged into the saved model."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0


def make_accelerator(seed: int, gradient_accumulation_steps: int = 1, mixed_precision: str = "no") -> Accelerator:
    """One Accelerator per run; the launcher (python, torchrun, accelerate launch) decides DDP/FSDP/DeepSpeed.

    ``mixed_precision`` ("no", "bf16", "fp16"): parameters and optimiser state stay fp32; the forward of every
    prepared model runs under autocast in that type, and trainers wrap the forwards they make through an
    unwrapped model (rollouts, reference, reward) in ``accelerator.autocast()``. With "no" the launcher may
    still ask for it (``accelerate launch --mixed_precision bf16`` or an Accelerate config file's setting).
    """
    from accelerate.state import AcceleratorState

    from rlp_align.core.device import autocast, requested_device

    from_env = mixed_precision == "no" and "ACCELERATE_MIXED_PRECISION" in os.environ
    if from_env:
        mixed_precision = os.environ["ACCELERATE_MIXED_PRECISION"] or "no"
    try:
        autocast(mixed_precision, requested_device())  # validates the value (fp16 needs a GPU)
    except UserError as e:
        if not from_env:
            raise
        raise UserError(f"the environment variable ACCELERATE_MIXED_PRECISION={mixed_precision!r} sets the "
                        f"precision: {e}; unset it or set it to no, bf16 or fp16") from None
    fit_threads()  # RLP_NUM_THREADS now (a bad value stops the run here); the model's size decides at loading
    # Our batches are global (batch_indices) and each rank takes its shard, i.e. Accelerate's
    # split_batches semantics; without it a prepared scheduler steps num_processes times per step.
    # Under torchrun on a machine without CUDA, Accelerate only joins the ranks (gloo) when told cpu=True;
    # otherwise every rank silently runs as an independent single process. RLP_DEVICE=cpu does the same on a GPU.
    cpu = requested_device().type == "cpu"
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        # Accelerate refuses to change the precision of a live state; stages of one process (a pipeline,
        # a test session) may differ. The process group (PartialState) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        cpu=cpu,
        mixed_precision=mixed_precision,
    )
    set_seed(seed)
    return accelerator


def batch_indices(num_rows: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Row indices of global batch ``step``: epochs are seeded permutations laid end to end.

    Pure function of (step, seed), which is what makes resume exact without saving a data iterator.
    """
    if num_rows == 0:
        return []
    per_epoch = max(1, num_rows // batch_size) if num_rows >= batch_size else 1
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    chunk = order[offset * batch_size : (offset + 1) * batch_size]
    if len(chunk) < batch_size:  # fewer rows than a batch: wrap around
        chunk = np.resize(order, batch_size) if num_rows < batch_size else chunk
    return chunk.tolist()


def shard(indices: list[int], accelerator: Accelerator) -> list[int]:
    """This rank's share of a global batch (contiguous, equal-sized when divisible)."""
    n, rank = accelerator.num_processes, accelerator.process_index
    per = math.ceil(len(indices) / n)
    return indices[rank * per : (rank + 1) * per]


class MetricsLogger:
    """Metrics to ``metrics.jsonl`` and TensorBoard; on resume, rows past the resumed step are dropped."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, resume_step: int = 0):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [json.dumps(row) for row in read_metrics(out_dir)
                    if isinstance(row.get("step", 0), (int, float)) and row.get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard is optional at run time
            self.writer = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v)
                 for k, v in metrics.items()}
        append_jsonl(self.path, {"step": step, "time": time.time(), **clean})
        if self.writer is not None:
            for key, value in clean.items():
                if isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl``. A last line without its newline that does not parse is the one a crash
    cut short (`append_jsonl`) and is dropped; any other row that is not a JSON object is a `UserError`
    naming the file and line: the file is ours, so something else wrote it and it is not overwritten."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the metrics log ({e}); move it away or rerun with --overwrite true") \
            from None
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            row = None
            if i == len(lines) and not text.endswith("\n"):
                continue  # the line being written when a run was killed
        if not isinstance(row, dict):
            raise UserError(f"{path}, line {i}: not a metrics row (a JSON object); this file is written by rlp "
                            "and was changed by something else: move it away, or rerun with --overwrite true")
        rows.append(row)
    return rows


class Checkpointer:
    """The latest resumable state under ``<out_dir>/checkpoint``, replaced atomically."""

    def __init__(self, out_dir: str | Path, accelerator: Accelerator):
        self.out_dir, self.accelerator = Path(out_dir), accelerator
        self.path = self.out_dir / "checkpoint"
        if accelerator.is_main_process:
            check_writable(self.out_dir)

    def save(self, step: int, extra: dict[str, Any] | None = None) -> None:
        acc = self.accelerator
        tmp = self.out_dir / ".checkpoint.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        with io_errors(self.path):  # a full disk: one message with the path; the previous checkpoint is intact
            acc.save_state(str(tmp), safe_serialization=True)
        # every rank writes its own RNG state into tmp: the main process may rename tmp only once all are done
        # (without this barrier a slower rank found its folder gone: "Parent directory ... does not exist")
        acc.wait_for_everyone()
        if acc.is_main_process:
            files = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())  # rlp's record of them
            write_json(tmp / "trainer_state.json", {"step": step, **(extra or {}), CHECKPOINT_FILES: files})
            old = self.out_dir / ".checkpoint.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.path.exists():
                os.replace(self.path, old)
            os.replace(tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load(self) -> dict[str, Any] | None:
        """Restore models/optimisers/schedulers/RNG; return the saved trainer state, or None for a fresh run."""
        path = self.path
        if not (path / "trainer_state.json").exists():
            # killed between the two renames of `save`: the previous checkpoint is still whole
            path = self.out_dir / ".checkpoint.old"
        state_file = path / "trainer_state.json"
        if not state_file.exists():
            return None
        self.accelerator.load_state(str(path))
        return json.loads(state_file.read_text())


def checkpoint_due(done_steps: int, total_steps: int, save_every: int, keep_checkpoint: bool) -> bool:
    """Save after ``done_steps`` every ``save_every`` steps (0: never); the final step only with
    ``keep_checkpoint``, since the finished run's outputs replace it (and the checkpoint is then removed)."""
    return bool(save_every) and done_steps % save_every == 0 and (done_steps < total_steps or keep_checkpoint)


def check_finite(name: str, value: torch.Tensor | float, step: int, out_dir: str | Path) -> None:
    """Stop with a diagnostic on NaN/Inf; the last checkpoint on disk is the last good one."""
    v = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    if not torch.isfinite(v).all():
        saved = _checkpoint_step(Path(out_dir))
        kept = (f"the last good checkpoint (step {saved}) is kept in {Path(out_dir) / 'checkpoint'} (rerun the same "
                "command to resume from it)" if saved is not None else "no checkpoint had been saved yet, so there "
                "is nothing to resume from: change the settings and rerun with --overwrite true")
        raise NonFiniteError(
            f"{name} became {v.flatten()[0].item()} at step {step}. Training stopped; {kept}. "
            "Usual causes: a learning rate too high, fp16/bf16 overflow, or an empty/degenerate batch."
        )


def _checkpoint_step(out_dir: Path) -> int | None:
    """The step of the checkpoint on disk (the one `Checkpointer.load` would resume from), or None."""
    for folder in (out_dir / "checkpoint", out_dir / ".checkpoint.old"):
        try:
            step = json.loads((folder / "trainer_state.json").read_text()).get("step")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def adamw(params: Any, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where the parameters allow it (CPU or CUDA floating point).

    The default on CPU is a Python loop over tensors, several elementwise passes each: for a 135M model
    that is 0.36 s per step against 0.10 s fused (measured on the 2-core machine).
    """
    params = list(params)  # a generator such as model.parameters() would be used up by the check below
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    fusable = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=fusable or None, **kwargs)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, constant_groups: int = 0):
    """Linear warm-up then linear decay to 10% of the peak learning rate.

    The last ``constant_groups`` parameter groups keep their learning rate throughout (RLP-UML's encoder and
    critic: a fresh head that must first leave the uninformative critic's plateau, issue 22).
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.1, 1.0 - 0.9 * progress)

    n = len(optimizer.param_groups)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor] * (n - constant_groups) + [lambda _: 1.0] * constant_groups)


def _relocated(summary: Any, out: Path) -> Any:
    """A finished run's summary with its output paths under ``out``: a folder that was moved or copied since
    must not report the old place (which may be gone, or hold another run)."""
    old = summary.get("output_dir") if isinstance(summary, dict) else None
    if not isinstance(old, str) or Path(old) == out:
        return summary

    def move(value: Any) -> Any:
        if isinstance(value, str) and (value == old or value.startswith(old.rstrip("/") + "/")):
            return str(out) + value[len(old.rstrip("/")):]
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        return [move(v) for v in value] if isinstance(value, list) else value

    return move(summary)


def finished_summary(out_dir: str | Path, overwrite: bool, accelerator: Accelerator) -> dict[str, Any] | None:
    """The summary of a finished run in ``out_dir`` (so a rerun is a no-op), else None.

    With ``overwrite`` the previous outputs (summary, metrics, TensorBoard, model, checkpoint) are removed
    first and None is returned: the run starts afresh. A folder with only a checkpoint is left alone (resume).
    """
    out = Path(out_dir)
    summary = out / "summary.json"
    if summary.exists() and not overwrite:
        try:
            return _relocated(json.loads(summary.read_text(encoding="utf-8")), out)
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{summary} is damaged (not JSON), so this finished run's result cannot be returned; "
                            "rerun with --overwrite true to train again") from None
    if overwrite and accelerator.is_main_process:
        # only what rlp wrote and recorded; a file of the user's there stops the run first
        clear_run(out, keep=("manifest.json",) if folder_kind(out) == STAGE else ())
    accelerator.wait_for_everyone()
    return None


def save_final_outputs(
    accelerator: Accelerator,
    out_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    summary: dict[str, Any],
    keep_checkpoint: bool,
    extra_modules: dict[str, torch.nn.Module] | None = None,
) -> None:
    """End of a run: ``model/`` (LoRA merged in), each of ``extra_modules`` as ``<name>`` (a safetensors file),
    then ``summary.json``, written last because its presence marks the run finished (`finished_summary`);
    ``checkpoint/`` is removed unless ``keep_checkpoint``. Every rank calls this; rank 0 writes."""
    out = Path(out_dir)
    accelerator.wait_for_everyone()
    final_model = merge_lora(model)
    # Sharded parameters (FSDP, ZeRO-3) are gathered to full tensors by every rank together; rank 0 writes them.
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    full = accelerator.get_state_dict(final_model) if sharded else None
    extras = {name: accelerator.get_state_dict(m) if sharded else m.state_dict()
              for name, m in (extra_modules or {}).items()}
    if accelerator.is_main_process:
        save_model(final_model, tokenizer, out / "model", state_dict=full)
        for name, state in extras.items():
            with atomic_path(out / name) as tmp:
                save_file({k: t.detach().cpu().contiguous() for k, t in state.items()}, str(tmp))
        write_json(out / "summary.json", summary)
        if not keep_checkpoint:
            shutil.rmtree(out / "checkpoint", ignore_errors=True)
    accelerator.wait_for_everyone()


def mark_folder(out_dir: Path) -> str | None:
    """rlp's marker, written first into a trainer's folder that no command claimed (a trainer called from
    Python): only a folder with a marker is rlp's to replace or delete in (`run_folder`)."""
    kind = folder_kind(out_dir)
    if kind is None:
        write_json(out_dir / FINGERPRINT, marker(PYTHON))
        return PYTHON
    return kind


class TrainingRun:
    """One training run in ``out_dir``: the single place where a trainer starts, resumes and ends a run.

        run = TrainingRun(cfg.output_dir, accelerator, cfg.overwrite, cfg.optim)
        if run.finished is not None:          # a finished run is a no-op (``overwrite`` starts afresh)
            return run.finished
        ...build models, optimiser, scheduler...
        with run:                             # closes the metrics log however the loop ends
            state = run.resume()              # the checkpoint's saved extras, or None; sets run.start_step
            for step in range(run.start_step, total_steps):
                ...one training step, inline...
                run.log(step + 1, metrics)
                run.checkpoint(step + 1, total_steps, {...})
        run.save(model, tokenizer, summary)   # model/, extra files, summary.json last; checkpoint/ removed

    ``resume`` must come after every module is built, so the restored RNG states are the ones step k saw.
    """

    def __init__(self, out_dir: str | Path, accelerator: Accelerator, overwrite: bool, optim: Any,
                 inputs: dict[str, Path] | None = None):
        self.out_dir, self.accelerator = Path(out_dir), accelerator
        self.save_every, self.keep_checkpoint = optim.save_every, optim.keep_checkpoint
        # The one output guard (`run_folder.guard_output`): the folder holds no input (``inputs``:
        # `run_folder.config_inputs`) and no files rlp did not write, so ``overwrite`` below deletes neither;
        # no other process writes at, above or below it; then the run lock, re-entrant under the CLI's
        # `run_folder.claim_output`, which also checks the run fingerprint.
        guard_output(self.out_dir, "folder", None, inputs or {}, locks=accelerator.is_main_process)
        self.lock = RunLock(self.out_dir).acquire() if accelerator.is_main_process else None
        if accelerator.is_main_process:
            self.kind = mark_folder(self.out_dir)
            if not overwrite and self.kind != STAGE:  # (a stage's folder is checked by `rlp run`'s stage cache)
                refuse_unowned(self.out_dir, (read_fingerprint(self.out_dir) or {}).get("outputs"), "this run")
        self.finished = finished_summary(self.out_dir, overwrite, accelerator)
        if self.finished is not None:
            self.release()
        self.started = time.time()
        self.start_step = 0
        self.checkpointer: Checkpointer | None = None
        self.logger: MetricsLogger | None = None

    @property
    def seconds(self) -> float:
        return time.time() - self.started

    def resume(self) -> dict[str, Any] | None:
        self.checkpointer = Checkpointer(self.out_dir, self.accelerator)
        state = self.checkpointer.load()
        self.start_step = int(state["step"]) if state else 0
        self.logger = MetricsLogger(self.out_dir, enabled=self.accelerator.is_main_process,
                                    resume_step=self.start_step)
        return state

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.logger.log(step, metrics)

    def checkpoint(self, done_steps: int, total_steps: int, extra: dict[str, Any] | None = None) -> None:
        """After optimiser step ``done_steps`` (1-based): save the resumable state when it is due."""
        if checkpoint_due(done_steps, total_steps, self.save_every, self.keep_checkpoint):
            self.checkpointer.save(done_steps, extra)

    def save(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, summary: dict[str, Any],
             extra_modules: dict[str, torch.nn.Module] | None = None) -> dict[str, Any]:
        save_final_outputs(self.accelerator, self.out_dir, model, tokenizer, summary, self.keep_checkpoint,
                           extra_modules)
        if self.accelerator.is_main_process:
            record_outputs(None, [(self.out_dir, "folder")])  # what it wrote: the only files a rerun may replace
        self.release()
        return summary

    def release(self) -> None:
        """Let other processes have the folder: after the final save, or when the run ends in an error."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close()
        if exc_type is not None:
            self.release()
