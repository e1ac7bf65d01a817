"""The study: positive controls and every label-free method against PPO1, paired, over seeds (issue 21).

    .venv/bin/python benchmarks/quality.py --world micro                          # 5 seeds, resumable
    .venv/bin/python benchmarks/quality.py --world micro --max_seeds_per_call 1   # one more seed per call
    .venv/bin/python benchmarks/quality.py --world smollm2 --seeds 0              # the real-model world
    .venv/bin/python benchmarks/quality.py --world micro --variant majority      # the pad: majority world
    .venv/bin/python benchmarks/quality.py --world micro --smoke                  # tiny sizes, temp dir (CI)

Each seed runs `rlp run` (`rlp_align.pipeline.run_pipeline`) in <work_dir>/seed<k>, so a killed or partial seed
resumes from its stage cache, with refine methods uml, spg, uml+spg, west_of_n and oracle, a 3-member RM
ensemble (mean, WCO, UWO) and best-of-n. Then, per seed and cached beside the run: the evaluation points along
every PPO run (matched KL, over-optimisation), best-of-n from SFT for n = 1 ... 64 against its plug-in KL,
P(majority of 8 SFT samples correct) against P(one sample correct), the Table-5 label accuracy of each
synthetic-pair selection on PPO1's samples, RLP-UML's final I_JSD, and the ceilings and every RM's on-policy
accuracy of `quality_ceilings.py` (gold PPO, RM capacity, UML baseline; issue 28). `quality_aggregate.py` pools the seeds
(per-seed bootstrap CIs: "these runs differ"; pooled t-intervals over seeds: the method) and draws the plots.
Writes benchmarks/results/quality-<world>[-majority].json and its .png files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, ROOT, git_commit, machine_info, now, write_json  # noqa: E402
from quality_aggregate import PPO_STAGES, aggregate  # noqa: E402
from quality_ceilings import CAPACITY_PAIRS, ceilings, sizes  # noqa: E402
from quality_plots import plot  # noqa: E402

REFINE = ["uml", "spg", "uml+spg", "west_of_n", "oracle"]
# micro: every method, 3-member ensembles. smollm2: the real-model world, sized as issue 21 measured it (RLOO with
# LoRA, 40 steps of 32 samples, 256 preference prompts, 128 eval prompts, 256 oracle labels, the oracle only):
# controls a, c and d, about 1.5 hours a seed on the 2-core machine.
WORLDS = {
    "micro": {"preset": "configs/micro.yaml", "refine": REFINE, "ensemble_k": 3, "bon_prompts": 128, "config": {},
              # control (b): PPO1 again, longer and with a weaker KL anchor, where over-optimisation can show
              "long_ppo1": {"steps": 80, "kl_coef": 0.01, "eval_every": 10}},
    "smollm2": {"preset": "configs/default.yaml", "refine": ["oracle"], "ensemble_k": 0, "bon_prompts": 16,
                "config": {"data": {"n_preference": 256, "n_unlabelled": 64, "n_eval": 128}, "oracle_labels": 256,
                           "policy_optimizer": "rloo", "ppo": {"lora": {"enabled": True}, "steps": 40,
                                   "rollout_batch_size": 32, "step_batch_size": 32, "eval_every": 10}}},
}
TABLE5 = {"rm_rank": "RM ranks a pair", "select_all": "select-all (gamma = 0)", "spg": "SPG (gamma = 0.5)",
          "west_of_n": "West-of-N (RM0's best vs worst)"}
BON_MAX, MAJORITY_N = 64, 8
# --smoke: the world's preset at plumbing sizes (its numbers mean nothing; CI checks that every key is written)
SMOKE = {"data": {"n_preference": 16, "n_unlabelled": 8, "n_eval": 8},
         "ppo": {"steps": 1, "rollout_batch_size": 4, "step_batch_size": 4, "eval_every": 1},
         "sample": {"n": 4}, "oracle_labels": 8}
SMOKE_CAPACITY_PAIRS = 16
# --variant: the world as configured (base), or its `pad: majority` pool (docs/micro-world.md)
VARIANTS = {"base": {}, "majority": {"world_options": {"pool": {"pad": "majority"}}}}
SMOKE_SCRATCH = {"data": {"n_sft": 256}, "sft": {"optim": {"max_steps": 5}},  # a policy built from scratch
                 "world_options": {"model": {"hidden_size": 32, "layers": 1}}}


def seed_config(world: str, preset: Path, seed: int, run_dir: Path, smoke: bool, ensemble_k: int,
                variant: str = "base") -> Any:
    """The world's preset (its ``variant``) with the study's methods, sizes, seed and folder (data paths made
    absolute)."""
    from rlp_align.core.config import build_config, merge, read_yaml
    from rlp_align.pipeline.run import PipelineConfig

    values = read_yaml(preset)
    for key in ("train_file", "eval_file", "preference_file"):
        path = values.get("data", {}).get(key)
        if path and not Path(path).is_absolute():
            values["data"][key] = str((ROOT / path).resolve())
    values = merge(merge(values, WORLDS[world]["config"]), VARIANTS[variant])
    overrides: dict[str, Any] = {"output_dir": str(run_dir), "seed": seed, "refine_methods": WORLDS[world]["refine"],
                                 "ensemble": {"k": ensemble_k, "aggregates": ["mean", "wco", "uwo"]}}
    if not values.get("ppo", {}).get("eval_every"):
        overrides["ppo"] = {"eval_every": max(1, values.get("ppo", {}).get("steps", 10) // 10)}
    values = merge(values, overrides)
    if smoke:
        values = merge(values, SMOKE)
        if values["data"].get("n_sft"):
            values = merge(values, SMOKE_SCRATCH)
    return build_config(PipelineConfig, values)


# ---------------------------------------------------------------------------------------------------------
# Per seed, beside the pipeline run


def manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / stage / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def eval_points(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every PPO run's evaluation points (``eval/*`` rows of its metrics.jsonl), per-prompt values kept."""
    out = {}
    for label, stage in PPO_STAGES.items():
        path = run_dir / stage / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        points = [{"step": r["step"], "kl": r["eval/kl"], "per_prompt": r["eval/per_prompt"]}
                  for r in rows if "eval/per_prompt" in r]
        if points:
            out[label] = points
    return out


