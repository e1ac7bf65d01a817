"""One timed run of rlp_align's PPO (`rlp_align.train.ppo.train_ppo`), for benchmarks/speed.py (our side).

Runs with ``.venv/bin/python``. Same settings as speed_worker_trl.py: one rollout batch of ``--batch``
prompts per step, one minibatch per PPO epoch, ``--ppo_epochs`` epochs, ``--new_tokens`` sampled at
temperature 1.0, full fine-tuning in fp32. Gradient clipping is off because TRL's PPO loop does not clip.
``--mode`` picks the workload: ``ppo`` (full fine-tuning, the one compared step for step with TRL),
``lora_ppo`` (LoRA adapters, the reference the adapters-off base, ``--critic``), or ``rloo`` (full fine-tuning,
no critic, ``--rloo_k`` samples per prompt; ``--batch`` then counts sequences, so episodes per step are equal).

A probe passed as ``gold_fn`` (called once per step, right after the PPO update) records the wall time
and the peak RSS; step k's time is the gap between probes k-1 and k, so model loading is never inside.
Checkpoint and final-model saves are switched off (TRL runs with ``save_strategy="no"``).

``--profile_step N`` runs step N under ``torch.profiler`` (it is then left out of the timings) and writes
the top operators by self CPU time to ``--profile_out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reward_model", required=True)
    parser.add_argument("--prompts", required=True, help="JSONL with a chat prompt per row (the first --batch used)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--new_tokens", type=int, required=True)
    parser.add_argument("--ppo_epochs", type=int, required=True)
    parser.add_argument("--kl_coef", type=float, default=0.05)
    parser.add_argument("--learning_rate", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile_step", type=int, default=0, help="profile this step (0: none)")
    parser.add_argument("--profile_out", default="")
    parser.add_argument("--mode", choices=["ppo", "lora_ppo", "rloo"], default="ppo")
    parser.add_argument("--critic", choices=["separate", "lora", "head"], default="lora", help="lora_ppo's critic")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--rloo_k", type=int, default=2, help="rloo: samples per prompt (TRL's default)")
    args = parser.parse_args()

    import torch
    import transformers

    import rlp_align
    from rlp_align.train import ppo as ppo_module
    from rlp_align.train import training
    from rlp_align.train.ensemble import make_reward_fn
    from rlp_align.train.training import LoraConfig, OptimConfig, read_metrics

    torch.set_num_threads(args.threads)
    prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    prompts = prompts[: args.batch]
    out_dir = Path(args.work_dir) / "ppo"
    cfg = ppo_module.PPOConfig(
        policy=args.policy, reference=args.policy, reward_model=args.reward_model, value_model=args.reward_model,
        output_dir=str(out_dir), steps=args.steps, rollout_batch_size=args.batch, step_batch_size=args.batch,
        rollout_chunk_size=args.batch, reward_batch_size=args.batch, ppo_epochs=args.ppo_epochs,
        max_new_tokens=args.new_tokens, temperature=1.0, kl_coef=args.kl_coef,
        whiten_rewards=args.batch >= 8, gamma=1.0, lam=1.0, overwrite=True, seed=args.seed,
        optim=OptimConfig(learning_rate=args.learning_rate, max_grad_norm=0.0, save_every=10**9),
        lora=LoraConfig(enabled=args.mode == "lora_ppo", r=args.lora_r, alpha=2 * args.lora_r),
        critic=args.critic if args.mode == "lora_ppo" else "separate",
        estimator="rloo" if args.mode == "rloo" else "gae", rloo_k=args.rloo_k,
    )
    reward_fn = make_reward_fn(args.reward_model, device="cpu", batch_size=args.batch,
                               max_length=cfg.max_prompt_length + cfg.max_new_tokens + 1)

    # the benchmark times training steps, not saving: no checkpoints, no final model folder
    training.Checkpointer.save = lambda self, *a, **k: None  # type: ignore[method-assign]
    training.TrainingRun.save = lambda self, model, tokenizer, summary, *a: summary  # type: ignore[method-assign]

    probes: list[dict[str, float]] = []
    profiling: dict[str, Any] = {}

    def probe(batch_prompts: list, texts: list[str]) -> list[float]:
        """Called by train_ppo once per step right after the update: time, peak RSS, profiler window."""
        probes.append({"end": time.perf_counter(), "peak_rss_mb": peak_rss_mb()})
        step = len(probes)
        if args.profile_step and step == args.profile_step - 1:  # the window is the whole next step
            profiling["prof"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiling["prof"].__enter__()
        elif "prof" in profiling and step == args.profile_step:
            prof = profiling.pop("prof")
            prof.__exit__(None, None, None)
            write_profile(prof, args.profile_out)
        return [0.0] * len(texts)

    loaded = time.perf_counter()
    ppo_module.train_ppo(cfg, prompts, reward_fn, gold_fn=probe)

    ends = [p["end"] for p in probes]
    profiled = args.profile_step if args.profile_step else None
    step_seconds = [ends[k] - ends[k - 1] for k in range(1, len(ends)) if k + 1 != profiled]
    metrics = read_metrics(out_dir)
    timed = [m for m in metrics if m["step"] >= 2 and m["step"] != profiled]
    last_unprofiled = [p for k, p in enumerate(probes) if k + 1 != profiled]
    result = {
        "framework": "rlp_align",
        "mode": args.mode,
        **({"critic": args.critic, "lora_r": args.lora_r} if args.mode == "lora_ppo" else {}),
        **({"rloo_k": args.rloo_k} if args.mode == "rloo" else {}),
        "versions": {"rlp_align": rlp_align.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
        "steps": len(probes),
        "step_seconds": step_seconds,
        "first_step_seconds": ends[0] - loaded if ends else None,
        "load_seconds": loaded - started,
        "peak_rss_mb": last_unprofiled[-1]["peak_rss_mb"] if last_unprofiled else peak_rss_mb(),
        "phases": [{k: m.get(k) for k in ("step", "time_rollout", "time_score", "time_update",
                                          "update_tokens_per_second", "response_length")} for m in timed],
        "batch": args.batch,
        "ppo_epochs": args.ppo_epochs,
        "profiled_step": profiled,
        "threads": torch.get_num_threads(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def write_profile(prof: Any, path: str, rows: int = 15) -> None:
    """The profiled step's top operators by self CPU time, as torch.profiler's text table."""
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    top = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1000, "cpu_total_ms": e.cpu_time_total / 1000,
            "calls": e.count}
           for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:rows]]
    Path(path).write_text(table + "\n")
    Path(path).with_suffix(".json").write_text(json.dumps(top, indent=2) + "\n")


if __name__ == "__main__":
    main()
