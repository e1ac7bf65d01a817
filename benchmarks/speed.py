"""Speed of rlp_align's PPO against TRL 1.12's PPOTrainer, its update-phase MFU, RLP's overhead, sampling.

    benchmarks/setup_trl_env.sh                       # once: TRL 1.12 in benchmarks/.venv-trl
    .venv/bin/python benchmarks/speed.py              # SmolLM2-135M, batch 8, 64 new tokens, 3 repeats
    .venv/bin/python benchmarks/speed.py --smoke      # tiny model, seconds (checks the script works)

1. PPO step time and peak RSS: each framework runs in its own subprocess (ours with .venv/bin/python, TRL with
   benchmarks/.venv-trl/bin/python), alternated ours/TRL/ours/TRL..., on the same model, prompts, batch,
   response length and PPO epochs, full fine-tuning in fp32. A step's time excludes model loading (steps
   2..k); the speed-up is TRL's median step time over ours, per repeat, reported as min/median/max.
2. MFU of our PPO update phase (see FLOP_FORMULA) against the fp32 matmul peak measured here (2048² GEMM).
3. RLP overhead from the stage manifests of a pipeline run (``--run_dir``): no extra run.
4. Sampling throughput (new tokens/s) of `rlp_align.models.generation.generate` at several batch sizes.
5. The cheaper optimisers (``--workloads``): LoRA PPO (one base model, LoRA critic) and RLOO (no critic), one
   run each of ours at the same batch and lengths, as episodes per second and peak RSS against TRL's full
   fine-tuning PPO (and our own) from the same run. (The sampler alone: benchmarks/sampler_speed.py.)
Writes benchmarks/results/speed.json (``--out``) with the targets and whether each was met.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import BENCH, ROOT, git_commit, machine_info, matmul_peak_flops, median, now, spread, write_json
from speed_targets import judge, rlp_overhead, update_mfu

DATA = ROOT.parent / "shared" / "data" / "alpaca_5000.json"


# ---------------------------------------------------------------------------------------------------------
# Models and prompts shared by both frameworks


def prepare(model: str, n_prompts: int, max_prompt_length: int, work: Path) -> dict[str, Any]:
    """Policy folder, a tokenizer folder (with its pad token), an RM/value folder, and a prompts file."""
    from rlp_align.data.templates import encode_prompt
    from rlp_align.models import load_policy, load_reward_model, load_tokenizer, resolve_model, save_model
    from rlp_align.worlds.instructions import builtin_pool, load_instruction_pool

    policy_dir = resolve_model(model)
    tokenizer = load_tokenizer(policy_dir)
    folder = work / "models" / model
    if not (folder / "tokenizer" / "tokenizer_config.json").exists():
        with_atomic_tokenizer(tokenizer, folder / "tokenizer")
    rm_dir = folder / "rm"
    if not (rm_dir / "config.json").exists():  # the SFT backbone with a new zero head, as the pipeline builds RM0
        save_model(load_reward_model(policy_dir, new_head=True), tokenizer, rm_dir)
    policy = load_policy(policy_dir)
    value = load_reward_model(rm_dir)
    embed = policy.get_input_embeddings().weight
    vocab, hidden = embed.shape
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    params = {"policy": count(policy), "value": count(value), "vocab": vocab, "hidden": hidden,
              "policy_non_embedding": count(policy) - embed.numel(),
              "value_non_embedding": count(value) - value.get_input_embeddings().weight.numel()}
    del policy, value

    if DATA.exists():
        pool, source = load_instruction_pool(DATA, limit=n_prompts), DATA.name
    else:
        pool, source = builtin_pool(n_prompts, seed=0), "builtin"
    prompts_file = work / "prompts.jsonl"
    from rlp_align.core.io import write_jsonl

    write_jsonl(prompts_file, [{"prompt": x.prompt, "input_ids": encode_prompt(tokenizer, x.prompt, max_prompt_length)}
                               for x in pool])
    return {"policy": str(policy_dir), "tokenizer": str(folder / "tokenizer"), "reward_model": str(rm_dir),
            "prompts": str(prompts_file), "prompt_source": source, "params": params,
            "prompts_list": [x.prompt for x in pool]}


def with_atomic_tokenizer(tokenizer: Any, folder: Path) -> None:
    from rlp_align.core.io import atomic_path

    with atomic_path(folder) as tmp:
        tokenizer.save_pretrained(tmp)


# ---------------------------------------------------------------------------------------------------------
# Worker subprocesses


def run_worker(python: Path, script: str, worker_args: list[str], work: Path, name: str, threads: int,
               timeout: int) -> dict[str, Any]:
    """Run one worker in its own process; its JSON result, or an ``error`` with the log's tail."""
    run_dir = work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out, log = run_dir / "result.json", run_dir / "log.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "RLP_NUM_THREADS": str(threads), "TRL_EXPERIMENTAL_SILENCE": "1"}
    cmd = [str(python), str(BENCH / script), *worker_args, "--threads", str(threads), "--work_dir", str(run_dir),
           "--out", str(out)]
    t0 = time.perf_counter()
    try:
        with open(log, "w") as f:
            rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    if rc != 0 or not out.exists():
        return {"error": f"{script} exited with {rc}", "log_tail": log.read_text()[-3000:], "wall_seconds": wall}
    result = json.loads(out.read_text())
    shutil.rmtree(run_dir / "ppo", ignore_errors=True)
    shutil.rmtree(run_dir / "trl_out", ignore_errors=True)
    return {**result, "wall_seconds": wall, "median_step_seconds": median(result["step_seconds"])}