def long_ppo1(cfg: Any, run_dir: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Control (b): PPO1 from the same SFT policy against the same RM0, run longer with a weaker KL anchor,
    through the pipeline's own stage function; its evaluation points (finished runs are read back)."""
    from rlp_align.pipeline import stages_impl
    from rlp_align.pipeline.pipeline_config import world_config
    from rlp_align.pipeline.run import ppo_section

    folder = run_dir / "quality" / "ppo1_long"
    if not (folder / "summary.json").exists():
        sft = (manifest(run_dir, "01_sft") or {}).get("outputs", {}).get("model") or cfg.model
        stages_impl.train_ppo(dataclasses.replace(ppo_section(cfg), **settings), cfg.annotator, world_config(cfg),
                              sft, [str(run_dir / "03_rm0" / "model")], manifest(run_dir, "00_instructions")["outputs"],
                              cfg.seed, folder)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "kl": r["eval/kl"], "per_prompt": r["eval/per_prompt"]}
            for r in rows if "eval/per_prompt" in r]


def final_i_jsd(run_dir: Path) -> dict[str, float | None]:
    """The last logged ``uml/i_jsd`` of each refine run with a UML term (None when it logged none)."""
    out = {}
    for label, stage in (("RLP-UML", "07_refine_uml"), ("RLP-UML+SPG", "07_refine_uml_spg")):
        path = run_dir / stage / "metrics.jsonl"
        if path.exists():
            values = [r["uml/i_jsd"] for line in path.read_text().splitlines() if line.strip()
                      if "uml/i_jsd" in (r := json.loads(line))]
            out[label] = values[-1] if values else None
    return out


def expected_best_of(proxy: list[float], gold: list[float], k: int) -> tuple[float, float]:
    """E[proxy max] and E[gold of the proxy's argmax] over a uniformly random k-subset of the n samples.

    With the samples sorted by proxy, the i-th smallest (0-based) is the subset's best with probability
    C(i, k - 1) / C(n, k): an unbiased estimate of best-of-k from one draw of n >= k samples."""
    order = sorted(range(len(proxy)), key=proxy.__getitem__)
    total = math.comb(len(proxy), k)
    weights = [math.comb(i, k - 1) / total for i in range(len(proxy))]
    return (sum(w * proxy[j] for w, j in zip(weights, order)), sum(w * gold[j] for w, j in zip(weights, order)))


