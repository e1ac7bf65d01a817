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
   RLOO is timed when `rlp_align.rloo` exists on this commit, else recorded as not available;
5. ``trl``: TRL 1.12's PPOTrainer on the same settings on the 135M architecture (speed_worker_trl.py --gpu),
   when trl imports; the ratio is TRL's step time over ours;
6. ``sampling``: new tokens per second of `rlp_align.generation.generate` in bf16 at batch 64 and 256.
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

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
CARRIED_TOKENIZER = BENCH / ".gpu" / "smollm2-tokenizer"
ARCHS: dict[str, dict[str, Any]] = {  # LlamaConfig fields; vocab 49152 is SmolLM2's tokenizer
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=8192, vocab_size=49152, tie_word_embeddings=True, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True, rope_theta=10000.0),
}
SIZES = {  # the GPU settings of the issue, and the dry run's
    "gpu": dict(archs=["smollm2-135m", "llama-1b"], batch=64, new_tokens=256, prompt_tokens=128,
                sample_batches=[64, 256], ppo_epochs=2, peak_n=8192, budget_s=450, test_cap_s=150),
    "dry": dict(archs=["tiny"], batch=4, new_tokens=8, prompt_tokens=32, sample_batches=[4, 8], ppo_epochs=2,
                peak_n=256, budget_s=110, test_cap_s=40),
}
FLOPS = ("MFU = model FLOPs / seconds / measured bf16 matmul peak, attention-score FLOPs left out. Per token, "
         "a forward costs 2*N (N: non-embedding parameters of that model) plus 2*hidden*vocab for the LM head where "
         "logits are computed (generated and response tokens); a training forward+backward 3x that (LoRA: 2x, the "
         "frozen weights need no weight gradient). step = sampling (prompt prefill + generated tokens) + reference, "
         "value and reward forwards + ppo_epochs training passes of policy and value; update = the training passes.")


# ---------------------------------------------------------------------------------------------------------
# Driver


def git_commit() -> str | None:
    if os.environ.get("RLP_COMMIT"):
        return os.environ["RLP_COMMIT"]
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


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
        "dry_run": dry, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
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


