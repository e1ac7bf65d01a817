"""`rlp run`: the staged RLP pipeline (Algorithm 1), its settings, its stage cache and its report.

- `pipeline_config`: `PipelineConfig` and its sections; `stages`: the stage cache (keys, manifests, status);
- `stages_impl`: what each stage does; `run`: the order of the stages; `report`: the run's report with plots.

May import: every layer below (core, data, models, train, judge, worlds, rlp). Only the CLI imports it.
The README's Python API names are re-exported here: ``from rlp_align.pipeline import PipelineConfig, run_pipeline``.
"""

from rlp_align.pipeline.run import PipelineConfig, run_pipeline

__all__ = ["PipelineConfig", "run_pipeline"]
