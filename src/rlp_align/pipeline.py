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

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlp_align.annotators.base import AnnotatorConfig
from rlp_align.best_of_n import BestOfNConfig
from rlp_align.config import config_to_dict
from rlp_align.errors import UserError
from rlp_align.generation import GenerateConfig
from rlp_align.io import check_writable, write_jsonl
from rlp_align.ppo import PPOConfig
from rlp_align.refine import RefineConfig
from rlp_align.reward import RewardConfig
from rlp_align.run_folder import folder_kind, input_digest, lock_holder
from rlp_align.sample import SampleConfig
from rlp_align.sft import SFTConfig
from rlp_align.spg import SPGConfig
from rlp_align.stages import StageCache, stage_status

RefineMethod = Literal["uml", "spg", "uml+spg", "oracle"]


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


@dataclass
class EnsembleConfig:
    """Reward-model ensembles (Coste et al. 2024): k RMs on D with different seeds; 0 disables."""

    k: int = 0
    aggregates: list[str] = field(default_factory=lambda: ["wco", "uwo"])
    uwo_lambda: float = 0.5


@dataclass
class PipelineConfig:
    output_dir: str = "runs/default"
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    rounds: int = 1
    refine_methods: list[str] = field(default_factory=lambda: ["uml", "spg"])
    label_noise: float = 0.25  # flip rate of the simulated annotator that labels D (AlpacaFarm: 25 %)
    pair_temperature: float = 1.0  # sampling temperature of the two SFT answers labelled into D
    eval_baseline: Literal["reference", "sft"] = "sft"  # what win-rates are measured against
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


# Knobs that change how a stage runs, not what it computes (resume is exact): left out of the stage keys, so
# keeping checkpoints or saving more often does not rerun finished stages.
NOT_IN_STAGE_KEYS = ("output_dir", "overwrite", "save_every", "keep_checkpoint")


def _slice(section: Any) -> dict[str, Any]:
    return {k: v for k, v in config_to_dict(section).items() if k not in NOT_IN_STAGE_KEYS}


def pools_key(cfg: PipelineConfig) -> dict[str, Any]:
    """The first stage's key, on which every other stage depends: the data settings and the data files'
    contents (an edited file reruns every stage, as a changed knob would)."""
    files = {k: input_digest(Path(v)) for k in ("train_file", "eval_file", "preference_file")
             if (v := getattr(cfg.data, k)) and Path(v).is_file()}
    return {"data": _slice(cfg.data), "seed": cfg.seed, **({"file_digests": files} if files else {})}


