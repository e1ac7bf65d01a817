"""The valid range of every numeric setting, checked when a config is built (before any work).

One table, keyed by field name: a name means the same thing in every config that has it (``batch_size``,
``learning_rate``, ``top_p``), so one entry covers SFT, reward, PPO, refine and the pipeline's sections
alike, wherever the field lives. Where one name means different things, a ``"ClassName.field"`` entry
overrides the plain one (``RefineConfig.lam`` is the weight of Eq. 1, ``PPOConfig.lam`` is GAE's lambda).

A field whose whole domain is valid says so with ``ANY`` (or ``ANY_FINITE`` for floats), so that a
numeric field missing from this table is a mistake `tests/test_config_ranges.py` catches. NaN and
infinities are refused for every float unless its range sets ``nonfinite=True``. ``None`` (an optional
field left unset) is never range-checked.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from rlp_align.core.errors import UserError


@dataclass(frozen=True)
class Range:
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False  # lo itself is excluded
    hi_open: bool = False
    nonfinite: bool = False  # NaN / inf allowed
    why: str = ""  # shown in the message: what the setting is

    def contains(self, value: float) -> bool:
        if math.isnan(value) or math.isinf(value):
            return self.nonfinite
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self) -> str:
        if self.lo == -math.inf and self.hi == math.inf:
            return "any finite number"
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.lo == -math.inf:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


ANY = Range()  # every finite value is meaningful (e.g. a score, a penalty)
POSITIVE = Range(0, lo_open=True)
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, hi_open=True)  # a share held out: 1 would leave nothing to train on

RANGES: dict[str, Range] = {
    # optimisation (SFT, reward, refine, PPO)
    "learning_rate": Range(0, lo_open=True, why="the optimiser's peak learning rate"),
    "value_learning_rate": Range(0, lo_open=True),
    "uml_learning_rate": Range(0, lo_open=True),
    "epochs": Range(1, why="passes over the training data"),
    "max_steps": Range(1, why="optimiser steps; unset: from epochs"),
    "steps": Range(1, why="PPO steps"),
    "ppo_epochs": Range(1, why="PPO passes over each rollout batch"),
    "batch_size": AT_LEAST_1,
    "eval_batch_size": AT_LEAST_1,
    "reward_batch_size": AT_LEAST_1,
    "uml_batch_size": AT_LEAST_1,
    "step_batch_size": AT_LEAST_1,
    "micro_batch_size": AT_LEAST_1,
    "rollout_batch_size": AT_LEAST_1,
    "rollout_chunk_size": AT_LEAST_1,
    "gradient_accumulation_steps": AT_LEAST_1,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": Range(why="<= 0 turns clipping off"),
    "warmup_steps": NON_NEGATIVE,
    "logging_every": Range(1, why="log every n steps"),
    "save_every": Range(0, why="checkpoint every n steps; 0: never"),
    "eval_every": Range(0, why="evaluate every n steps; 0: at the end only"),
    "eval_fraction": FRACTION,
    "seed": Range(0, 2**32 - 1, why="numpy takes seeds in [0, 2^32 - 1]"),
    # LoRA (the `lora:` section)
    "LoraConfig.r": Range(1, why="the adapters' rank"),
    "LoraConfig.alpha": POSITIVE,
    "LoraConfig.dropout": Range(0, 1, hi_open=True),
    # sequence lengths and generation
    "max_length": AT_LEAST_1,
    "max_prompt_length": AT_LEAST_1,
    "max_new_tokens": AT_LEAST_1,
    "nli_max_length": AT_LEAST_1,
    "temperature": Range(0, why="0 is greedy / argmax"),
    "pair_temperature": Range(0, lo_open=True, why="the two SFT answers labelled into D must differ"),
    "top_p": Range(0, 1, lo_open=True, why="the nucleus' probability mass"),
    "n": AT_LEAST_1,
    "limit": AT_LEAST_1,
    # reward-model loss
    "margin": NON_NEGATIVE,
    "center_coef": NON_NEGATIVE,
    # PPO
    "clip_range": POSITIVE,
    "value_clip_range": POSITIVE,
    "vf_coef": NON_NEGATIVE,
    "gamma": Range(0, 1, why="a discount factor / a confidence threshold"),
    "lam": Range(0, 1, why="GAE's lambda"),
    "kl_coef": NON_NEGATIVE,
    "kl_target": POSITIVE,
    "kl_horizon": AT_LEAST_1,
    "truncation_penalty": ANY,
    "missing_eos_penalty": Range(0, why="subtracted from the reward of a response without EOS"),
    "uwo_lambda": NON_NEGATIVE,
    "rloo_k": Range(2, why="samples per prompt; the leave-one-out baseline needs at least 2"),
    # RLP: UML and SPG
    "beta": NON_NEGATIVE,
    "beta_anneal_steps": Range(0, why="steps over which beta rises; 0 with beta_schedule constant"),
    "beta_start": Range(0, lo_open=True, why="the exponential beta schedule's first value"),
    "z_dim": AT_LEAST_1,
    "similarity_threshold": Range(-1, 1, why="a cosine similarity"),
    # annotators and evaluation
    "noise": Range(0, 0.5, why="a label-flip probability"),
    "label_noise": Range(0, 0.5, why="a label-flip probability"),
    "pairs_per_prompt": AT_LEAST_1,
    "n_boot": Range(100, why="bootstrap resamples: fewer make a 95 % percentile interval from its 2 or 3 most "
                    "extreme draws, which can exclude the mean itself"),
    "max_workers": AT_LEAST_1,
    "timeout_s": POSITIVE,
    "max_retries": NON_NEGATIVE,
    # the pipeline
    "rounds": AT_LEAST_1,
    "n_sft": Range(0, why="0: no SFT stage"),
    "n_preference": Range(2, why="pairs of D; one is held out for RM accuracy, so at least 2"),
    "n_unlabelled": AT_LEAST_1,
    "n_eval": AT_LEAST_1,
    "heldout_fraction": FRACTION,
    "k": Range(0, why="ensemble members; 0: no ensemble"),
    "oracle_labels": Range(1, why="fresh gold labels; unset: as many as SPG kept"),
    # the micro world's options (`world_options`, rlp_align.worlds.micro)
    "MicroPoolConfig.digits": Range(1, 16, why="operand length; the prompt and the answer must fit the micro "
                                    "model's 64 positions"),
    "MicroPoolConfig.demo_accuracy": Range(0, 1, why="the probability that a demonstration is correct"),
    "MicroPoolConfig.pad_rate": Range(0, 1, why="the probability that a chosen demonstration gets filler"),
    "MicroPoolConfig.filler": Range(0, 16, why="filler characters opening a padded demonstration"),
    "MicroPoolConfig.trailing": Range(0, 16, why="filler characters closing a padded demonstration"),
    "MicroPoolConfig.hard_error": Range(0, 1, why="the carry-drop probability on problems with 2+ carries (majority)"),
    "MicroJudgeConfig.filler_penalty": ANY,
    "MicroModelConfig.hidden_size": Range(4, why="the micro model's width, a multiple of 4"),
    "MicroModelConfig.layers": Range(1, 64, why="the micro model's transformer layers"),
    "MicroModelConfig.pretrain_steps": Range(0, why="steps of the base's pretraining; 0: a random-init policy"),
    "MicroModelConfig.pretrain_learning_rate": Range(0, lo_open=True, why="the base's pretraining learning rate"),
    "MicroModelConfig.base_seed": NON_NEGATIVE,
    # one name, another meaning
    "RefineConfig.lam": Range(0, why="the weight of L_M in Eq. 1"),
    "PPOConfig.temperature": Range(0, lo_open=True, why="PPO needs sampling log-probabilities"),
}


INT_MAX = 2**31 - 1  # no count, size or seed is larger; a bigger int overflows numpy and torch indices


def range_for(cls: type, name: str) -> Range | None:
    return RANGES.get(f"{cls.__name__}.{name}", RANGES.get(name))


def numeric_kind(tp: Any) -> type | None:
    """``int`` or ``float`` for a numeric field type (also ``X | None`` and ``list[X]``), else None."""
    if tp in (int, float):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list or len(args) == 1 and typing.get_origin(tp) is not typing.Literal:
        return numeric_kind(args[0]) if len(args) == 1 else None
    return None


def check_ranges(cfg: Any, where: str = "") -> None:
    """Raise `UserError` naming the key, its value and the valid range for the first value out of range."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if numeric_kind(hints[f.name]) is None:
            continue
        rng = range_for(type(cfg), f.name)
        value = getattr(cfg, f.name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if rng is None or v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            key = f"{where}.{f.name}" if where else f.name
            if isinstance(v, int) and abs(v) > INT_MAX:
                raise UserError(f"{key} = {v} is too large: {key} must be at most {INT_MAX} in size")
            if not rng.contains(v):
                problem = "is not a finite number" if math.isnan(v) or math.isinf(v) else "is out of range"
                why = f" ({rng.why})" if rng.why else ""
                raise UserError(f"{key} = {v!r} {problem}: {key} must be {rng.describe()}{why}")
