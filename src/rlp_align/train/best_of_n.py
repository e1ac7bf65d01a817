"""Best-of-n: n policy samples per instruction, re-ranked by a reward function (the paper's baseline).

The answers file has the rows of ``rlp generate`` (`rlp_align.models.generation.answer_rows`); ``meta`` adds the
winning score and n. The reward may be one RM or an RM ensemble (Coste et al. 2024), see `rlp_align.train.ensemble`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlp_align.core.config import UNIQUE
from rlp_align.core.device import default_device
from rlp_align.core.errors import UserError
from rlp_align.core.io import write_jsonl
from rlp_align.data.records import Messages
from rlp_align.data.reward_path import apply_missing_eos_penalty
from rlp_align.models.generation import answer_rows, generate
from rlp_align.train.ensemble import RewardFn, make_reward_fn


@dataclass
class BestOfNConfig:
    policy: str = "tiny"  # usually the SFT policy
    reward_model: str = ""
    instructions_file: str = ""
    output_file: str = "answers.jsonl"
    reward_ensemble: list[str] = field(default_factory=list, metadata=UNIQUE)  # member RM folders; overrides reward_model
    ensemble_aggregate: Literal["mean", "wco", "uwo"] = "mean"
    uwo_lambda: float = 0.5
    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_prompt_length: int = 512
    batch_size: int = 16  # sequences per generation batch
    reward_batch_size: int = 16
    missing_eos_penalty: float | None = None  # subtracted from the score of a sample without EOS, as in PPO
    seed: int = 0
    limit: int | None = None
    skip_invalid: bool = False  # report and skip bad rows of input files instead of stopping (--skip_invalid)


class BestOfN(NamedTuple):
    best: str
    responses: list[str]
    scores: list[float]  # after the missing-EOS penalty
    truncated: list[bool]  # per sample: no EOS within max_new_tokens
    best_truncated: bool


def best_of_n(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_fn: RewardFn,
    prompts: list[Messages],
    n: int = 16,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    max_prompt_length: int = 512,
    batch_size: int = 16,
    seed: int = 0,
    missing_eos_penalty: float | None = None,
) -> list[BestOfN]:
    """Per prompt: (the highest-reward sample, all n samples, their rewards). Ties go to the first sample."""
    if n < 1:
        raise UserError(f"best-of-n needs n >= 1, got {n}")
    gens = generate(policy, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, batch_size=batch_size, seed=seed, max_prompt_length=max_prompt_length)
    flat_prompts = [p for p in prompts for _ in range(n)]
    scores = torch.as_tensor(reward_fn(flat_prompts, gens.texts), dtype=torch.float32)
    scores = apply_missing_eos_penalty(scores, gens.truncated, missing_eos_penalty).view(len(prompts), n)
    best = scores.argmax(-1).tolist()  # argmax returns the first maximum
    cut = [gens.truncated[i * n : (i + 1) * n] for i in range(len(prompts))]
    return [BestOfN(texts[b], texts, row.tolist(), flags, flags[b])
            for texts, row, b, flags in zip(gens.grouped(), scores, best, cut)]


def run_best_of_n(cfg: BestOfNConfig) -> dict[str, Any]:
    """`rlp best-of-n`: answer each instruction with its best of n samples under the RM (or ensemble)."""
    from rlp_align.data.readers import read_instructions
    from rlp_align.models import load_policy, load_tokenizer

    if not cfg.instructions_file:
        raise UserError("best-of-n needs --instructions_file (an instruction or AlpacaFarm eval file)")
    instructions = read_instructions(cfg.instructions_file, skip_invalid=cfg.skip_invalid)[: cfg.limit]
    device = default_device()
    tokenizer, policy = load_tokenizer(cfg.policy), load_policy(cfg.policy).to(device)
    reward_fn = make_reward_fn(cfg.reward_model or None, cfg.reward_ensemble, cfg.ensemble_aggregate, cfg.uwo_lambda,
                               device=device, batch_size=cfg.reward_batch_size,
                               max_length=cfg.max_prompt_length + cfg.max_new_tokens + 1,
                               max_prompt_length=cfg.max_prompt_length)
    results = best_of_n(policy, tokenizer, reward_fn, [inst.prompt for inst in instructions], cfg.n,
                        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                        max_prompt_length=cfg.max_prompt_length, batch_size=cfg.batch_size, seed=cfg.seed,
                        missing_eos_penalty=cfg.missing_eos_penalty)
    reward = list(cfg.reward_ensemble) or cfg.reward_model
    rows = answer_rows(instructions, [r.best for r in results], [r.best_truncated for r in results],
                       {"generator": f"best-of-{cfg.n}", "policy": str(cfg.policy), "reward_model": reward,
                        "ensemble_aggregate": cfg.ensemble_aggregate if cfg.reward_ensemble else None,
                        "n": cfg.n, "temperature": cfg.temperature, "seed": cfg.seed})
    for row, r in zip(rows, results):
        row["meta"]["score"] = max(r.scores)
    write_jsonl(cfg.output_file, rows)
    best = [max(r.scores) for r in results]
    return {"output_file": str(cfg.output_file), "answers": len(rows), "n": cfg.n,
            "mean_best_score": sum(best) / max(1, len(best)),
            "mean_score": sum(sum(r.scores) for r in results) / max(1, cfg.n * len(results))}
