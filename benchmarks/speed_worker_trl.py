"""One timed run of TRL 1.12's experimental PPOTrainer, for benchmarks/speed.py (TRL side).

Runs with ``benchmarks/.venv-trl/bin/python`` (it must not import rlp_align: that is the other venv). Reads
the settings speed.py chose, trains ``--steps`` PPO steps with full fine-tuning in fp32, and writes JSON:
the wall time at the end of every step and the process's peak RSS (``ru_maxrss``) at that moment.

Settings mirror speed_worker_ours.py: one rollout batch of ``--batch`` prompts per step, one minibatch
per PPO epoch (one optimiser step), ``--ppo_epochs`` epochs, ``--new_tokens`` sampled at temperature 1.0
with EOS as the stop token, lambda = gamma = 1, no gradient checkpointing, no bf16, no checkpoints,
no sample generations between steps.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--tokenizer", required=True, help="folder of the tokenizer (with its pad token) to use")
    parser.add_argument("--prompts", required=True, help="JSONL with input_ids per prompt (the first --batch used)")
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
    parser.add_argument("--gpu", action="store_true", help="CUDA with bf16 autocast, fp32 weights (gpu_check.py)")
    args = parser.parse_args()

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows[: args.batch]]})

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, padding_side="left")
    load = {"dtype": torch.float32}
    policy = AutoModelForCausalLM.from_pretrained(args.policy, **load)
    ref_policy = AutoModelForCausalLM.from_pretrained(args.policy, **load)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, **load)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1, **load)

    config = PPOConfig(
        output_dir=str(Path(args.work_dir) / "trl_out"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        local_rollout_forward_batch_size=args.batch,
        total_episodes=args.batch * args.steps,
        num_ppo_epochs=args.ppo_epochs,
        response_length=args.new_tokens,
        temperature=1.0,
        stop_token="eos",
        kl_coef=args.kl_coef,
        whiten_rewards=args.batch >= 8,  # TRL refuses whitening below 8 rows; ours follows the same rule
        learning_rate=args.learning_rate,
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.1,
        gamma=1.0,
        lam=1.0,
        bf16=args.gpu,
        fp16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=not args.gpu,
        seed=args.seed,
        dataloader_num_workers=0,
    )

    steps: list[dict[str, float]] = []
    phase = {"time_rollout": 0.0, "time_score": 0.0}  # this step's seconds so far, reset at each step's end

    class StepProbe(TrainerCallback):
        """Wall time, peak RSS and phase times at the end of every PPO step (after TRL's own logging)."""

        def on_step_end(self, *_: Any, **__: Any) -> None:
            steps.append({"end": time.perf_counter(), "peak_rss_mb": peak_rss_mb(), **phase})
            phase.update(time_rollout=0.0, time_score=0.0)

    def timed(fn: Any, key: str, only_without_grad: bool = False) -> Any:
        """``fn`` with its wall time added to phase[key] (scoring = the calls made under no_grad)."""

        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            if not (only_without_grad and torch.is_grad_enabled()):
                phase[key] += time.perf_counter() - t0
            return out

        return wrapper

    # the reference forward, value and reward calls of the rollout run under no_grad; the update's forward not
    trl_ppo.forward = timed(trl_ppo.forward, "time_score", only_without_grad=True)
    trl_ppo.get_reward = timed(trl_ppo.get_reward, "time_score", only_without_grad=True)

    # Record how many tokens TRL generates per row (it may keep sampling after EOS); measurement only.
    widths: list[int] = []
    original_batch_generation = trl_ppo.batch_generation

    def recording_batch_generation(model, queries, *a, **kw):
        query_responses, logits = original_batch_generation(model, queries, *a, **kw)
        widths.append(int(query_responses.shape[1] - queries.shape[1]))
        return query_responses, logits

    trl_ppo.batch_generation = timed(recording_batch_generation, "time_rollout")

    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                         eval_dataset=dataset, callbacks=[StepProbe()])
    loaded = time.perf_counter()
    trainer.train()

    step_seconds = [b["end"] - a["end"] for a, b in zip(steps, steps[1:])]  # steps 2..k: no loading inside
    # everything that is neither generation nor scoring (the PPO epochs, advantages, logging) counts as update
    phases = [{"step": i + 2, "time_rollout": b["time_rollout"], "time_score": b["time_score"],
               "time_update": seconds - b["time_rollout"] - b["time_score"]}
              for i, (b, seconds) in enumerate(zip(steps[1:], step_seconds))]
    result = {
        "framework": "trl",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "steps": len(steps),
        "step_seconds": step_seconds,
        "first_step_seconds": steps[0]["end"] - loaded if steps else None,
        "load_seconds": loaded - started,
        "peak_rss_mb": steps[-1]["peak_rss_mb"] if steps else peak_rss_mb(),
        "generated_width": widths,
        "phases": phases,
        "batch": args.batch,  # episodes per step: speed_targets judges episodes/s
        "ppo_epochs": args.ppo_epochs,
        "threads": torch.get_num_threads(),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if args.gpu else None,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
