"""Measure the micro world's properties on an SFT policy's samples (issue 21 §1, docs/micro-world.md).

    python benchmarks/micro_world.py --policy runs/micro/01_sft/model [--pad correct] [--n 8] [--prompts 256]

On held-out prompts it samples ``n`` answers per prompt (T = 1) and reports: room for RL (P(one sample
correct), mean gold); the exploitable feature (filler rate among correct and among wrong samples, and the
correlation of filler with gold); self-consistency (P(the majority canonical answer is correct) against
P(one sample correct)); and how often the filler goes with the majority answer. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics

from rlp_align.models import load_policy, load_tokenizer
from rlp_align.models.generation import generate
from rlp_align.worlds import micro


def measure(policy: str, pad: str, n: int, prompts: int, digits: int, demo_accuracy: float, seed: int) -> dict:
    instructions = micro.pool(prompts, seed=10_000 + seed, digits=digits, demo_accuracy=demo_accuracy, pad=pad)
    tok, model = load_tokenizer(policy), load_policy(policy)
    out = generate(model, tok, [x.prompt for x in instructions], n=n, temperature=1.0, max_new_tokens=digits + 8,
                   batch_size=512, seed=seed, progress=False)
    judge = micro.judge()
    single, majority, gold, filler, with_majority, correct_flags = [], [], [], [], [], []
    for x, answers in zip(instructions, out.grouped()):
        keys = [micro.canonical(a) for a in answers]
        top = collections.Counter(keys).most_common(1)[0][0]
        ok = [k == x.meta["answer"] for k in keys]
        single += ok
        majority.append(top == x.meta["answer"])
        gold += judge.score([x] * n, answers)
        padded = [a.startswith(micro.FILLER) for a in answers]
        filler += padded
        correct_flags += ok
        with_majority += [p for p, k in zip(padded, keys) if k == top]
    mean = statistics.fmean
    padded_ok = [f for f, c in zip(filler, correct_flags) if c]
    padded_bad = [f for f, c in zip(filler, correct_flags) if not c]
    corr = statistics.correlation([float(f) for f in filler], [float(c) for c in correct_flags]) \
        if 0 < mean(filler) < 1 and 0 < mean(correct_flags) < 1 else None
    return {"policy": policy, "pad": pad, "n": n, "prompts": prompts,
            "p_single_correct": mean(single), "p_majority_correct": mean(majority), "mean_gold": mean(gold),
            "filler_rate_correct": mean(padded_ok) if padded_ok else None,
            "filler_rate_wrong": mean(padded_bad) if padded_bad else None,
            "corr_filler_correct": corr, "filler_rate_majority_answer": mean(with_majority),
            "filler_rate_all": mean(filler)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--pad", default="correct", choices=["correct", "majority"])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--digits", type=int, default=3)
    ap.add_argument("--demo_accuracy", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(measure(a.policy, a.pad, a.n, a.prompts, a.digits, a.demo_accuracy, a.seed), indent=2))


if __name__ == "__main__":
    main()
