"""The policy-sample set P of RLP step 4: n samples per unlabelled instruction, at temperature 1.0.

Rows are ``{"prompt": [messages], "responses": [n strings], "meta": {policy, temperature, seed, n, ...}}``,
written atomically; `rlp_align.data.readers.read_sample_sets` reads them back for RLP-UML and RLP-SPG.
Sampling is seeded and deterministic (see `rlp_align.models.generation`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlp_align.core.device import autocast, default_device
from rlp_align.core.errors import UserError
from rlp_align.core.io import write_jsonl
from rlp_align.data.records import Messages, SampleSet
from rlp_align.models.generation import generate, special_ids_but_eos


@dataclass
class SampleConfig:
    policy: str = "tiny"  # the Step-3 PPO policy
    prompts_file: str = ""  # unlabelled instructions U
    output_file: str = "samples.jsonl"
    n: int = 10  # [paper]
    temperature: float = 1.0  # [paper]
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_prompt_length: int = 512
    batch_size: int = 16  # sequences per generation batch
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16/fp16 autocast; parameters stay fp32
    limit: int | None = None  # only the first `limit` prompts
    engine: Literal["torch", "vllm"] = "torch"  # vllm: optional extra, GPU only (`pip install rlp-align[vllm]`)
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


def _check_sample_count(n: int) -> None:
    if n < 2:
        raise UserError(f"a policy-sample set needs n >= 2 samples per prompt (RLP uses 10), got {n}")


def sample_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    n: int = 10,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    max_prompt_length: int = 512,
    batch_size: int = 16,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> list[SampleSet]:
    """``n`` samples per prompt, one `SampleSet` per prompt in input order.

    ``meta["max_prompt_length"]`` records how the prompts were cut (`templates.fit_prompt`), so that SPG's reward
    model scores the samples on the prompt tokens the policy read."""
    _check_sample_count(n)
    gens = generate(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, batch_size=batch_size, seed=seed, max_prompt_length=max_prompt_length)
    base = {"temperature": temperature, "seed": seed, "n": n, "max_prompt_length": max_prompt_length,
            **(meta or {})}
    return [
        SampleSet(prompt, responses, {**base, "truncated": gens.truncated[i * n : (i + 1) * n]})
        for i, (prompt, responses) in enumerate(zip(prompts, gens.grouped()))
    ]


def sample_with_vllm(
    policy_path: str,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    n: int = 10,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    max_prompt_length: int = 512,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> list[SampleSet]:
    """The same sample set drawn with vLLM's paged-attention engine (GPU only; much faster at n = 10).

    Prompts are given as the token ids our own sampler would read (`templates.encode_prompts`: the chat
    template, the user text cut to ``max_prompt_length``), so vLLM sees exactly what the torch engine sees.
    Samples are seeded but not token-identical to the torch engine's.
    """
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise UserError("engine 'vllm' needs vLLM on a CUDA machine: `pip install vllm`, or use engine 'torch'") from None
    from rlp_align.data.templates import encode_prompts

    _check_sample_count(n)
    encoded = encode_prompts(tokenizer, prompts, max_prompt_length, "sampling")
    llm = LLM(model=str(policy_path), seed=seed, trust_remote_code=False)
    # every special token but EOS is banned, as in our own sampler (`generation.special_ids_but_eos`)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                            logit_bias={i: -100.0 for i in special_ids_but_eos(tokenizer)})
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in encoded], params)  # vLLM's TokensPrompt
    base = {"temperature": temperature, "seed": seed, "n": n, "engine": "vllm",
            "max_prompt_length": max_prompt_length, **(meta or {})}
    return [SampleSet(prompt, [c.text for c in out.outputs],
                      {**base, "truncated": [c.finish_reason == "length" for c in out.outputs]})
            for prompt, out in zip(prompts, outputs)]


def write_sample_sets(path: str, sets: list[SampleSet]) -> None:
    """JSONL rows ``{prompt, responses, meta}``, atomically."""
    write_jsonl(path, (asdict(s) for s in sets))


def run_sample(cfg: SampleConfig) -> dict[str, Any]:
    """`rlp sample`: read prompts, sample the policy n times each, write the sample set."""
    from rlp_align.data.readers import read_instructions
    from rlp_align.models import load_policy, load_tokenizer

    if not cfg.prompts_file:
        raise UserError("sample needs --prompts_file (the unlabelled instructions to sample the policy on)")
    prompts = [inst.prompt for inst in read_instructions(cfg.prompts_file, skip_invalid=cfg.skip_invalid)][: cfg.limit]
    tokenizer = load_tokenizer(cfg.policy)
    if cfg.engine == "vllm":
        from rlp_align.models import resolve_model

        sets = sample_with_vllm(str(resolve_model(cfg.policy)), tokenizer, prompts, cfg.n,
                                temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                max_prompt_length=cfg.max_prompt_length, seed=cfg.seed,
                                meta={"policy": str(cfg.policy)})
    else:
        device = default_device()
        model = load_policy(cfg.policy).to(device)
        with autocast(cfg.mixed_precision, device):
            sets = sample_policy(model, tokenizer, prompts, cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                                 max_new_tokens=cfg.max_new_tokens, max_prompt_length=cfg.max_prompt_length,
                                 batch_size=cfg.batch_size, seed=cfg.seed, meta={"policy": str(cfg.policy)})
    write_sample_sets(cfg.output_file, sets)
    responses = [r for s in sets for r in s.responses]
    return {
        "output_file": str(cfg.output_file),
        "prompts": len(sets),
        "samples": len(responses),
        "truncated_fraction": sum(t for s in sets for t in s.meta["truncated"]) / max(1, len(responses)),
        "mean_response_chars": sum(map(len, responses)) / max(1, len(responses)),
        "distinct_fraction": sum(len(set(s.responses)) for s in sets) / max(1, len(responses)),
    }
