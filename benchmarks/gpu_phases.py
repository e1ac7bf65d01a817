"""The phases of the GPU check (`gpu_check.py` runs each in its own subprocess): what each one measures.

``peak`` (the bf16 matmul rate), ``build`` (random-weight models from configs), ``ppo`` / ``rloo`` (two steps
of our trainer, step 2 timed, with its MFU), ``sampling`` (new tokens per second) and ``trl`` (TRL 1.12's
PPOTrainer on the same settings). Each takes a ``spec`` dict and returns a JSON-able dict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import BENCH

CARRIED_TOKENIZER = BENCH / ".gpu" / "smollm2-tokenizer"
ARCHS: dict[str, dict[str, Any]] = {  # LlamaConfig fields; vocab 49152 is SmolLM2's tokenizer
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=8192, vocab_size=49152, tie_word_embeddings=True, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, tie_word_embeddings=True, rope_theta=10000.0),
}
FLOPS = ("MFU = model FLOPs / seconds / measured bf16 matmul peak, attention-score FLOPs left out. Per token, "
         "a forward costs 2*N (N: non-embedding parameters of that model) plus 2*hidden*vocab for the LM head where "
         "logits are computed (generated and response tokens); a training forward+backward 3x that (LoRA: 2x, the "
         "frozen weights need no weight gradient). step = sampling (prompt prefill + generated tokens) + reference, "
         "value and reward forwards + ppo_epochs training passes of policy and value; update = the training passes.")


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

    from rlp_align.core.device import default_device

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

    from rlp_align.core.device import default_device
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
    from rlp_align.worlds.instructions import builtin_pool

    return [inst.prompt for inst in builtin_pool(spec["batch"], seed=0)]


def count_params(model: Any) -> dict[str, int]:
    """Non-embedding parameters (the 2N per token of a forward) and hidden x vocab of the LM head."""
    config = model.config
    total = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    return {"non_embedding": total, "head": config.hidden_size * config.vocab_size}


def phase_trainer(spec: dict[str, Any], kind: str) -> dict[str, Any]:
    """Two steps of PPO (full or LoRA) or RLOO in bf16; step 2 timed from the metrics rows' wall times.

    RLOO is PPO's trainer with ``RLOOConfig`` (estimator rloo, no critic) where `rlp_align.train.rloo` exists.
    """
    import dataclasses
    import importlib

    import torch

    from rlp_align.core.device import default_device
    from rlp_align.train import ppo as module
    from rlp_align.train.ensemble import make_reward_fn
    from rlp_align.train.training import LoraConfig, OptimConfig, read_metrics

    folder, out_dir = models_dir(spec), Path(spec["work"]) / f"{kind}-{spec['arch']}-{spec['tag']}"
    try:
        config_cls = importlib.import_module("rlp_align.train.rloo").RLOOConfig if kind == "rloo" else module.PPOConfig
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

    from rlp_align.core.device import autocast, default_device
    from rlp_align.models import load_policy, load_tokenizer
    from rlp_align.models.generation import generate

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
    from rlp_align.data.templates import encode_prompt
    from rlp_align.models import load_tokenizer

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