def best_of_k_kl(proxy: list[float], responses: list[str], k: int) -> float:
    """KL(best-of-k || base) on one prompt's n samples, exact for their empirical distribution (issue 28, N4).

    The base is the distribution of distinct responses among the n samples; best-of-k puts on a response the
    summed weight C(i, k - 1) / C(n, k) of the ranks i its samples hold in proxy order (`expected_best_of`).
    log k - (k - 1) / k is only an upper bound (Beirami et al. 2024, arXiv 2401.01879), loose when a few answers
    hold most of the mass: n = 64 gives 3.17 where an answer distribution [0.55, 0.15, ...] with the likeliest
    answer best gives log(1 / 0.55) = 0.60."""
    n = len(proxy)
    order = sorted(range(n), key=proxy.__getitem__)
    total = math.comb(n, k)
    base: dict[str, float] = {}
    best: dict[str, float] = {}
    for i, j in enumerate(order):
        base[responses[j]] = base.get(responses[j], 0.0) + 1 / n
        best[responses[j]] = best.get(responses[j], 0.0) + math.comb(i, k - 1) / total
    return max(sum(q * math.log(q / base[y]) for y, q in best.items() if q > 0), 0.0)  # 0, not -1e-17, at k = 1


def world_name(cfg: Any) -> str:
    """The config's world: ``world: name`` or a ``world:`` section with a ``name``."""
    return cfg.world if isinstance(cfg.world, str) else cfg.world.name


def world_of(cfg: Any) -> Any:
    from rlp_align.worlds import load_world

    return load_world(world_name(cfg))


def gold_judge(cfg: Any) -> Any:
    """The gold judge exactly as the pipeline builds it (`stages_impl._annotator`), without label noise."""
    import inspect

    from rlp_align.pipeline import stages_impl
    from rlp_align.pipeline.pipeline_config import world_config

    takes_world = len(inspect.signature(stages_impl._annotator).parameters) > 1  # the judge is the world's
    return stages_impl._annotator(cfg.annotator, world_config(cfg)) if takes_world \
        else stages_impl._annotator(cfg.annotator)


def spg_settings(cfg: Any, **changes: Any) -> Any:
    """The SPG section as the pipeline runs it: with the world, whose canonical answer the ``key`` backend reads."""
    if "world" in {f.name for f in dataclasses.fields(cfg.spg)}:
        changes["world"] = world_name(cfg)
    return dataclasses.replace(cfg.spg, **changes)


def sft_samples_extras(cfg: Any, run_dir: Path, n_prompts: int) -> dict[str, Any]:
    """Best-of-n from SFT against RM0, n = 1 ... 64, on the first eval prompts; P(majority) against P(single)."""
    from rlp_align.core.device import default_device
    from rlp_align.data.readers import read_instructions
    from rlp_align.models import load_policy, load_tokenizer
    from rlp_align.train.best_of_n import best_of_n
    from rlp_align.train.ensemble import make_reward_fn

    b = cfg.best_of_n
    pools = manifest(run_dir, "00_instructions")["outputs"]
    instructions = read_instructions(pools["eval"])[:n_prompts]
    sft = (manifest(run_dir, "01_sft") or {}).get("outputs", {}).get("model") or cfg.model
    device = default_device()
    reward_fn = make_reward_fn(str(run_dir / "03_rm0" / "model"), [], "mean", 0.5, device=device,
                               batch_size=b.reward_batch_size, max_length=b.max_prompt_length + b.max_new_tokens + 1)
    results = best_of_n(load_policy(sft).to(device), load_tokenizer(sft), reward_fn, [x.prompt for x in instructions],
                        BON_MAX, temperature=b.temperature, top_p=b.top_p, max_new_tokens=b.max_new_tokens,
                        max_prompt_length=b.max_prompt_length, batch_size=b.batch_size, seed=cfg.seed,
                        missing_eos_penalty=b.missing_eos_penalty)
    judge = gold_judge(cfg)
    gold = [judge.score([x] * BON_MAX, r.responses) for x, r in zip(instructions, results)]
    curve = [[expected_best_of(r.scores, g, k) for r, g in zip(results, gold)] for k in range(1, BON_MAX + 1)]
    kl = [[best_of_k_kl(r.scores, r.responses, k) for r in results] for k in range(1, BON_MAX + 1)]
    out: dict[str, Any] = {"bon_curve": {
        "prompts": len(instructions), "kl": [float(sum(row) / len(row)) for row in kl],  # plug-in, prompt mean
        "kl_analytic": [math.log(k) - (k - 1) / k for k in range(1, BON_MAX + 1)],  # the upper bound, for reference
        "per_prompt_proxy": [[p for p, _ in row] for row in curve],
        "per_prompt_gold": [[g for _, g in row] for row in curve]}}
    module = world_of(cfg)
    if not all("answer" in x.meta for x in instructions):  # the world's truth, which its judge reads
        out["majority_reason"] = f"the {module.NAME} world has no known answer to vote on"
        return out
    majority, single = [], []
    for x, r in zip(instructions, results):
        truth = module.cluster_key(x, x.meta["answer"])
        keys = [module.cluster_key(x, text) for text in r.responses[:MAJORITY_N]]
        votes = [k for k in keys if k is not None]
        top = max(votes, key=votes.count) if votes else None  # ties: the answer sampled first
        majority.append(float(top == truth))
        single.append(sum(k == truth for k in keys) / len(keys))
    out["majority"] = {"n": MAJORITY_N, "majority_correct": majority, "single_correct": single}
    return out


