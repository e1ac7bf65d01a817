"""The one rule for how many CPU threads torch uses (intra-op), applied when a model is loaded.

Small models gain nothing from intra-op threads: their matmuls are too small to split, and on a machine
where anything else runs, the threads wait on each other (issue #29: one training step of the micro model
took 0.69 s with 2 threads and 0.09 s with 1). Large models (SmolLM2-135M) need every core. The rule,
first match wins:

1. ``RLP_NUM_THREADS`` is set: that many threads;
2. the largest model this process has loaded has fewer than `SMALL_MODEL_PARAMETERS` parameters: 1 thread;
3. every core torch would use by default (``OMP_NUM_THREADS`` still limits that, as torch itself reads it).

Every loader in `rlp_align.models.load` calls `fit_threads` with the model's parameter count, so the CLI
commands, the trainers and the pipeline all go through here; ``training.make_accelerator`` calls
`requested_threads` first so a bad ``RLP_NUM_THREADS`` stops a run before any model is loaded.
"""

from __future__ import annotations

import logging
import os

import torch

from rlp_align.core.errors import UserError

log = logging.getLogger(__name__)

SMALL_MODEL_PARAMETERS = 10_000_000
_ALL_CORES = torch.get_num_threads()  # torch's default (every core, or OMP_NUM_THREADS), read before we change it
_largest = 0  # parameters of the largest model loaded in this process: a small RM must not slow a large policy
_chosen: int | None = None  # the last count we set, so the log line is written when the choice changes


def requested_threads() -> int | None:
    """``RLP_NUM_THREADS`` as a number (at least 1), None when unset; a UserError when it is not a number."""
    threads = os.environ.get("RLP_NUM_THREADS", "").strip()
    if threads and not threads.isdigit():
        raise UserError(f"RLP_NUM_THREADS must be a whole number of CPU threads, got {threads!r}: set it to a number "
                        "such as 4, or unset it to let the model's size decide (1 thread below "
                        f"{SMALL_MODEL_PARAMETERS // 1_000_000}M parameters, every core above)")
    return max(1, int(threads)) if threads else None


def choose_threads(num_parameters: int, requested: int | None, all_cores: int) -> tuple[int, str]:
    """The rule of the module docstring as a pure function: (threads, why)."""
    if requested is not None:
        return requested, "set by RLP_NUM_THREADS"
    millions = f"{num_parameters / 1e6:.1f}M parameters"
    if num_parameters < SMALL_MODEL_PARAMETERS:
        return 1, f"model of {millions} < {SMALL_MODEL_PARAMETERS // 1_000_000}M: one thread; RLP_NUM_THREADS overrides"
    return all_cores, f"model of {millions} >= {SMALL_MODEL_PARAMETERS // 1_000_000}M: every core; RLP_NUM_THREADS overrides"


def fit_threads(model: torch.nn.Module | None = None) -> int:
    """Set torch's intra-op threads by the rule for ``model`` (and every model loaded before it); the count.

    Without a model only ``RLP_NUM_THREADS`` is applied (when set). One INFO line names the rule whenever
    the count changes.
    """
    global _largest, _chosen
    if model is not None:
        _largest = max(_largest, sum(p.numel() for p in model.parameters()))
    requested = requested_threads()
    if requested is None and _largest == 0:
        return torch.get_num_threads()
    threads, why = choose_threads(_largest, requested, _ALL_CORES)
    if threads != _chosen:
        log.info("torch threads: %d (%s)", threads, why)
        _chosen = threads
    torch.set_num_threads(threads)
    return threads
