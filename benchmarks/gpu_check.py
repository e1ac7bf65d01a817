"""The prepared GPU check (run through benchmarks/gpu_check.sh): what only a GPU can show, in one bounded run.

    benchmarks/gpu_check.sh              # one H200: at most ~8 minutes, writes $OUT/gpu.json (else results/)
    benchmarks/gpu_check.sh --dry-run    # the same phases on the CPU, tiny model and sizes, under 2 minutes

Phases, each in its own subprocess (a CUDA error or a hang in one does not take the others with it; peak
memory is per phase), each with a time limit cut from one overall budget, results written after every phase
(the dry run runs them in its own process, except ``tests`` and ``peak``: tiny phases cost less than imports):
1. ``tests``: the device-marked tiny-model tests (``pytest -m device``) with ``RLP_TEST_DEVICE=cuda``;
2. ``peak``: the bf16 matmul rate of this GPU (best of repeated 8192^3 GEMMs), the denominator of every MFU;
3. ``build``: random-weight models from configs (speed does not depend on the weights): SmolLM2-135M's
   architecture and a ~1B Llama, a policy and a reward model each, with the SmolLM2 tokenizer when its files
   were carried (``benchmarks/.gpu/smollm2-tokenizer``), else the tiny test tokenizer;
4. ``ppo`` / ``ppo-lora`` / ``rloo``: two steps of our trainer in bf16 at batch 64 and 256 new tokens; step 2
   is timed (step 1 holds CUDA warm-up), with its phases, the peak GPU memory and the MFU (see FLOPS);
   RLOO is timed when `rlp_align.train.rloo` exists on this commit, else recorded as not available;
5. ``trl``: TRL 1.12's PPOTrainer on the same settings on the 135M architecture (speed_worker_trl.py --gpu),
   when trl imports; the ratio is TRL's step time over ours;
6. ``sampling``: new tokens per second of `rlp_align.models.generation.generate` in bf16 at batch 64 and 256.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from common import BENCH, ROOT, git_commit, write_json
from gpu_phases import ARCHS, CARRIED_TOKENIZER, FLOPS, PHASES, versions

SIZES = {  # the GPU settings of the issue, and the dry run's
    "gpu": dict(archs=["smollm2-135m", "llama-1b"], batch=64, new_tokens=256, prompt_tokens=128,
                sample_batches=[64, 256], ppo_epochs=2, peak_n=8192, budget_s=450, test_cap_s=150),
    "dry": dict(archs=["tiny"], batch=4, new_tokens=8, prompt_tokens=32, sample_batches=[4, 8], ppo_epochs=2,
                peak_n=256, budget_s=110, test_cap_s=40),
}
# ---------------------------------------------------------------------------------------------------------
# Driver


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run_phase(name: str, spec: dict[str, Any], timeout: float, work: Path, inline: bool = False) -> dict[str, Any]:
    """``python gpu_check.py --phase name`` in a subprocess; its JSON result, or why there is none.

    ``inline``: in this process instead (the dry run: a subprocess's imports cost more than its tiny phase).
    """
    if timeout < 5:
        return {"status": "skipped", "reason": "time budget spent"}
    if inline:
        try:
            return {"status": "ok", **PHASES[name](spec)}
        except Exception as e:  # noqa: BLE001  (recorded like a failed subprocess)
            return {"status": "error", "stderr_tail": f"{type(e).__name__}: {e}"}
    result_file = work / f"{name}-{spec.get('arch', '')}-{spec.get('tag', '')}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__)), "--phase", name, "--spec", json.dumps(spec),
           "--result", str(result_file)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-1500:]
        return {"status": "timeout", "seconds": round(time.monotonic() - t0, 1),
                "stderr_tail": tail.decode(errors="replace") if isinstance(tail, bytes) else tail}
    if proc.returncode != 0 or not result_file.exists():
        return {"status": "error", "returncode": proc.returncode, "stderr_tail": proc.stderr[-3000:]}
    return {"status": "ok", **json.loads(result_file.read_text())}


def run_tests(dry: bool, timeout: float, work: Path) -> dict[str, Any]:
    """The device-marked tests on CUDA (dry run: tests/test_device.py on the CPU), per-test outcomes."""
    xml = work / "tests.xml"
    env = {**os.environ, "RLP_TEST_DEVICE": "cpu" if dry else "cuda", "HF_HUB_OFFLINE": "1"}
    # only the files with device-marked tests: a module that cannot import on a bare machine stops nothing else
    files = ["tests/test_device.py"] if dry else sorted(  # the dry run checks the plumbing, CI runs the rest
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "mark.device" in p.read_text())
    cmd = [sys.executable, "-m", "pytest", "-m", "device and not multiprocess and not slow", "-q", "-p",
           "no:cacheprovider", "--tb=line", "--continue-on-collection-errors", f"--junitxml={xml}", "-o",
           "junit_family=xunit2", *files]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
        tail = proc.stdout[-2000:]
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"status": "timeout", "seconds": round(time.monotonic() - t0, 1), "stdout_tail": out[-2000:]}
    result: dict[str, Any] = {"status": "ok", "seconds": round(time.monotonic() - t0, 1),
                              "device": env["RLP_TEST_DEVICE"], "returncode": proc.returncode, "summary": tail}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        result["failed"] = [{"test": f"{c.get('classname')}::{c.get('name')}",
                             "message": (c[0].get("message") or "")[:300]}
                            for c in suite.iter("testcase") if len(c) and c[0].tag in ("failure", "error")]
    return result


def driver(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dry = args.dry_run
    sizes = SIZES["dry" if dry else "gpu"]
    budget = Budget(args.budget_s or sizes["budget_s"])
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rlp-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch sees no GPU; use --dry-run on a CPU machine")
    report: dict[str, Any] = {
        "dry_run": dry, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit()["commit"],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions(), "settings": {k: v for k, v in sizes.items() if k != "budget_s"},
        "architectures": {a: ARCHS[a] for a in sizes["archs"]}, "flops": FLOPS,
        "tokenizer": "smollm2" if CARRIED_TOKENIZER.is_dir() else "tiny test tokenizer",
    }

    def save() -> None:
        report["elapsed_s"] = round((args.budget_s or sizes["budget_s"]) - budget.left(), 1)
        write_json(out, report)

    base = {"dry": dry, "work": str(work), **{k: sizes[k] for k in ("batch", "new_tokens", "prompt_tokens",
                                                                      "ppo_epochs")}}
    report["tests"] = run_tests(dry, min(sizes["test_cap_s"], budget.left() - 60), work)
    save()
    report["peak"] = run_phase("peak", {**base, "n": sizes["peak_n"]}, min(60, budget.left()), work)
    save()
    peak = report["peak"].get("flops_per_second")
    for arch in sizes["archs"]:
        report.setdefault("build", {})[arch] = run_phase("build", {**base, "arch": arch}, min(120, budget.left()),
                                                         work, inline=dry)
        save()
    runs = [("ppo", arch, "full") for arch in sizes["archs"]] + [("trl", sizes["archs"][0], "full")]
    runs += [("sampling", arch, "") for arch in sizes["archs"]]
    runs += [("ppo", arch, "lora") for arch in sizes["archs"]] + [("rloo", arch, "full") for arch in sizes["archs"]]
    for kind, arch, tag in runs:
        if report["build"].get(arch, {}).get("status") != "ok":
            result = {"status": "skipped", "reason": f"no {arch} models (build failed)"}
        else:
            spec = {**base, "arch": arch, "tag": tag, "peak": peak, "sample_batches": sizes["sample_batches"]}
            result = run_phase(kind, spec, min(180, budget.left()), work, inline=dry)
        report.setdefault(kind, {})[f"{arch}/{tag}" if tag else arch] = result
        save()
    ours = report["ppo"].get(f"{sizes['archs'][0]}/full", {}).get("step_seconds")
    trl = report["trl"].get(f"{sizes['archs'][0]}/full", {}).get("step_seconds")
    report["trl_ratio"] = {"trl_step_over_ours": trl / ours if ours and trl else None,
                           "note": "TRL 1.12 PPOTrainer step time / ours, same model, batch, tokens, epochs, bf16"}
    save()
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU, the tiny architecture, tiny sizes")
    parser.add_argument("--out", default=str(BENCH / "results" / "gpu.json"))
    parser.add_argument("--work_dir", default="")
    parser.add_argument("--budget_s", type=float, default=0.0, help="overall time limit (default: 450, dry 110)")
    parser.add_argument("--keep_work", action="store_true")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        spec = json.loads(args.spec)
        if spec["dry"]:
            os.environ["RLP_DEVICE"] = "cpu"
        write_json(Path(args.result), PHASES[args.phase](spec))
        return
    if args.dry_run:
        os.environ["RLP_DEVICE"] = "cpu"
    report = driver(args)
    brief = {k: report.get(k, {}) for k in ("ppo", "rloo", "trl", "sampling")}
    print(json.dumps({"out": args.out, "elapsed_s": report["elapsed_s"], "tests": {
        k: report["tests"].get(k) for k in ("status", "tests", "failures", "errors")},
        "status": {k: {run: r.get("status") for run, r in v.items()} for k, v in brief.items()}}, indent=1))


if __name__ == "__main__":
    main()