def label_accuracy(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Table 5: agreement with the gold judge of each selection rule's pairs (RM0 on PPO1's samples); a gold tie
    counts 1/2. The judge sees the unlabelled pool's full instructions, as D's annotator did."""
    from rlp_align.data import read_instructions, read_preferences
    from rlp_align.data.records import prompt_text
    from rlp_align.rlp.spg import run_spg

    ppo1 = manifest(run_dir, "04_ppo1")["hash"]
    samples = next(m["outputs"]["samples"] for p in sorted(run_dir.glob("05_samples*/manifest.json"))
                   if (m := json.loads(p.read_text())).get("inputs", {}).get("policy") == ppo1)
    pools = manifest(run_dir, "00_instructions")["outputs"]
    pool = {x.text: x for x in read_instructions(pools["unlabelled"])}
    judge, result = gold_judge(cfg), {}
    for selection, label in TABLE5.items():
        out = run_dir / "quality" / f"table5_{selection}.jsonl"
        stats = run_spg(spg_settings(cfg, samples_file=samples, reward_model=str(run_dir / "03_rm0" / "model"),
                                     output_file=str(out), selection=selection,
                                     gamma=0.5 if selection == "spg" else 0.0, seed=cfg.seed))
        prefs = read_preferences(out) if stats["pairs"] else []
        probs = judge.compare([pool[prompt_text(p.prompt)] for p in prefs], [p.chosen for p in prefs],
                              [p.rejected for p in prefs]) if prefs else []
        result[selection] = {"label": label, "pairs": len(prefs), "instructions": stats["instructions"],
                             "accuracy": sum(probs) / len(probs) if probs else None,
                             "gold_ties": sum(p == 0.5 for p in probs)}
    return result


def run_seed(cfg: Any, run_dir: Path, bon_prompts: int, key: str, long_settings: dict[str, Any] | None = None,
             capacity_pairs: int = CAPACITY_PAIRS) -> dict[str, Any]:
    """Run (or resume) one seed's pipeline and measurements; the seed's record (cached under its config key)."""
    from rlp_align.pipeline.run import run_pipeline

    run_pipeline(cfg)
    cached = run_dir / "quality" / f"extras-{key}.json"
    if cached.exists():
        extras = json.loads(cached.read_text())
    else:
        started = time.time()
        extras = {**sft_samples_extras(cfg, run_dir, bon_prompts), "table5": label_accuracy(cfg, run_dir),
                  **ceilings(cfg, run_dir, gold_judge(cfg), capacity_pairs)}  # issue 28: gold PPO, RM capacity
        if long_settings:
            extras["long_ppo1_points"] = long_ppo1(cfg, run_dir, long_settings)
        extras["seconds"] = time.time() - started
        write_json(cached, extras)
    stage_seconds = sum(m.get("seconds") or 0.0 for p in run_dir.glob("*/manifest.json")
                        if (m := json.loads(p.read_text())).get("status") == "done")
    spg = manifest(run_dir, next((p.name for p in sorted(run_dir.glob("06_spg_*"))), "06_spg"))
    long_points = extras.pop("long_ppo1_points", None)
    gold_points = (extras.get("gold_ppo") or {}).pop("eval_points", None)
    return {"seed": cfg.seed, "config_key": key,
            "evaluation": json.loads((run_dir / "14_evaluate" / "evaluation.json").read_text()),
            "eval_points": {**eval_points(run_dir), **({"PPO-long": long_points} if long_points else {}),
                            **({"Gold-PPO": gold_points} if gold_points else {})},
            "uml_i_jsd": final_i_jsd(run_dir), "sizes": sizes(run_dir),
            "spg_pairs": (spg or {}).get("outputs", {}).get("pairs"),
            "seconds": stage_seconds + extras.pop("seconds"), **extras}


# ---------------------------------------------------------------------------------------------------------
# Orchestration: which seeds run in this call, and how (one process, or one process per seed at one thread each)

SMALL_MODEL_WORLDS = {"micro"}  # models under 10M parameters: a seed per core beats intra-op threads (issue 29)


def seed_process(world: str, preset: Path, seed: int, run_dir: Path, smoke: bool, ensemble_k: int, bon_prompts: int,
                 key: str, long_settings: dict[str, Any] | None, threads: int | None, variant: str = "base",
                 capacity_pairs: int = CAPACITY_PAIRS) -> dict[str, Any]:
    """One seed, run and recorded (``quality_seed.json``); the body of a ``--parallel`` worker process."""
    if threads is not None:
        os.environ["RLP_NUM_THREADS"] = str(threads)
    cfg = seed_config(world, preset, seed, run_dir, smoke, ensemble_k, variant)
    record = run_seed(cfg, run_dir, bon_prompts, key, long_settings, capacity_pairs)
    write_json(run_dir / "quality_seed.json", record)
    return record


def run_seeds(jobs: list[dict[str, Any]], parallel: int) -> None:
    """Run ``seed_process(**job)`` for each job: in this process, or ``parallel`` spawned processes at a time
    (spawn, not fork: torch's thread pools do not survive a fork). A seed that fails stops the call; the seeds
    that finished keep their records, so the next call resumes."""
    if parallel <= 1 or len(jobs) <= 1:
        for job in jobs:
            print(f"seed {job['seed']}: running in {job['run_dir']}", flush=True)
            seed_process(**job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for job in jobs:
            print(f"seed {job['seed']}: running in {job['run_dir']} (a process of its own)", flush=True)
            futures[job["seed"]] = pool.submit(seed_process, **job)
        for seed, future in futures.items():
            future.result()
            print(f"seed {seed}: finished", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="micro")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="base", help="majority: the world's "
                        "`pool.pad: majority` variant (results in quality-<world>-majority.json)")
    parser.add_argument("--smoke", action="store_true", help="plumbing sizes, 1 seed, temp dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 3 4 (smoke: 0)")
    parser.add_argument("--max_seeds_per_call", type=int, default=None, help="run at most this many unfinished seeds")
    parser.add_argument("--preset", default=None, help="a config other than the world's preset")
    parser.add_argument("--work_dir", default=None, help="default benchmarks/work/quality-<world> (smoke: temp dir)")
    parser.add_argument("--ensemble_k", type=int, default=None, help="RMs per ensemble, 0: no ensemble rows "
                        "(default: micro 3, smollm2 0; smoke 2)")
    parser.add_argument("--bon_prompts", type=int, default=None, help="eval prompts of the best-of-n curve "
                        "(default: micro 128, smollm2 16; smoke 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per seed (default: the package's "
                        "rule, 1 thread below 10M parameters, every core above; 1 under --parallel)")
    parser.add_argument("--parallel", type=int, default=None, help="seeds run at once, each in its own process "
                        "(default: one per core for the micro world's small models, 1 for smollm2)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/quality-<world>.json")
    args = parser.parse_args()
    smoke, world = args.smoke, args.world
    name = world if args.variant == "base" else f"{world}-{args.variant}"
    seeds = args.seeds if args.seeds is not None else ([0] if smoke else [0, 1, 2, 3, 4])
    preset = Path(args.preset or ROOT / WORLDS[world]["preset"])
    ensemble_k = (2 if smoke else WORLDS[world]["ensemble_k"]) if args.ensemble_k is None else args.ensemble_k
    work = Path(args.work_dir or (tempfile.mkdtemp(prefix="rlp_quality_") if smoke else
                                  BENCH / "work" / f"quality-{name}"))
    out = Path(args.out or BENCH / "results" / f"quality-{name}{'_smoke' if smoke else ''}.json")
    bon_prompts = args.bon_prompts or (4 if smoke else WORLDS[world]["bon_prompts"])
    long = WORLDS[world].get("long_ppo1")
    if long and smoke:
        long = {**long, "steps": 2, "eval_every": 1}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parallel = args.parallel or ((os.cpu_count() or 1) if world in SMALL_MODEL_WORLDS else 1)
    threads = args.threads or (1 if parallel > 1 else None)  # None: the package's rule (rlp_align.core.threads)
    if threads is not None:
        os.environ["RLP_NUM_THREADS"] = str(threads)
    from rlp_align.core.config import config_hash, config_to_dict

    capacity = SMOKE_CAPACITY_PAIRS if smoke else CAPACITY_PAIRS
    started, jobs, keys = time.time(), [], {}
    for seed in seeds:
        run_dir = work / f"seed{seed}"
        cfg = seed_config(world, preset, seed, run_dir, smoke, ensemble_k, args.variant)
        key = keys[seed] = config_hash({**config_to_dict(cfg), "bon_prompts": bon_prompts, "long_ppo1": long,
                                        "capacity_pairs": capacity, "bon_kl": "plug-in"})[:12]  # N4: not the bound
        path = run_dir / "quality_seed.json"
        record = json.loads(path.read_text()) if path.exists() else None
        if record is None or record.get("config_key") != key:
            if args.max_seeds_per_call is not None and len(jobs) >= args.max_seeds_per_call:
                print(f"seed {seed}: not finished; left for a later call (--max_seeds_per_call)")
                continue
            jobs.append({"world": world, "preset": preset, "seed": seed, "run_dir": run_dir, "smoke": smoke,
                         "ensemble_k": ensemble_k, "bon_prompts": bon_prompts, "key": key, "long_settings": long,
                         "threads": threads, "variant": args.variant, "capacity_pairs": capacity})
    run_seeds(jobs, parallel)
    records = [r for seed in seeds if (p := work / f"seed{seed}" / "quality_seed.json").exists()
               and (r := json.loads(p.read_text())).get("config_key") == keys[seed]]  # this call's and earlier ones
    if not records:
        print("no finished seed yet: nothing to aggregate")
        return
    result = {"benchmark": "quality", "world": world, "variant": args.variant, "smoke": smoke, "date": now(), **git_commit(),
              "machine": machine_info(), "preset": str(preset.relative_to(ROOT) if preset.is_relative_to(ROOT) else preset),
              "work_dir": str(work), "seeds_requested": seeds, "seeds_finished": [r["seed"] for r in records],
              "settings": {"refine_methods": WORLDS[world]["refine"], "ensemble_k": ensemble_k, "threads": threads,
                           "parallel": parallel,
                           "best_of_n_curve": {"n_max": BON_MAX, "prompts": bon_prompts, "policy": "SFT"},
                           "majority_samples": MAJORITY_N, "rm_capacity_pairs": capacity,
                           "matched_kl": "min(the method's final KL, PPO1's final KL); both runs' per-prompt gold "
                                         "interpolated between their evaluation points around it (best-of-n: "
                                         "plug-in KL on the empirical sample distribution)",
                           "intervals": "per_seed: 95 % bootstrap over prompts/pairs (these runs differ); pooled: "
                                        "95 % t-interval over the per-seed means (S - 1 dof)"},
              **aggregate(records), "seconds_this_call": time.time() - started}
    result["png"] = plot(out.with_suffix(".png"), result)
    write_json(out, result)
    c = result["controls"]
    for name in ("ppo_vs_sft_gold", "oracle_rm_vs_rm0_accuracy", "oracle_vs_ppo_gold"):
        pooled = (c[name] or {}).get("pooled") or {}
        print(f"control {name}: pooled {pooled.get('diff')} CI [{pooled.get('ci_low')}, {pooled.get('ci_high')}]")
    print(f"wrote {out} ({len(records)} seed(s)) in {result['seconds_this_call']:.0f}s")


if __name__ == "__main__":
    main()
