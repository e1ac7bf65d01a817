"""The one device rule of the package, and mixed-precision autocast.

Every module asks `default_device()` where its models go; none names ``"cuda"`` or ``"cpu"`` itself. The
rule, first match wins:

1. an Accelerator already exists in this process (a trainer's `training.make_accelerator`): its device,
   because Accelerate has placed this rank's model there (DDP/FSDP/DeepSpeed included);
2. ``RLP_DEVICE`` is set: ``cpu`` or ``cuda`` (this rank's GPU, ``LOCAL_RANK``); which GPUs exist is
   ``CUDA_VISIBLE_DEVICES``'s business, so there is no ``cuda:N`` form;
3. a GPU is visible: this rank's GPU (``LOCAL_RANK``);
4. the CPU.

``make_accelerator`` asks `requested_device()` (rules 2-4) whether to build a CPU accelerator, so the
trainers and the single-process commands (sample, generate, SPG scoring) agree.
"""

from __future__ import annotations

import contextlib
import os
from typing import Literal

import torch

from rlp_align.core.errors import UserError

MixedPrecision = Literal["no", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def requested_device() -> torch.device:
    """Rules 2-4 of the module docstring: ``RLP_DEVICE``, else this rank's GPU, else the CPU."""
    wanted = os.environ.get("RLP_DEVICE", "").strip().lower()
    if wanted not in ("", "cpu", "cuda"):
        raise UserError(f"RLP_DEVICE must be 'cpu' or 'cuda', got '{wanted}' (choose GPUs with "
                        "CUDA_VISIBLE_DEVICES)")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise UserError("RLP_DEVICE=cuda but torch sees no GPU (a CPU-only torch build, or CUDA_VISIBLE_DEVICES "
                        "hides them); unset RLP_DEVICE to run on the CPU")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def default_device() -> torch.device:
    """Where this process's models go: the Accelerator's device when one exists, else `requested_device`."""
    from accelerate import PartialState

    if PartialState._shared_state:  # an Accelerator (or PartialState) was created: it decided the placement
        return PartialState().device
    return requested_device()


def autocast(mixed_precision: MixedPrecision | str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in bf16/fp16 on ``device``, or nothing for ``"no"``.

    The parameters stay fp32 (the optimiser's master weights); matmuls inside the context run in the half
    type. Trainers get this from the Accelerator (``mixed_precision`` of `training.make_accelerator`); the
    single-process commands (sample, generate) use it directly.
    """
    if mixed_precision in ("no", None, ""):
        return contextlib.nullcontext()
    if mixed_precision not in _DTYPES:
        raise UserError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got '{mixed_precision}'")
    device_type = torch.device(device).type
    if mixed_precision == "fp16" and device_type == "cpu":
        raise UserError("mixed_precision 'fp16' needs a GPU; use 'bf16' (or 'no') on the CPU")
    return torch.autocast(device_type=device_type, dtype=_DTYPES[mixed_precision])
