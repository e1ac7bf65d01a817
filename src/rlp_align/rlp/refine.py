"""RLP step 4: retrain the reward model on policy samples (paper Eq. 1).

    L = -E_{D ∪ D̂}[ log σ(r̂(x, y_w) - r̂(x, y_l)) ]  +  λ · L_M

- ``uml``: D̂ = ∅, λ = 0.5; L_M is the multi-view loss (`rlp_align.rlp.uml.MultiViewHead`) on two views
  (x, y_a), (x, y_b) of one instruction from the policy samples P, read at the RM's final hidden state.
- ``spg``: λ = 0, D̂ = synthetic preferences made from P (`rlp_align.rlp.spg`, a file here).
- ``uml+spg``: both (never evaluated in the paper).
- ``oracle``: λ = 0, D̂ = pairs of policy samples labelled by the gold annotator (an upper bound).

Each step takes one global Bradley-Terry batch from D ∪ D̂ and one global view batch from P, and scores
both in one forward pass (`reward.train_reward_model` with an `AuxiliaryLoss`). The RM starts from the
SFT backbone (``init: sft``) or the step-2 RM (``init: previous_rm``) with the step-2 optimiser settings.
The encoder/critic of L_M are saved beside the RM as ``uml_head.safetensors``, never inside ``model/``.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoConfig

from rlp_align.core.config import build_config
from rlp_align.core.errors import UserError
from rlp_align.data.records import Preference, SampleSet
from rlp_align.data.templates import encode_pair
from rlp_align.models import load_tokenizer, resolve_model
from rlp_align.models.model_kind import check_reward_model_folder
from rlp_align.rlp.uml import BETA_SCHEDULES, METHODS, MultiViewHead, pick_views
from rlp_align.train.reward import AuxiliaryLoss, EncodedPair, RewardConfig, train_reward_model
from rlp_align.train.training import LoraConfig, OptimConfig, batch_indices

REFINE_METHODS = ("uml", "spg", "uml+spg", "oracle")


@dataclass
class RefineConfig:
    method: Literal["uml", "spg", "uml+spg", "oracle"] = "uml"
    base_model: str = "tiny"  # the SFT backbone
    previous_rm: str | None = None  # the step-2 reward model
    init: Literal["sft", "previous_rm"] = "sft"
    preference_file: str | None = None  # D
    synthetic_file: str | None = None  # D̂ (spg, uml+spg, oracle)
    samples_file: str | None = None  # P: {prompt, responses, meta} rows (uml, uml+spg)
    eval_file: str | None = None  # held-out pairs of D
    output_dir: str = "runs/refine"
    lam: float = 0.5  # λ of Eq. 1; used by uml and uml+spg only (spg/oracle: λ = 0)
    uml_method: Literal["mib", "mvi", "infomax", "contrastive"] = "mib"
    beta: float = 1.0  # the paper's D_SKL weight, reached at the end of the schedule (mib only)
    # exponential: beta_start -> beta log-linearly (Federici et al.'s trainer); linear: 0 -> beta; constant: beta.
    # Why not constant: with beta = 1 from the first step I_JSD stays at its floor -2 log 2 (issue 22).
    beta_schedule: Literal["constant", "linear", "exponential"] = "exponential"
    beta_anneal_steps: int | None = None  # steps of the rise; None: the whole refinement
    beta_start: float = 1e-3
    uml_input_norm: Literal["batch", "layer"] = "batch"  # how the view states are normalised (uml.standardise_views)
    z_dim: int = 64
    uml_batch_size: int = 8  # instructions per view batch, over all ranks
    uml_learning_rate: float | None = 1e-3  # encoder/critic LR, constant (issue 22: 3e-3 collapses a 576-wide head)
    seed: int = 0
    # How r̂ trains. Unset (None) = like the step-2 reward model: `reward:` in `rlp run`, RewardConfig's
    # defaults alone (`inherit_reward_settings`). optim and lora are per key: the keys given here win.
    optim: dict[str, Any] | None = None  # keys of training.OptimConfig
    lora: dict[str, Any] | None = None  # keys of training.LoraConfig
    max_length: int | None = None
    margin: float | None = None
    center_coef: float | None = None
    eval_fraction: float | None = None
    eval_every: int | None = None
    readout: Literal["last", "sum"] | None = None
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


# The RM-training settings of `refine` that default to the step-2 reward model's.
FROM_REWARD = ("optim", "lora", "max_length", "margin", "center_coef", "eval_fraction", "eval_every", "readout")


def inherit_reward_settings(cfg: RefineConfig, reward: RewardConfig | None = None) -> RefineConfig:
    """The refined RM trains like RM₀ unless told otherwise (paper step 4: "the same optimiser settings as
    step 2"). Returns ``cfg`` with every unset setting of `FROM_REWARD` taken from ``reward`` (RewardConfig's
    defaults when None); inside ``optim`` and ``lora`` each key given in ``cfg`` wins over ``reward``'s.

    This is the one place where two sections of a pipeline config share settings.
    """
    reward = reward or RewardConfig()
    optim = build_config(OptimConfig, {**asdict(reward.optim), **(cfg.optim or {})}, "refine.optim")
    lora = build_config(LoraConfig, {**asdict(reward.lora), **(cfg.lora or {})}, "refine.lora")
    scalars = {k: getattr(reward, k) for k in FROM_REWARD[2:] if getattr(cfg, k) is None}
    return replace(cfg, optim=asdict(optim), lora=asdict(lora), **scalars)



def usable_sample_sets(samples: list[SampleSet]) -> list[SampleSet]:
    """Sample sets with at least 2 distinct non-empty responses (the only ones that give two views)."""
    usable = [s for s in samples if len({r for r in s.responses if r and r.strip()}) >= 2]
    if len(usable) < len(samples):
        warnings.warn(f"{len(samples) - len(usable)} of {len(samples)} instructions in the policy samples have "
                      "fewer than 2 distinct non-empty responses and give no views for L_M; they are skipped",
                      RuntimeWarning, stacklevel=2)
    if len(usable) < 2:
        raise UserError(
            f"RLP-UML needs policy samples for at least 2 instructions with 2+ distinct non-empty responses each "
            f"(found {len(usable)}): the mutual-information estimate takes its negatives from other instructions. "
            "Sample more responses per instruction (n = 10 in the paper) or use method 'spg'."
        )
    return usable


def make_view_batches(
    tokenizer, sets: list[SampleSet], batch_size: int, max_length: int, seed: int
) -> Callable[[int], list[EncodedPair]]:
    """``views(step)``: the step's global view batch, a pure function of (step, seed) so resume is exact.

    Instructions are drawn like training rows (`training.batch_indices`), de-duplicated (a repeated
    instruction would be its own negative), and one random pair of distinct responses is taken from each.
    """

    def views(step: int) -> list[EncodedPair]:
        rows = list(dict.fromkeys(batch_indices(len(sets), batch_size, step, seed + 1)))
        picked = pick_views([sets[i] for i in rows], random.Random(seed * 1_000_003 + step))
        return [(encode_pair(tokenizer, p, a, max_length).input_ids, encode_pair(tokenizer, p, b, max_length).input_ids)
                for p, a, b in picked]

    return views


def refine_reward_model(
    cfg: RefineConfig,
    preferences: list[Preference],
    synthetic: list[Preference] | None = None,
    samples: list[SampleSet] | None = None,
    eval_prefs: list[Preference] | None = None,
) -> dict:
    """Train r̂ on D ∪ D̂ (+ λ·L_M on P) as ``cfg.method`` says; write ``cfg.output_dir``; return the summary."""
    if cfg.method not in REFINE_METHODS:
        raise UserError(f"unknown refinement method '{cfg.method}': choose one of {', '.join(REFINE_METHODS)}")
    if cfg.uml_method not in METHODS:
        raise UserError(f"unknown uml_method '{cfg.uml_method}': choose one of {', '.join(METHODS)}")
    uses_uml, uses_synthetic = "uml" in cfg.method, cfg.method != "uml"
    lam = cfg.lam if uses_uml else 0.0
    if lam < 0:
        raise UserError(f"lam (λ) must be >= 0, got {cfg.lam}")
    if uses_synthetic and synthetic is not None and not synthetic:
        warnings.warn(f"{cfg.method}: the synthetic set D̂ is empty (SPG filtered out every instruction), so this "
                      "refinement retrains on D alone; lower spg.gamma or spg.similarity_threshold to keep more",
                      RuntimeWarning, stacklevel=2)
    if uses_synthetic and synthetic is None:
        raise UserError(f"method '{cfg.method}' trains on D ∪ D̂: give synthetic_file (a preference file made "
                        "from the policy samples by `rlp spg` or the gold annotator)")
    if cfg.init == "previous_rm" and not cfg.previous_rm:
        raise UserError("init 'previous_rm' needs previous_rm: the folder of the step-2 reward model")
    if cfg.beta_schedule not in BETA_SCHEDULES:
        raise UserError(f"beta_schedule must be one of {', '.join(BETA_SCHEDULES)}, got '{cfg.beta_schedule}'")
    if cfg.beta_anneal_steps is not None and (cfg.beta_schedule == "constant") != (cfg.beta_anneal_steps == 0):
        raise UserError(f"beta_schedule '{cfg.beta_schedule}' with beta_anneal_steps {cfg.beta_anneal_steps}: a rising "
                        "schedule needs beta_anneal_steps > 0 (or unset: the whole refinement), 'constant' takes none")
    if cfg.init not in ("sft", "previous_rm"):
        raise UserError(f"init must be 'sft' or 'previous_rm', got '{cfg.init}'")
    if cfg.previous_rm:  # a causal LM here would restart from a zero head and score everything 0
        check_reward_model_folder(resolve_model(cfg.previous_rm, allow_pickle=cfg.allow_pickle))
    init_model = cfg.base_model if cfg.init == "sft" else cfg.previous_rm

    cfg = inherit_reward_settings(cfg)  # a no-op when the pipeline already resolved it
    rm_cfg = RewardConfig(model=init_model, output_dir=cfg.output_dir, seed=cfg.seed, max_length=cfg.max_length,
                          margin=cfg.margin, center_coef=cfg.center_coef, eval_fraction=cfg.eval_fraction,
                          eval_every=cfg.eval_every, readout=cfg.readout, optim=OptimConfig(**cfg.optim),
                          lora=LoraConfig(**cfg.lora),
                          overwrite=cfg.overwrite, allow_pickle=cfg.allow_pickle,
                          trust_remote_code=cfg.trust_remote_code)
    train = list(preferences) + (list(synthetic or []) if uses_synthetic else [])

    extra = None
    if uses_uml and lam == 0:
        warnings.warn("lam = 0: L_M is off and the refinement is plain Bradley-Terry retraining", RuntimeWarning,
                      stacklevel=2)
    elif uses_uml:
        if not samples:
            raise UserError(f"method '{cfg.method}' needs samples_file: the policy samples P ({{prompt, responses}})")
        if cfg.uml_batch_size < 2:
            raise UserError(f"uml_batch_size must be >= 2 (got {cfg.uml_batch_size}): a view batch with a single "
                            "instruction has no negatives for the mutual-information estimate")
        sets = usable_sample_sets(samples)
        tokenizer = load_tokenizer(init_model, trust_remote_code=cfg.trust_remote_code)
        hidden_size = AutoConfig.from_pretrained(resolve_model(init_model, allow_pickle=cfg.allow_pickle)).hidden_size
        with torch.random.fork_rng():  # the head's initialisation depends on the seed alone
            torch.manual_seed(cfg.seed)
            head = MultiViewHead(hidden_size, cfg.z_dim, cfg.uml_method, cfg.beta, beta_schedule=cfg.beta_schedule,
                                 beta_anneal_steps=cfg.beta_anneal_steps, beta_start=cfg.beta_start,
                                 input_norm=cfg.uml_input_norm)
        stat_keys = ("loss", "i_nce" if cfg.uml_method == "contrastive" else "i_jsd", "d_skl", "beta", "skipped")
        extra = AuxiliaryLoss(head, make_view_batches(tokenizer, sets, cfg.uml_batch_size, cfg.max_length, cfg.seed),
                              lam, "uml", stat_keys, cfg.uml_learning_rate)

    info = {"method": cfg.method, "lambda": lam, "init": cfg.init, "init_model": str(init_model),
            "preference_pairs": len(preferences), "synthetic_pairs": len(synthetic or []) if uses_synthetic else 0,
            "sample_sets": len(samples or [])}
    summary = train_reward_model(rm_cfg, train, eval_prefs, extra_loss=extra, summary_extra={"refine": info})
    warn_if_information_term_at_floor(summary.get("train") or {})
    return summary


def warn_if_information_term_at_floor(last: dict[str, float]) -> None:
    """Warn when the last logged I_JSD is within 0.05 of its floor -2 log 2: the critic never separated the
    views, so L_M acted only as an invariance penalty, not as RLP-UML (issue 22)."""
    i_jsd = last.get("uml/i_jsd")
    if i_jsd is None or last.get("uml/skipped"):
        return
    if i_jsd < -2 * math.log(2) + 0.05:
        warnings.warn(f"RLP-UML's mutual-information estimate ended at its floor (I_JSD {i_jsd:.3f}, floor "
                      f"{-2 * math.log(2):.3f}): the encoder did not learn I(z1; z2), so L_M only penalised "
                      "differences between the views. At the default head LR the critic needs ~120 steps with "
                      "uml_batch_size 8 and more with 4 (docs/decisions.md): refine longer or with larger view batches",
                      RuntimeWarning, stacklevel=2)


def uml_head_on_frozen_rm(cfg: RefineConfig, backbone: str, samples: list[SampleSet], total_steps: int
                          ) -> dict[str, float]:
    """RLP-UML's head trained alone on a frozen RM: the baseline its mutual-information term is judged against.

    Both views of an instruction contain its prompt, so even an RM that learned nothing (random init) gives a
    critic something to separate: a frozen random micro RM ends near I_JSD -0.5, far above the floor -2 log 2
    (issue 28). This trains the same encoder/critic (same seed, so the same initialisation), on the same view
    batches (`make_view_batches`), with the same beta schedule, head LR and number of optimiser steps as
    `refine_reward_model` gives RLP-UML, but the RM's weights never move. Differences from the joint run: the
    gradient norm is clipped over the head alone, and the RM runs in eval mode (no dropout). Returns the last
    step's stats (``i_jsd``, ``d_skl``, ``beta``, ``loss``), as RLP-UML's last logged ``uml/*`` values.
    """
    from rlp_align.models import load_reward_model
    from rlp_align.train.reward import RewardScorer, score_sequences
    from rlp_align.train.training import adamw

    cfg = inherit_reward_settings(cfg)
    tokenizer = load_tokenizer(backbone, trust_remote_code=cfg.trust_remote_code)
    model = load_reward_model(backbone, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    scorer = RewardScorer(model).eval().requires_grad_(False)
    device = next(model.parameters()).device
    with torch.random.fork_rng():  # the head's initialisation depends on the seed alone, as in refine_reward_model
        torch.manual_seed(cfg.seed)
        head = MultiViewHead(model.config.hidden_size, cfg.z_dim, cfg.uml_method, cfg.beta,
                             beta_schedule=cfg.beta_schedule, beta_anneal_steps=cfg.beta_anneal_steps,
                             beta_start=cfg.beta_start, input_norm=cfg.uml_input_norm).to(device)
    views = make_view_batches(tokenizer, usable_sample_sets(samples), cfg.uml_batch_size, cfg.max_length, cfg.seed)
    optim = OptimConfig(**cfg.optim)
    optimizer = adamw(list(head.parameters()), lr=cfg.uml_learning_rate or optim.learning_rate,
                      weight_decay=optim.weight_decay)
    stats: dict[str, float] = {}
    with torch.random.fork_rng():  # the encoder's samples of z: seeded, and the caller's RNG left as it was
        torch.manual_seed(cfg.seed)
        for step in range(total_steps):
            pairs = views(step)
            with torch.no_grad():
                _, hidden = score_sequences(scorer, [a for a, _ in pairs] + [b for _, b in pairs],
                                            tokenizer.pad_token_id, device)
            loss, stats = head(hidden[: len(pairs)].float(), hidden[len(pairs) :].float(), step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            (cfg.lam * loss).backward()
            if optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), optim.max_grad_norm)
            optimizer.step()
    return stats


def run_refine(cfg: RefineConfig) -> dict:
    """`rlp refine`: read D, D̂ and P and refine the reward model."""
    from rlp_align.data.readers import read_preferences, read_sample_sets

    if not cfg.preference_file:
        raise UserError("refinement needs preference_file: the human/simulated preference data D of step 2")
    preferences = read_preferences(cfg.preference_file, skip_invalid=cfg.skip_invalid)
    synthetic = None
    if cfg.synthetic_file and cfg.method != "uml":  # an empty D̂ (SPG kept nothing) is allowed, with a warning
        synthetic = read_preferences(cfg.synthetic_file, skip_invalid=cfg.skip_invalid) if Path(cfg.synthetic_file).stat().st_size else []
    samples = read_sample_sets(cfg.samples_file, skip_invalid=cfg.skip_invalid) if cfg.samples_file and "uml" in cfg.method else None
    held_out = read_preferences(cfg.eval_file, skip_invalid=cfg.skip_invalid) if cfg.eval_file else None
    return refine_reward_model(cfg, preferences, synthetic, samples, held_out)
