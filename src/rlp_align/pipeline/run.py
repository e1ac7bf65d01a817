"""``rlp run``: Algorithm 1 of the RLP paper end to end, with its baselines and yardsticks.

    0 SFT (optional)       4 policy samples P from PPO₁ (n = 10, T = 1.0)
    1 preference data D    5 RM refinement: uml | spg | uml+spg | oracle
    2 RM₀ on D             6 PPO₂ from SFT against each refined RM
    3 PPO₁ from SFT        7 best-of-n from SFT with RM₀ (+ RM ensembles, PPO against them)
                           8 evaluation under the gold judge, 9 the report

``rounds: R`` repeats 4–6, round k sampling each variant's round k−1 policy (R = 1 is the paper).
Every stage runs through the `StageCache`: rerunning the same command skips finished stages and a
killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rlp_align.core.errors import UserError
from rlp_align.core.io import check_writable
from rlp_align.core.run_folder import folder_kind, lock_holder
from rlp_align.pipeline import stages_impl as S
from rlp_align.pipeline.pipeline_config import (
    DataConfig,
    EnsembleConfig,
    PipelineConfig,
    split,
    world_config,
    write_instructions,
)
from rlp_align.pipeline.stages import NOT_IN_STAGE_KEYS, StageCache, stage_status
from rlp_align.rlp.refine import RefineConfig, inherit_reward_settings
from rlp_align.train.ppo import PPOConfig, check_optim
from rlp_align.worlds import load_world

__all__ = ["NOT_IN_STAGE_KEYS", "DataConfig", "EnsembleConfig", "PipelineConfig", "run_pipeline", "split",
           "write_instructions"]


def preset_path(name: str) -> str:
    """``configs/<name>.yaml`` beside the package source, or in the current folder."""
    for base in (Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"):
        if (base / f"{name}.yaml").exists():
            return str(base / f"{name}.yaml")
    return f"configs/{name}.yaml"


def format_status(run_dir: str) -> str:
    """Each stage's state. A stage whose manifest says "running" while no live process holds the run lock
    was interrupted or crashed."""
    rows = stage_status(run_dir)
    if not rows and folder_kind(Path(run_dir)) != "run":
        raise UserError(f"{run_dir}: not a run folder (it holds no stage manifests); `rlp run --output_dir "
                        f"{run_dir}` makes one")
    holder = lock_holder(run_dir)
    crashed = holder is None and any(r["status"] == "running" for r in rows)
    report = Path(run_dir) / "report.md"
    state = (f"running (PID {holder})" if holder else "interrupted/crashed: rerun the same command to resume"
             if crashed else "finished" if report.exists() else "stopped before the report: rerun to continue")
    lines = [f"{run_dir}: {state}"]
    for r in rows:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}s"
        status = "crashed" if r["status"] == "running" and crashed else r["status"]
        note = "  interrupted/crashed, rerun to resume" if status == "crashed" else ""
        lines.append(f"  {r['stage']:<28} {status:<8} {seconds}{note}")
    lines.append(f"  report: {report if report.exists() else 'not yet written'}")
    return "\n".join(lines)


# Fields of a section that the pipeline sets itself (paths between stages, the run's seed, the refine method):
# a value given for one in `rlp run` would be silently replaced, so it is refused instead.
SET_BY_PIPELINE = {
    "sft": ("model", "train_file", "eval_file", "output_dir", "seed"),
    "reward": ("model", "train_file", "eval_file", "output_dir", "seed"),
    "ppo": ("policy", "reward_model", "output_dir", "reference", "prompts_file", "reward_ensemble",
            "ensemble_aggregate", "uwo_lambda", "seed", "estimator"),
    "sample": ("policy", "prompts_file", "output_file", "seed"),
    "spg": ("samples_file", "reward_model", "output_file", "seed", "world"),
    "refine": ("method", "base_model", "previous_rm", "preference_file", "synthetic_file", "samples_file",
               "eval_file", "output_dir", "seed"),
    "best_of_n": ("policy", "reward_model", "instructions_file", "output_file", "seed"),
    "generate": ("policy", "instructions_file", "output_file", "seed"),
}
INSTEAD = {"seed": "the top-level seed", "world": "world", "method": "refine_methods", "uwo_lambda": "ensemble.uwo_lambda",
           "ensemble_aggregate": "ensemble.aggregates", "reward_ensemble": "ensemble.k", "output_dir": "output_dir",
           "estimator": "policy_optimizer"}


def ppo_section(cfg: PipelineConfig) -> PPOConfig:
    """The settings of every policy-optimisation stage (PPO1, PPO2, the ensembles'): `ppo`, with the estimator
    that `policy_optimizer` names (RLOO keeps PPO's settings and drops the critic)."""
    return dataclasses.replace(cfg.ppo, estimator="rloo" if cfg.policy_optimizer == "rloo" else "gae")


def refine_section(cfg: PipelineConfig) -> RefineConfig:
    """The refine stage's settings: `refine`, with the RM-training settings it leaves unset taken from
    `reward` (the refined RM trains like RM₀ unless told otherwise; `refine.inherit_reward_settings`)."""
    return inherit_reward_settings(cfg.refine, cfg.reward)


def _validate(cfg: PipelineConfig) -> None:
    for section, names in SET_BY_PIPELINE.items():
        given, default = getattr(cfg, section), type(getattr(cfg, section))()
        for name in names:
            if getattr(given, name) != getattr(default, name):
                raise UserError(f"{section}.{name} is set by the pipeline in `rlp run` (from "
                                f"{INSTEAD.get(name, 'the stage upstream')}): remove it from the config")
    check_optim(cfg.ppo)
    refine_section(cfg)  # refuses unknown or ill-typed refine.optim / refine.lora keys before any stage runs
    bad = [m for m in cfg.refine_methods if m not in LABELS]
    if bad:
        raise UserError(f"unknown refine method(s) {bad}: choose from {', '.join(LABELS)}")
    module = load_world(cfg.world)  # an unknown world name stops here, before any stage runs
    world_config(cfg)  # and so do its options: unknown keys, types, ranges (`worlds.world_settings`)
    if cfg.model == cfg.world and not hasattr(module, "build_model"):
        raise UserError(f"model {cfg.model!r}: the world {cfg.world!r} builds no model of its own; give a model")
    if cfg.model == cfg.world and cfg.data.n_sft < 1:
        raise UserError(f"a {cfg.world!r} model built from random init needs SFT: set data.n_sft >= 1")
    if cfg.rounds < 1:
        raise UserError("rounds must be >= 1 (1 reproduces the paper)")
    if not 0 <= cfg.label_noise <= 0.5:
        raise UserError(f"label_noise is a flip probability in [0, 0.5], got {cfg.label_noise}")
    if cfg.data.source == "files" and not (cfg.data.train_file and cfg.data.eval_file):
        raise UserError("data.source 'files' needs data.train_file and data.eval_file")
    if cfg.eval_baseline == "reference" and cfg.data.source == "builtin":
        raise UserError("the built-in instruction pool has no reference answers: set eval_baseline: sft")
    if cfg.oracle_labels is not None and cfg.oracle_labels < 1:
        raise UserError(f"oracle_labels must be >= 1 (or null: as many as SPG kept), got {cfg.oracle_labels}")
    if ("oracle" in cfg.refine_methods and cfg.oracle_labels is None and "spg" not in cfg.refine_methods
            and "uml+spg" not in cfg.refine_methods):
        raise UserError("refine 'oracle' without oracle_labels labels as many pairs as SPG produced: include 'spg' "
                        "in refine_methods, or set oracle_labels")


# refine method -> the report's label for its PPO₂ policy and refined RM
LABELS = {"uml": "RLP-UML", "spg": "RLP-SPG", "uml+spg": "RLP-UML+SPG", "west_of_n": "West-of-N", "oracle": "Oracle"}


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run (or resume) every stage and write the report; returns the evaluation summary.

    Each stage function receives only its own section(s), the values it borrows from other sections as
    named arguments, and its upstream stages' outputs; `StageCache.stage` hashes exactly these."""
    from rlp_align.pipeline.report import write_report

    _validate(cfg)
    run_dir = Path(cfg.output_dir)
    check_writable(run_dir, need_bytes=2 * 2**30 if cfg.model not in ("tiny", cfg.world) else 0)
    cache = StageCache(run_dir)
    print(f"rlp run: {run_dir} (model {cfg.model}, refine {cfg.refine_methods}, rounds {cfg.rounds})")
    seed, gen = cfg.seed, cfg.generate
    world = world_config(cfg)

    pools = cache.stage("00_instructions", S.build_pools, data=cfg.data, world=world, seed=seed)
    sft_model = cfg.model
    if cfg.model == cfg.world:  # the world's own policy, from random initialisation
        sft_model = cache.stage("00_model", S.build_model, world=world, seed=seed)["model"]
    if cfg.data.n_sft > 0:
        sft_model = cache.stage("01_sft", S.train_sft, sft=cfg.sft, model=sft_model, pools=pools, seed=seed)["model"]

    prefs = cache.stage("02_preferences", S.collect_preferences, annotator=cfg.annotator, world=world,
                        sft_model=sft_model,
                        pools=pools, preference_file=cfg.data.preference_file, skip_invalid=cfg.data.skip_invalid,
                        heldout_fraction=cfg.data.heldout_fraction, label_noise=cfg.label_noise,
                        pair_temperature=cfg.pair_temperature, max_new_tokens=gen.max_new_tokens,
                        batch_size=gen.batch_size, seed=seed)
    rm0 = cache.stage("03_rm0", S.train_rm, reward=cfg.reward, sft_model=sft_model, prefs=prefs, seed=seed)
    ppo_args = {"ppo": ppo_section(cfg), "annotator": cfg.annotator, "world": world, "sft_model": sft_model,
                "pools": pools, "seed": seed}
    ppo1 = cache.stage("04_ppo1", S.train_ppo, **ppo_args, reward_models=[rm0["model"]])

    policies = {"SFT": sft_model, "PPO": ppo1["model"]}
    rms = {"RM0": rm0["model"]}
    # What each variant costs beyond SFT + D + RM₀: its own stages (wall time) and new labels.
    costs: dict[str, dict] = {"PPO": {"new_labels": 0, "stages": [ppo1["stage"]]}}
    refine = refine_section(cfg)
    previous = {m: (ppo1, rm0) for m in cfg.refine_methods}  # per variant: (policy stage, RM stage)
    for rnd in range(1, cfg.rounds + 1):
        tag = "" if cfg.rounds == 1 else f"_r{rnd}"
        for method in cfg.refine_methods:
            src_policy, src_rm = previous[method]
            samples = cache.stage(f"05_samples{tag}_{src_policy['hash'][:6]}", S.sample_policy, sample=cfg.sample,
                                  policy=src_policy["model"], pools=pools, seed=seed)
            synthetic = None
            spg = dataclasses.replace(cfg.spg, world=cfg.world)
            if method in ("spg", "uml+spg") or (method == "oracle" and cfg.oracle_labels is None):
                synthetic = cache.stage(f"06_spg{tag}_{samples['hash'][:6]}", S.synthesize, spg=spg,
                                        samples=samples, rm=src_rm["model"], seed=seed)
            if method == "west_of_n":  # the RM's best against its worst sample (Pace et al. 2024), no clustering
                synthetic = cache.stage(f"06_west_of_n{tag}_{samples['hash'][:6]}", S.synthesize,
                                        spg=dataclasses.replace(spg, selection="west_of_n"), samples=samples,
                                        rm=src_rm["model"], seed=seed)
            if method == "oracle":  # a fixed label budget, or as many labels as SPG kept pairs
                synthetic = cache.stage(f"06_oracle{tag}", S.oracle_labels, annotator=cfg.annotator, world=world,
                                        samples=samples,
                                        n_pairs=cfg.oracle_labels or synthetic["pairs"], label_noise=cfg.label_noise,
                                        seed=seed, pools=pools)
            name = method.replace("+", "_")
            refined = cache.stage(f"07_refine_{name}{tag}", S.refine_rm, refine=refine, method=method,
                                  sft_model=sft_model, rm=src_rm, prefs=prefs, samples=samples, synthetic=synthetic,
                                  seed=seed)
            ppo2 = cache.stage(f"08_ppo2_{name}{tag}", S.train_ppo, **ppo_args, reward_models=[refined["model"]])
            previous[method] = (ppo2, refined)
            label = LABELS[method]
            label += "" if cfg.rounds == 1 else f" (round {rnd})"
            policies[label], rms[label] = ppo2["model"], refined["model"]
            own = [samples["stage"], *([synthetic["stage"]] if synthetic else []), refined["stage"], ppo2["stage"]]
            costs[label] = {"new_labels": synthetic["pairs"] if method == "oracle" else 0, "stages": own}

    if cfg.ensemble.k > 0:
        members = [cache.stage(f"09_ens_rm{i}", S.train_rm, reward=cfg.reward, sft_model=sft_model, prefs=prefs,
                               seed=seed + 1000 * (i + 1))
                   for i in range(cfg.ensemble.k)]
        for agg in cfg.ensemble.aggregates:
            stage = cache.stage(f"10_ppo_ens_{agg}", S.train_ppo, **ppo_args,
                                reward_models=[m["model"] for m in members], aggregate=agg,
                                uwo_lambda=cfg.ensemble.uwo_lambda)
            policies[f"Ensemble-{agg.upper()}"] = stage["model"]
            costs[f"Ensemble-{agg.upper()}"] = {"new_labels": 0, "reward_models_trained": cfg.ensemble.k,
                                                 "stages": [m["stage"] for m in members] + [stage["stage"]]}

    bon = cache.stage("11_best_of_n", S.best_of_n, best_of_n=cfg.best_of_n, sft_model=sft_model, rm=rm0["model"],
                      pools=pools, seed=seed)
    answers = {"Best-of-n": bon["answers"]}
    costs["Best-of-n"] = {"new_labels": 0, "stages": [bon["stage"]]}
    for label, policy in policies.items():
        stage = cache.stage(f"12_answers_{_slug(label)}", S.answer_eval, generate=gen, policy=policy, pools=pools,
                            seed=seed)
        answers[label] = stage["answers"]
    # on-policy pairs are sampled like step 4's policy samples, batched like generation
    on_policy = cache.stage("13_onpolicy_pairs", S.on_policy_pairs, annotator=cfg.annotator, world=world,
                            policy=ppo1["model"],
                            pools=pools, temperature=cfg.sample.temperature, max_new_tokens=cfg.sample.max_new_tokens,
                            batch_size=gen.batch_size, seed=seed)
    evaluation = cache.stage("14_evaluate", S.evaluate, annotator=cfg.annotator, world=world,
                             answers=answers, rms=rms,
                             on_policy=on_policy, eval_baseline=cfg.eval_baseline,
                             rm_batch_size=cfg.reward.optim.eval_batch_size, rm_max_length=cfg.reward.max_length,
                             seed=seed, heldout=prefs["heldout"])
    report = write_report(cfg, cache, evaluation, costs)
    print(f"report: {report}")
    return {"report": str(report), "run_dir": str(run_dir), "win_rates": evaluation.get("win_rates")}


def _slug(label: str) -> str:
    return "".join(c.lower() if c.isalnum() else "_" for c in label).strip("_")