# ---------------------------------------------------------------------------------------------------------
# Sampling


def sampling_throughput(policy: str, prompts: list, batches: list[int], new_tokens: int,
                        threads: int) -> list[dict[str, Any]]:
    """New tokens per second of `generate` at each batch size: one batch of prompts, sampling at T = 1."""
    import torch

    from rlp_align.models import load_policy, load_tokenizer
    from rlp_align.models.generation import generate

    torch.set_num_threads(threads)
    model, tokenizer = load_policy(policy), load_tokenizer(policy)
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up
    rows = []
    for b in batches:
        batch = [prompts[i % len(prompts)] for i in range(b)]
        t0 = time.perf_counter()
        gens = generate(model, tokenizer, batch, max_new_tokens=new_tokens, temperature=1.0, batch_size=b,
                        progress=False)
        seconds = time.perf_counter() - t0
        new = sum(len(r) for r in gens.response_ids)
        rows.append({"batch": b, "seconds": seconds, "new_tokens": new, "tokens_per_second": new / seconds,
                     "truncated_fraction": sum(gens.truncated) / b})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, batch 4, 8 tokens (< 60 s)")
    parser.add_argument("--model", default=None, help="default smollm2-135m-instruct (smoke: tiny)")
    parser.add_argument("--steps", type=int, default=None, help="PPO steps per run; steps 2..k are timed")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--new_tokens", type=int, default=None)
    parser.add_argument("--ppo_epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="ours/TRL pairs of runs (alternated)")
    parser.add_argument("--sampling_batches", default=None, help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default 2; smoke 1)")
    parser.add_argument("--max_prompt_length", type=int, default=256)
    parser.add_argument("--workloads", default="lora_ppo,rloo", help="cheaper optimisers to time ('' for none)")
    parser.add_argument("--run_dir", default=None, help="pipeline run folder for the RLP overhead")
    parser.add_argument("--trl_python", default=str(BENCH / ".venv-trl" / "bin" / "python"))
    parser.add_argument("--skip_trl", action="store_true")
    parser.add_argument("--work_dir", default=str(BENCH / "work" / "speed"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--overhead_only", action="store_true",
                        help="only recompute the RLP overhead (from --run_dir) into an existing --out JSON")
    args = parser.parse_args()
    smoke = args.smoke
    model = args.model or ("tiny" if smoke else "smollm2-135m-instruct")
    steps = args.steps or (2 if smoke else 4)
    batch = args.batch or (4 if smoke else 8)
    new_tokens = args.new_tokens or (8 if smoke else 64)
    repeats = args.repeats or (1 if smoke else 3)
    batches = [int(b) for b in (args.sampling_batches or ("2,4" if smoke else "8,32,64")).split(",")]
    args.threads = args.threads or (1 if smoke else 2)
    out = Path(args.out or BENCH / "results" / ("speed_smoke.json" if smoke else "speed.json"))
    work = Path(args.work_dir) / ("smoke" if smoke else "full")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()

    run_dir = Path(args.run_dir) if args.run_dir else BENCH / "work" / "quality" / "seed0"
    if args.overhead_only:  # e.g. after quality.py has finished a seed, without re-timing PPO
        result = json.loads(out.read_text())
        result["rlp_overhead"] = overhead = rlp_overhead(run_dir) if run_dir.exists() else \
            {"measured": False, "reason": f"{run_dir} is absent"}
        result["targets"] = judge(result["ppo"]["ours"], result["ppo"]["trl"], result["ppo"]["trl_note"],
                                  result["mfu"], overhead, (result["targets"]["update_mfu"].get("why") or {})
                                  .get("profile"), result.get("workloads"), result["settings"]["batch"])
        write_json(out, result)
        print(f"RLP overhead: {overhead.get('worst_ratio') or overhead.get('reason')} -> {out}")
        return

    info = machine_info()
    code = git_commit()  # before the run writes its own result files into the tree
    print(f"speed: {model}, batch {batch}, {new_tokens} new tokens, {steps} steps x {repeats} repeats")
    # The host's matmul rate drifts by 2x over hours (shared machine): measure it before every run of ours
    # and at the end, and judge MFU against the highest rate seen, so MFU is never overstated.
    def measure_peak() -> dict[str, Any]:
        return matmul_peak_flops(args.threads, iters=3 if smoke else 10)

    peaks = [measure_peak()]
    print(f"fp32 matmul peak: {peaks[0]['flops_per_second'] / 1e9:.1f} GFLOP/s")
    shared = prepare(model, max(batch, *batches), args.max_prompt_length, work)

    ours_python = ROOT / ".venv" / "bin" / "python"
    ours_python = ours_python if ours_python.exists() else Path(sys.executable)
    trl_python = Path(args.trl_python)
    trl_note = None
    if args.skip_trl:
        trl_note = "TRL skipped (--skip_trl)"
    elif not trl_python.exists():
        trl_note = f"TRL skipped: {trl_python} is absent (run benchmarks/setup_trl_env.sh)"
    common = ["--policy", shared["policy"], "--reward_model", shared["reward_model"], "--prompts", shared["prompts"],
              "--batch", str(batch), "--new_tokens", str(new_tokens), "--ppo_epochs", str(args.ppo_epochs)]
    profile_txt = out.with_name(out.stem + "_profile.txt")
    ours, trl = [], []
    for r in range(repeats):
        last = r == repeats - 1  # the last run of ours also profiles one extra step (left out of its timings)
        extra = ["--steps", str(steps + 1), "--profile_step", str(steps + 1), "--profile_out", str(profile_txt)] \
            if last else ["--steps", str(steps)]
        if r:
            peaks.append(measure_peak())
        ours.append(run_worker(ours_python, "speed_worker_ours.py", common + extra, work, f"ours_{r}",
                               args.threads, args.timeout))
        print(f"  ours #{r}: {ours[-1].get('median_step_seconds') or ours[-1].get('error')}")
        if trl_note is None:
            trl.append(run_worker(trl_python, "speed_worker_trl.py",
                                  common + ["--tokenizer", shared["tokenizer"], "--steps", str(steps)], work,
                                  f"trl_{r}", args.threads, args.timeout))
            print(f"  TRL  #{r}: {trl[-1].get('median_step_seconds') or trl[-1].get('error')}")

    workloads = {}
    for mode in [w for w in args.workloads.split(",") if w]:
        workloads[mode] = run_worker(ours_python, "speed_worker_ours.py", common + ["--steps", str(steps),
                                     "--mode", mode], work, f"ours_{mode}", args.threads, args.timeout)
        print(f"  ours {mode}: {workloads[mode].get('median_step_seconds') or workloads[mode].get('error')}")

    peaks.append(measure_peak())
    rates = [p["flops_per_second"] for p in peaks]
    peak = {**max(peaks, key=lambda p: p["flops_per_second"]), "measurements": rates,
            "judged_on": "the highest of the measurements (taken before each run of ours and at the end)"}
    print(f"fp32 matmul peak over the run: {min(rates) / 1e9:.0f} - {max(rates) / 1e9:.0f} GFLOP/s")
    mfu = update_mfu([o for o in ours if "phases" in o], shared["params"], peak["flops_per_second"])
    overhead = rlp_overhead(run_dir) if run_dir.exists() else {"measured": False, "reason": f"{run_dir} is absent"}
    sampling = sampling_throughput(shared["policy"], shared["prompts_list"], batches, new_tokens, args.threads)
    profile = None
    if profile_txt.exists():
        top = json.loads(profile_txt.with_suffix(".json").read_text())
        profile = {"file": str(profile_txt), "top10_self_cpu": top[:10]}
    result = {
        "benchmark": "speed", "smoke": smoke, "date": now(), **code,
        "machine": {**info, "load_average_at_end": list(os.getloadavg())},
        "settings": {"model": model, "batch": batch, "new_tokens": new_tokens, "ppo_epochs": args.ppo_epochs,
                     "steps_per_run": steps, "timed_steps": f"2..{steps}", "repeats": repeats,
                     "threads": args.threads, "dtype": "float32", "fine_tuning": "full",
                     "prompt_source": shared["prompt_source"], "max_prompt_length": args.max_prompt_length,
                     "sampling_batches": batches},
        "params": shared["params"], "matmul_peak": peak,
        "ppo": {"ours": ours, "trl": trl, "trl_note": trl_note,
                "speedup_trl_over_ours": spread([t["median_step_seconds"] / o["median_step_seconds"]
                                                 for o, t in zip(ours, trl)
                                                 if o.get("median_step_seconds") and t.get("median_step_seconds")])},
        "mfu": mfu, "rlp_overhead": overhead, "sampling": sampling, "workloads": workloads,
        "targets": judge(ours, trl, trl_note, mfu, overhead, profile, workloads, batch),
        "seconds": time.time() - started,
    }
    write_json(out, result)
    for name, t in result["targets"].items():
        print(f"target {name}: {'not measured' if t['passed'] is None else 'PASS' if t['passed'] else 'MISS'}")
    print(f"wrote {out} in {result['seconds']:.0f}s")


if __name__ == "__main__":
    main()
