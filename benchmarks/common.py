"""What the benchmark drivers share: where things are, provenance, the machine's state, timing, result files.

Imported by `speed.py`, `gpu_check.py`, `quality.py` and their helpers as ``from common import ...`` (a driver's
own folder is ``sys.path[0]``). Nothing here imports rlp_align, so the GPU check can use it on a bare machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"


def git_commit() -> dict[str, Any]:
    """The commit the benchmark ran on, and whether the tree had uncommitted changes.

    ``RLP_COMMIT`` stands in where there is no git (a copied tree on the GPU machine)."""
    if os.environ.get("RLP_COMMIT"):
        return {"commit": os.environ["RLP_COMMIT"], "dirty": None}

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def now() -> str:
    """The date stamped on every result file."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a result file atomically: a killed benchmark never leaves half a JSON file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def spread(xs: list[float]) -> dict[str, float] | None:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else None


def target_row(target: str, passed: bool | None, reason: str | None = None, **measured: Any) -> dict[str, Any]:
    """One row of a target table: what was asked, what was measured, met (True), missed (False) or not measured
    (None, with the reason)."""
    row: dict[str, Any] = {"target": target, **measured, "passed": passed}
    if passed is None and reason:
        row["reason"] = reason
    return row


# ---------------------------------------------------------------------------------------------------------
# The machine's state: timings mean something only on an otherwise idle machine


def cpu_busy_fraction(seconds: float = 2.0) -> float | None:
    """Share of all cores' time spent busy (by anything) over the next ``seconds``, from /proc/stat.

    Unlike the 1-minute load average, this does not lag: a job that ended a few seconds ago counts as gone.
    """
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    if not Path("/proc/stat").exists():
        return None
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def machine_info() -> dict[str, Any]:
    import platform

    import torch
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    busy = cpu_busy_fraction()
    return {"cpu": model, "cores_available": len(os.sched_getaffinity(0)), "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags, "memory_gib": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average_at_start": list(os.getloadavg()), "cpu_busy_at_start": busy,
            # timings are only meaningful on an otherwise idle machine: with 2 threads on 2 shared cores, OpenMP
            # barriers wait for descheduled threads and small ops slow down by an order of magnitude
            "busy_at_start": busy > 0.25 if busy is not None else os.getloadavg()[0] > 0.5}


def matmul_peak_flops(threads: int, n: int = 2048, iters: int = 10, repeats: int = 3) -> dict[str, Any]:
    """Best fp32 GEMM rate over ``repeats`` loops of ``iters`` n x n matmuls (2 n^3 FLOPs each)."""
    import torch

    torch.set_num_threads(threads)
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=c)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return {"flops_per_second": 2 * n**3 * iters / best, "n": n, "iters": iters, "repeats": repeats,
            "threads": threads}
