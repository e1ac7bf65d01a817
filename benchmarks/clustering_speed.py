"""Clustering throughput of the embedding backend on CPU: instructions per second at n = 10 responses each.

    python benchmarks/clustering_speed.py            # 64 instructions x 10 responses, 3 repeats
    python benchmarks/clustering_speed.py --smoke    # 4 instructions, 1 repeat (seconds)

Responses are real AlpacaFarm SFT samples when ../shared/data is present (cycled to 10 per instruction),
otherwise synthetic sentences. Writes benchmarks/results/clustering_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import torch

from rlp_align.core.io import write_json
from rlp_align.models.embeddings import bundled_encoder
from rlp_align.rlp.clustering import DEFAULT_SIMILARITY_THRESHOLD, cluster_many

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "alpacafarm_multisamples_sft.json"


def response_sets(n_instructions: int, n: int, rng: random.Random) -> tuple[list[list[str]], str]:
    if SHARED.exists():
        pool = [r["output"] for r in json.loads(SHARED.read_text())]
        return [[rng.choice(pool[i % len(pool)]) for _ in range(n)] for i in range(n_instructions)], str(SHARED.name)
    words = "the a answer is capital city of france paris money save because interest rate loan bank".split()
    return [[" ".join(rng.choices(words, k=40)) for _ in range(n)] for _ in range(n_instructions)], "synthetic"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--instructions", type=int, default=64)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "clustering_speed.json"))
    args = parser.parse_args()
    if args.smoke:
        args.instructions, args.repeats = 4, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    sets, source = response_sets(args.instructions, args.n, random.Random(0))
    encoder = bundled_encoder()
    cluster_many(sets[:1], "embedding", encoder=encoder)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        cluster_many(sets, "embedding", encoder=encoder, batch_size=args.batch_size)
        times.append(time.perf_counter() - start)
    best = min(times)
    result = {
        "backend": "embedding (all-MiniLM-L6-v2, greedy first-member rule)",
        "similarity_threshold": DEFAULT_SIMILARITY_THRESHOLD,
        "instructions": args.instructions,
        "responses_per_instruction": args.n,
        "mean_response_chars": round(sum(len(r) for s in sets for r in s) / (args.instructions * args.n), 1),
        "responses_from": source,
        "repeats": args.repeats,
        "seconds": [round(t, 3) for t in times],
        "instructions_per_second": round(args.instructions / best, 2),
        "responses_per_second": round(args.instructions * args.n / best, 1),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),  # the machine is shared: high load = slower
        "smoke": args.smoke,
    }
    write_json(args.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
