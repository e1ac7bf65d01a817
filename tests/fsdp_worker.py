"""Worker for tests/test_fsdp.py: ``torchrun --nproc_per_node 2 tests/fsdp_worker.py OUT`` (FSDP 2 over gloo)
or ``python tests/fsdp_worker.py OUT`` (one plain process).

Accelerate 1.15 applies its FSDP plugin only to GPU-type ranks: with ``cpu=True`` it silently keeps
``MULTI_CPU`` and wraps the model in DDP (docs/scaling.md). The two-rank run therefore switches the
already-created state to FSDP with a `FullyShardedDataParallelPlugin` (fsdp_version 2) before the trainer
prepares its model: from there on, ``accelerator.prepare`` shards the parameters with ``fully_shard`` (DTensors
over gloo) exactly as it does on GPUs, and `training.save_final_outputs` gathers them for ``model/``.
Every rank writes ``rank<i>.json``: what its Accelerator was and how its parameters were held.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from helpers import marker_prefs  # this script's folder is sys.path[0]

from rlp_align.train.reward import RewardConfig, train_reward_model
from rlp_align.train.training import OptimConfig, make_accelerator


def main(out: Path) -> None:
    accelerator = make_accelerator(0)
    if accelerator.num_processes > 1:
        PartialState().distributed_type = DistributedType.FSDP
        AcceleratorState().fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    seen: dict = {}
    prepare = Accelerator.prepare

    def spy(self, *args, **kwargs):
        prepared = prepare(self, *args, **kwargs)
        params = list(prepared[0].parameters())
        seen["param_types"] = sorted({type(p).__name__ for p in params})
        seen["local_numel"] = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)
        seen["numel"] = sum(p.numel() for p in params)
        return prepared

    Accelerator.prepare = spy
    cfg = RewardConfig(model="tiny", output_dir=str(out / "run"), max_length=64, seed=0, overwrite=True,
                       optim=OptimConfig(learning_rate=1e-3, batch_size=8, max_steps=3))
    summary = train_reward_model(cfg, marker_prefs(32))
    accelerator = make_accelerator(0)
    record = {"num_processes": accelerator.num_processes, "process_index": accelerator.process_index,
              "distributed_type": str(accelerator.distributed_type), "loss": summary["train"]["loss"], **seen}
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    main(out_dir)