def _validate(cfg: PipelineConfig) -> None:
    bad = [m for m in cfg.refine_methods if m not in ("uml", "spg", "uml+spg", "oracle")]
    if bad:
        raise UserError(f"unknown refine method(s) {bad}: choose from uml, spg, uml+spg, oracle")
    if cfg.rounds < 1:
        raise UserError("rounds must be >= 1 (1 reproduces the paper)")
    if not 0 <= cfg.label_noise <= 0.5:
        raise UserError(f"label_noise is a flip probability in [0, 0.5], got {cfg.label_noise}")
    if cfg.data.source == "files" and not (cfg.data.train_file and cfg.data.eval_file):
        raise UserError("data.source 'files' needs data.train_file and data.eval_file")
    if cfg.eval_baseline == "reference" and cfg.data.source == "builtin":
        raise UserError("the built-in instruction pool has no reference answers: set eval_baseline: sft")
    if "oracle" in cfg.refine_methods and "spg" not in cfg.refine_methods and "uml+spg" not in cfg.refine_methods:
        raise UserError("refine 'oracle' labels as many pairs as SPG produced: include 'spg' in refine_methods")


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run (or resume) every stage and write the report; returns the evaluation summary."""
    from rlp_align import stages_impl as S
    from rlp_align.report import write_report

    _validate(cfg)
    run_dir = Path(cfg.output_dir)
    check_writable(run_dir, need_bytes=2 * 2**30 if cfg.model != "tiny" else 0)
    cache = StageCache(run_dir)
    print(f"rlp run: {run_dir} (model {cfg.model}, refine {cfg.refine_methods}, rounds {cfg.rounds})")

    pools = cache.run("00_instructions", pools_key(cfg), lambda d: S.build_pools(cfg, d))
    sft = pools
    if cfg.data.n_sft > 0:
        sft = cache.run("01_sft", {"sft": _slice(cfg.sft), "model": cfg.model, "pools": pools["hash"]},
                        lambda d: S.train_sft(cfg, pools, d))
    sft_model = sft.get("model", cfg.model)
    base = {"sft": sft["hash"], "seed": cfg.seed}

    prefs = cache.run("02_preferences", {**base, "annotator": _slice(cfg.annotator), "noise": cfg.label_noise,
                                         "T": cfg.pair_temperature, "gen": _slice(cfg.generate)},
                      lambda d: S.collect_preferences(cfg, sft_model, pools, d))
    rm0 = cache.run("03_rm0", {**base, "reward": _slice(cfg.reward), "prefs": prefs["hash"]},
                    lambda d: S.train_rm(cfg, sft_model, prefs, d, seed=cfg.seed))
    ppo_key = {**base, "ppo": _slice(cfg.ppo), "annotator": _slice(cfg.annotator), "pools": pools["hash"]}
    ppo1 = cache.run("04_ppo1", {**ppo_key, "rm": rm0["hash"]},
                     lambda d: S.train_ppo(cfg, sft_model, [rm0["model"]], pools, d))

    policies = {"SFT": sft_model, "PPO": ppo1["model"]}
    rms = {"RM0": rm0["model"]}
    # What each variant costs beyond SFT + D + RM₀: its own stages (wall time) and new labels.
    costs: dict[str, dict] = {"PPO": {"new_labels": 0, "stages": [ppo1["stage"]]}}
    previous = {m: (ppo1, rm0) for m in cfg.refine_methods}  # per variant: (policy stage, RM stage)
    for rnd in range(1, cfg.rounds + 1):
        tag = "" if cfg.rounds == 1 else f"_r{rnd}"
        for method in cfg.refine_methods:
            src_policy, src_rm = previous[method]
            samples = cache.run(f"05_samples{tag}_{src_policy['hash'][:6]}", {"policy": src_policy["hash"],
                                "sample": _slice(cfg.sample), "pools": pools["hash"]},
                                lambda d, p=src_policy: S.sample_policy(cfg, p["model"], pools, d))
            synthetic = None
            if method in ("spg", "uml+spg", "oracle"):
                synthetic = cache.run(f"06_spg{tag}_{samples['hash'][:6]}", {"samples": samples["hash"],
                                      "rm": src_rm["hash"], "spg": _slice(cfg.spg)},
                                      lambda d, s=samples, r=src_rm: S.synthesize(cfg, s, r["model"], d))
            if method == "oracle":
                synthetic = cache.run(f"06_oracle{tag}", {"samples": samples["hash"], "spg": synthetic["hash"],
                                      "annotator": _slice(cfg.annotator), "noise": cfg.label_noise,
                                      "pools": pools["hash"]},
                                      lambda d, s=samples, n=synthetic["pairs"]: S.oracle_labels(cfg, s, n, d, pools))
            name = method.replace("+", "_")
            refined = cache.run(f"07_refine_{name}{tag}", {"refine": _slice(cfg.refine), "reward": _slice(cfg.reward),
                                "prefs": prefs["hash"], "samples": samples["hash"], "rm": src_rm["hash"],
                                "synthetic": synthetic and synthetic["hash"], "method": method},
                                lambda d, m=method, s=samples, y=synthetic, r=src_rm:
                                S.refine_rm(cfg, m, sft_model, r, prefs, s, y, d))
            ppo2 = cache.run(f"08_ppo2_{name}{tag}", {**ppo_key, "rm": refined["hash"]},
                             lambda d, r=refined: S.train_ppo(cfg, sft_model, [r["model"]], pools, d))
            previous[method] = (ppo2, refined)
            label = {"uml": "RLP-UML", "spg": "RLP-SPG", "uml+spg": "RLP-UML+SPG", "oracle": "Oracle"}[method]
            label += "" if cfg.rounds == 1 else f" (round {rnd})"
            policies[label], rms[label] = ppo2["model"], refined["model"]
            own = [samples["stage"], *([synthetic["stage"]] if synthetic else []), refined["stage"], ppo2["stage"]]
            costs[label] = {"new_labels": synthetic["pairs"] if method == "oracle" else 0, "stages": own}

    if cfg.ensemble.k > 0:
        members = [cache.run(f"09_ens_rm{i}", {**base, "reward": _slice(cfg.reward), "prefs": prefs["hash"], "i": i},
                             lambda d, i=i: S.train_rm(cfg, sft_model, prefs, d, seed=cfg.seed + 1000 * (i + 1)))
                   for i in range(cfg.ensemble.k)]
        for agg in cfg.ensemble.aggregates:
            stage = cache.run(f"10_ppo_ens_{agg}", {**ppo_key, "members": [m["hash"] for m in members], "agg": agg,
                                                    "uwo_lambda": cfg.ensemble.uwo_lambda},
                              lambda d, a=agg: S.train_ppo(cfg, sft_model, [m["model"] for m in members], pools, d,
                                                           aggregate=a))
            policies[f"Ensemble-{agg.upper()}"] = stage["model"]
            costs[f"Ensemble-{agg.upper()}"] = {"new_labels": 0, "reward_models_trained": cfg.ensemble.k,
                                                 "stages": [m["stage"] for m in members] + [stage["stage"]]}

    bon = cache.run("11_best_of_n", {**base, "bon": _slice(cfg.best_of_n), "rm": rm0["hash"], "pools": pools["hash"],
                                     "gen": _slice(cfg.generate)},
                    lambda d: S.best_of_n(cfg, sft_model, rm0["model"], pools, d))
    answers = {"Best-of-n": bon["answers"]}
    costs["Best-of-n"] = {"new_labels": 0, "stages": [bon["stage"]]}
    for label, policy in policies.items():
        stage = cache.run(f"12_answers_{_slug(label)}", {"policy": policy, "gen": _slice(cfg.generate),
                                                          "pools": pools["hash"], "stamp": _stamp(cache, policy)},
                          lambda d, p=policy: S.answer_eval(cfg, p, pools, d))
        answers[label] = stage["answers"]
    on_policy = cache.run("13_onpolicy_pairs", {"ppo1": ppo1["hash"], "annotator": _slice(cfg.annotator),
                                                "sample": _slice(cfg.sample)},
                          lambda d: S.on_policy_pairs(cfg, ppo1["model"], pools, d))
    evaluation = cache.run("14_evaluate", {"answers": {k: _stamp(cache, v) for k, v in answers.items()},
                                           "rms": {k: _stamp(cache, v) for k, v in rms.items()},
                                           "annotator": _slice(cfg.annotator), "baseline": cfg.eval_baseline,
                                           "pairs": on_policy["hash"]},
                           lambda d: S.evaluate(cfg, answers, rms, on_policy, d))
    report = write_report(cfg, cache, evaluation, costs)
    print(f"report: {report}")
    return {"report": str(report), "run_dir": str(run_dir), "win_rates": evaluation.get("win_rates")}


def _slug(label: str) -> str:
    return "".join(c.lower() if c.isalnum() else "_" for c in label).strip("_")


def _stamp(cache: StageCache, path: str) -> str:
    """A path's identity for cache keys: the hash of the stage that wrote it (or the path itself)."""
    p = Path(path)
    for parent in (p, *p.parents):
        manifest = cache.read_manifest(parent.name) if parent.parent == cache.run_dir else None
        if manifest:
            return manifest["hash"]
    return str(path)


def split(items: list, sizes: list[int], seed: int) -> list[list]:
    """Disjoint seeded splits of ``items`` with the given sizes (the last may be short)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    out, start = [], 0
    for size in sizes:
        out.append([items[i] for i in order[start : start + size]])
        start += size
    return out


def write_instructions(path: Path, instructions: list) -> str:
    write_jsonl(path, [{"prompt": x.prompt, "reference": x.reference, "constraints": x.constraints,
                        "meta": x.meta} for x in instructions])
    return str(path)

