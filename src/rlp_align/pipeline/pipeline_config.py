"""The configuration of ``rlp run`` and the small helpers its stages share.

Kept apart from `pipeline` (the stage graph) so that `stages_impl` (what each stage does) can read it
without importing the pipeline that calls it: the dependency runs one way, pipeline -> stages_impl -> here.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlp_align.core.config import UNIQUE
from rlp_align.core.io import write_jsonl
from rlp_align.judge.annotators.base import AnnotatorConfig
from rlp_align.models.generation import GenerateConfig
from rlp_align.rlp.refine import RefineConfig
from rlp_align.rlp.spg import SPGConfig
from rlp_align.train.best_of_n import BestOfNConfig
from rlp_align.train.ppo import PPOConfig
from rlp_align.train.reward import RewardConfig
from rlp_align.train.sample import SampleConfig
from rlp_align.train.sft import SFTConfig


@dataclass
class DataConfig:
    """Where instructions come from and how they are split (the paper: SFT 10k / pref 10k / unlabelled 20k)."""

    source: Literal["builtin", "files"] = "builtin"
    train_file: str | None = None  # instructions for SFT / preference / unlabelled splits (files source)
    eval_file: str | None = None  # eval instructions with reference answers (files source)
    with_constraints: bool = False  # append a machine-checkable constraint to file instructions
    preference_file: str | None = None  # a human preference file replaces the simulated D
    n_sft: int = 0
    n_preference: int = 64
    n_unlabelled: int = 32
    n_eval: int = 64
    heldout_fraction: float = 0.1  # of D, for RM accuracy
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


@dataclass
class WorldOptions:
    """Options of the world's ``pool``, ``judge`` and (a world trained from scratch) ``build_model``."""

    pool: dict = field(default_factory=dict)
    judge: dict = field(default_factory=dict)  # the instruction world's gold is `annotator` instead
    model: dict = field(default_factory=dict)


@dataclass
class WorldConfig:
    """What the stages receive: the world's name and its options (`PipelineConfig.world`, `world_options`)."""

    name: str = "instructions"
    pool: dict = field(default_factory=dict)
    judge: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)


@dataclass
class EnsembleConfig:
    """Reward-model ensembles (Coste et al. 2024): k RMs on D with different seeds; 0 disables."""

    k: int = 0
    aggregates: list[str] = field(default_factory=lambda: ["wco", "uwo"], metadata=UNIQUE)
    uwo_lambda: float = 0.5


@dataclass
class PipelineConfig:
    output_dir: str = "runs/default"
    model: str = "smollm2-135m-instruct"  # or the world's name: its own model, built from random init
    world: str = "instructions"  # the task world (rlp_align.worlds.WORLDS): built-in prompts, gold judge, clustering key
    seed: int = 0
    world_options: WorldOptions = field(default_factory=WorldOptions)
    rounds: int = 1
    refine_methods: list[str] = field(default_factory=lambda: ["uml", "spg"], metadata=UNIQUE)
    label_noise: float = 0.25  # flip rate of the simulated annotator that labels D (AlpacaFarm: 25 %)
    pair_temperature: float = 1.0  # sampling temperature of the two SFT answers labelled into D
    eval_baseline: Literal["reference", "sft"] = "sft"  # what win-rates are measured against
    oracle_labels: int | None = None  # fresh gold labels for the oracle RM; None: as many as SPG kept pairs
    policy_optimizer: Literal["ppo", "rloo"] = "ppo"  # for PPO1, every PPO2 and the ensembles (settings: ppo.*)
    data: DataConfig = field(default_factory=DataConfig)
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    spg: SPGConfig = field(default_factory=SPGConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    best_of_n: BestOfNConfig = field(default_factory=BestOfNConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


def world_config(cfg: PipelineConfig) -> WorldConfig:
    """The world as the stages receive it: ``world`` (its name) with ``world_options``, checked against the
    world's declared options (`rlp_align.worlds.world_settings`: keys, types, ranges) and typed."""
    from rlp_align.worlds import world_settings

    return WorldConfig(cfg.world, **world_settings(cfg.world, dataclasses.asdict(cfg.world_options)))


def split(items: list, sizes: list[int], seed: int) -> list[list]:
    """Disjoint seeded splits of ``items`` with the given sizes (the last may be short)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    out, start = [], 0
    for size in sizes:
        out.append([items[i] for i in order[start : start + size]])
        start += size
    return out


def prompt_key(instruction: Any) -> str:
    """What makes two instructions the same problem: their prompt (a string or chat messages)."""
    return json.dumps(instruction.prompt, sort_keys=True)


def split_by_content(items: list, sizes: list[int], seed: int) -> list[list]:
    """Seeded splits of ``items`` that share no prompt: every split but the last takes distinct prompts up to its
    size, in order (the held-out pools: eval first); the last (SFT) takes what is left, repeats of its own prompts
    included, never a prompt that another split holds. A short split means too few distinct prompts."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    out: list[list] = [[] for _ in sizes]
    owner: dict[str, int] = {}  # prompt -> the split that holds it
    last = len(sizes) - 1
    for i in order:
        key = prompt_key(items[i])
        j = owner.get(key)
        if j is None:
            j = next((k for k in range(last) if len(out[k]) < sizes[k]), last)
            owner[key] = j
        elif j != last:
            continue  # a held-out split takes each prompt once
        if len(out[j]) < sizes[j]:
            out[j].append(items[i])
    return out


def overlap_sizes(evaluation: list, training: list[list]) -> dict[str, int]:
    """How held out the eval set is: its size, its distinct prompts, and how many of its items a training pool has."""
    seen = {prompt_key(x) for pool in training for x in pool}
    keys = [prompt_key(x) for x in evaluation]
    return {"n_eval": len(keys), "eval_distinct": len(set(keys)), "eval_in_training": sum(k in seen for k in keys)}


def write_instructions(path: Path, instructions: list) -> str:
    write_jsonl(path, [{"prompt": x.prompt, "reference": x.reference, "constraints": x.constraints,
                        "meta": x.meta} for x in instructions])
    return str(path)