def versions() -> dict[str, str | None]:
    import importlib

    found: dict[str, str | None] = {}
    for name in ("torch", "transformers", "accelerate", "peft", "trl"):
        try:
            found[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001  (absent or broken: recorded as such)
            found[name] = None
    found["python"] = sys.version.split()[0]
    return found


# ---------------------------------------------------------------------------------------------------------
# Phases (each runs in its own process)


def models_dir(spec: dict[str, Any]) -> Path:
    return Path(spec["work"]) / "models" / spec["arch"]


def tokenizer_folder() -> Path:
    from rlp_align.models import resolve_model

    return CARRIED_TOKENIZER if CARRIED_TOKENIZER.is_dir() else resolve_model("tiny")


def phase_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Best bf16 GEMM rate: 3 repeats of 10 n x n x n matmuls (2 n^3 FLOPs each)."""
    import torch

    from rlp_align.device import default_device

    device = default_device()
    n = spec["n"]
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    rates = []
    for _ in range(4):  # the first is warm-up (kernel selection, clocks)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        rates.append(10 * 2 * n**3 / (time.perf_counter() - t0))
    return {"flops_per_second": max(rates[1:]), "n": n, "dtype": "bfloat16", "measurements": rates[1:]}


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phase_build(spec: dict[str, Any]) -> dict[str, Any]:
    """A policy and a reward model of the architecture, random weights (seed 0), saved in bf16 (loaded as fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from rlp_align.device import default_device
    from rlp_align.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_folder())
    arch = dict(ARCHS[spec["arch"]])
    arch["vocab_size"] = max(arch["vocab_size"], len(tokenizer))
    config = LlamaConfig(**arch, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = models_dir(spec)
    torch.manual_seed(0)
    params = {}
    for name, cls in (("policy", LlamaForCausalLM), ("rm", LlamaForSequenceClassification)):
        kwargs = {"num_labels": 1} if name == "rm" else {}
        with torch.device(default_device()):
            model = cls(LlamaConfig(**config.to_dict(), **kwargs))
        params[name] = {"total": sum(p.numel() for p in model.parameters()), **count_params(model)}
        model.to(torch.bfloat16).save_pretrained(folder / name, safe_serialization=True)
        tokenizer.save_pretrained(folder / name)
        del model
    (folder / "params.json").write_text(json.dumps(params))
    return {"parameters": params, "vocab_size": arch["vocab_size"]}


def prompts_for(spec: dict[str, Any]) -> list:
    """``batch`` built-in instructions (the trainers cut them to ``prompt_tokens`` tokens)."""
    from rlp_align.instructions import builtin_pool

    return [inst.prompt for inst in builtin_pool(spec["batch"], seed=0)]


def count_params(model: Any) -> dict[str, int]:
    """Non-embedding parameters (the 2N per token of a forward) and hidden x vocab of the LM head."""
    config = model.config
    total = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    return {"non_embedding": total, "head": config.hidden_size * config.vocab_size}


def phase_trainer(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    """Two steps of PPO (full or LoRA) or RLOO in bf16; step 2 timed from the metrics rows' wall times.

    RLOO is PPO's trainer with ``RLOOConfig`` (estimator rloo, no critic) where `rlp_align.rloo` exists.
    """
    import dataclasses
    import importlib

    import torch

    from rlp_align import ppo as module
    from rlp_align.device import default_device
    from rlp_align.ensemble import make_reward_fn
    from rlp_align.training import LoraConfig, OptimConfig, read_metrics

    folder, out_dir = models_dir(spec), Path(spec["work"]) / f"{kind}-{spec['arch']}-{spec['tag']}"
    try:
        config_cls = importlib.import_module("rlp_align.rloo").RLOOConfig if kind == "rloo" else module.PPOConfig
    except (ImportError, AttributeError) as e:
        return {"available": False, "reason": f"not available on this commit: {e}"}
    train = module.train_ppo
    lora = spec["tag"] == "lora"
    names = {f.name for f in dataclasses.fields(config_cls)}
    if lora and "lora" not in names:
        return {"available": False, "reason": f"{config_cls.__name__} has no lora option on this commit"}
    b, big = spec["batch"], spec["arch"] == "llama-1b"
    wanted = dict(policy=str(folder / "policy"), reference=str(folder / "policy"), reward_model=str(folder / "rm"),
                  value_model=str(folder / "rm"), output_dir=str(out_dir), steps=2, rollout_batch_size=b,
                  step_batch_size=b, micro_batch_size=16 if big else None, rollout_chunk_size=b,
                  reward_batch_size=b, ppo_epochs=spec["ppo_epochs"], max_new_tokens=spec["new_tokens"],
                  max_prompt_length=spec["prompt_tokens"], temperature=1.0, lora=LoraConfig(enabled=lora),
                  optim=OptimConfig(learning_rate=1e-6, save_every=10**9, mixed_precision="bf16"), overwrite=True,
                  seed=0)
    cfg = config_cls(**{k: v for k, v in wanted.items() if k in names})
    reward_fn = make_reward_fn(str(folder / "rm"), device=default_device(), batch_size=b,
                               max_length=spec["prompt_tokens"] + spec["new_tokens"] + 1)
    module.save_final_outputs = lambda *a, **k: None  # the check times training steps, not saving
    train(cfg, prompts_for(spec), reward_fn)
    rows = read_metrics(out_dir)
    step = rows[-1]
    result: dict[str, Any] = {"available": True, "config": dataclasses.asdict(cfg),
                              "step_seconds": rows[-1]["time"] - rows[-2]["time"] if len(rows) >= 2 else None,
                              "phases": {k: step.get(k) for k in ("time_rollout", "time_score", "time_update",
                                                                  "update_tokens_per_second", "response_length")}}
    if torch.cuda.is_available():
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    params = json.loads((folder / "params.json").read_text())
    has_critic = kind != "rloo" and getattr(cfg, "estimator", "gae") != "rloo"
    # a LoRA run trains the critic fully where it is a separate model (issue15's `critic: separate`)
    full_critic = not lora or getattr(cfg, "critic", None) == "separate"
    result["mfu"] = mfu(step, result["step_seconds"], params["policy"], params["rm"], has_critic, spec, lora,
                        full_critic)
    return result


def mfu(step: dict[str, Any], step_seconds: float | None, policy: dict[str, int], rm: dict[str, int],
        has_critic: bool, spec: dict[str, Any], lora: bool, full_critic: bool) -> dict[str, Any]:
    """Model FLOPs of the timed step and of its update phase over the measured peak (see FLOPS)."""
    peak, epochs = spec.get("peak"), spec["ppo_epochs"]
    if not peak or not step_seconds or not step.get("update_tokens_per_second") or not step.get("time_update"):
        return {"step": None, "update": None, "reason": "missing peak or per-phase timings"}
    tokens = step["update_tokens_per_second"] * step["time_update"] / epochs  # prompt + response, one pass
    response = step["response_length"] * spec["batch"]
    forward = 2 * policy["non_embedding"] * tokens + 2 * policy["head"] * response  # one policy pass over the rollout
    rm_forward = 2 * rm["non_embedding"] * tokens  # the reward model; the critic (value model) has its size
    critic = rm_forward if has_critic else 0
    update = epochs * ((2 if lora else 3) * forward + (3 if full_critic else 2) * critic)
    # sampling (prefill + generated tokens: one forward), reference, critic and reward model forwards
    step_flops = forward + forward + critic + rm_forward + update
    return {"step": step_flops / step_seconds / peak, "update": update / step["time_update"] / peak,
            "step_flops": step_flops, "update_flops": update}


def phase_sampling(spec: dict[str, Any]) -> dict[str, Any]:
    """New tokens per second of our KV-cache sampler in bf16, at each batch size (after a short warm-up)."""
    import torch

    from rlp_align.device import autocast, default_device
    from rlp_align.generation import generate
    from rlp_align.models import load_policy, load_tokenizer

    device = default_device()
    folder = models_dir(spec) / "policy"
    model, tokenizer = load_policy(folder).to(device).eval(), load_tokenizer(folder)
    results = {}
    with autocast("bf16", device):
        generate(model, tokenizer, prompts_for({**spec, "batch": 4}), max_new_tokens=4, batch_size=4,
                 progress=False)  # warm-up
        for b in spec["sample_batches"]:
            prompts = prompts_for({**spec, "batch": b})
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            t0 = time.perf_counter()
            out = generate(model, tokenizer, prompts, max_new_tokens=spec["new_tokens"], temperature=1.0,
                           batch_size=b, max_prompt_length=spec["prompt_tokens"], progress=False)
            sync(device)
            seconds = time.perf_counter() - t0
            new = sum(len(r) for r in out.response_ids)
            results[str(b)] = {"seconds": seconds, "new_tokens": new, "tokens_per_second": new / seconds,
                               "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30
                               if torch.cuda.is_available() else None}
    return {"batches": results, "max_new_tokens": spec["new_tokens"]}


def phase_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL 1.12's PPOTrainer via speed_worker_trl.py (--gpu: bf16 on CUDA) on the same models and prompts."""
    try:
        import trl  # noqa: F401
        from trl.experimental.ppo import PPOTrainer  # noqa: F401
    except Exception as e:  # noqa: BLE001  (any import failure means: not measurable here)
        return {"available": False, "reason": f"trl does not import: {type(e).__name__}: {e}"}
    from rlp_align.models import load_tokenizer
    from rlp_align.templates import encode_prompt

    folder, work = models_dir(spec), Path(spec["work"]) / "trl"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(folder / "policy")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input_ids": encode_prompt(tokenizer, p)[-spec["prompt_tokens"]:]})
                               + "\n" for p in prompts_for(spec)))
    out = work / "trl.json"
    cmd = [sys.executable, str(BENCH / "speed_worker_trl.py"), "--policy", str(folder / "policy"),
           "--reward_model", str(folder / "rm"), "--tokenizer", str(folder / "policy"), "--prompts", str(prompts),
           "--steps", "2", "--batch", str(spec["batch"]), "--new_tokens", str(spec["new_tokens"]),
           "--ppo_epochs", str(spec["ppo_epochs"]), "--work_dir", str(work), "--out", str(out)]
    cmd += [] if spec["dry"] else ["--gpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"available": True, "error": proc.stderr[-3000:]}
    d = json.loads(out.read_text())
    return {"available": True, "step_seconds": d["step_seconds"][0] if d["step_seconds"] else None,
            "phases": d["phases"], "peak_gpu_memory_gb": d.get("peak_gpu_memory_gb"), "versions": d["versions"],
            "generated_width": d["generated_width"]}


PHASES = {"peak": phase_peak, "build": phase_build, "ppo": lambda s: phase_trainer(s, "ppo"),
          "rloo": lambda s: phase_trainer(s, "rloo"), "sampling": phase_sampling, "trl": phase_trl}


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
