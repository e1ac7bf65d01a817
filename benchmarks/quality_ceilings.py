"""Per seed, beside the pipeline run: the study's ceilings and every RM's on-policy accuracy (issue 28).

- **Gold PPO**: PPO1 (same prompts, steps, KL coefficient, seed) with the gold judge itself as the reward
  (`stages_impl.train_ppo(gold_reward=True)`): the best any refreshed RM could give. Its final answers are made
  exactly as the evaluation stage makes PPO1's (`stages_impl.answer_eval`: same generate settings, same seed, same
  eval prompts), so gold PPO - PPO1 is paired per eval prompt.
- **RM capacity**: an RM trained like the oracle RM (`stages_impl.refine_rm`, method oracle, the same refine
  settings), on >= 10,000 noise-free gold-labelled pairs of PPO1 samples of different gold, scored on the
  evaluation stage's held-out on-policy pairs.
- **On-policy accuracy** of RM0, the RM capacity and the ensemble members and aggregates, per pair, on the
  same on-policy pairs (the refined RMs' come from the evaluation stage itself).
- **UML baseline**: RLP-UML's head trained alone on the frozen RM0 (`refine.uml_head_on_frozen_rm`): the
  I_JSD that views sharing a prompt give without any learning.
Everything is cached under ``<run>/quality/`` so a killed study resumes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

CAPACITY_PAIRS = 10_000
CAPACITY_SAMPLE_ROUNDS = 2  # extra rounds on the unlabelled pool after the preference and SFT pools


def _manifest(run_dir: Path, stage: str) -> dict[str, Any]:
    return json.loads((run_dir / stage / "manifest.json").read_text())


def _outputs(run_dir: Path, stage: str) -> dict[str, Any]:
    return _manifest(run_dir, stage)["outputs"]


def _sft(cfg: Any, run_dir: Path) -> str:
    path = run_dir / "01_sft" / "manifest.json"
    return json.loads(path.read_text())["outputs"]["model"] if path.exists() else cfg.model


def _gold(judge: Any, answers_file: str) -> list[float]:
    """Per-prompt gold of an answers file, read as the evaluation stage reads it."""
    from rlp_align.core.io import read_rows
    from rlp_align.data.records import Instruction

    rows = [r for _, r in read_rows(answers_file)]
    instructions = [Instruction(r["prompt"], r.get("reference"), r.get("constraints") or [], r.get("meta") or {})
                    for r in rows]
    return judge.score(instructions, [r["response"] for r in rows])


def gold_ppo(cfg: Any, run_dir: Path, judge: Any) -> dict[str, Any]:
    """PPO1 against the gold judge: its evaluation points, and per-prompt gold of its final answers and PPO1's."""
    from rlp_align.pipeline import stages_impl
    from rlp_align.pipeline.pipeline_config import world_config
    from rlp_align.pipeline.run import ppo_section

    folder, pools = run_dir / "quality" / "ppo1_gold", _outputs(run_dir, "00_instructions")
    if not (folder / "summary.json").exists():
        stages_impl.train_ppo(ppo_section(cfg), cfg.annotator, world_config(cfg), _sft(cfg, run_dir), [], pools,
                              cfg.seed, folder, gold_reward=True)
    answers = run_dir / "quality" / "ppo1_gold_answers"
    if not (answers / "answers.jsonl").exists():
        answers.mkdir(parents=True, exist_ok=True)
        stages_impl.answer_eval(cfg.generate, str(folder / "model"), pools, cfg.seed, answers)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"eval_points": [{"step": r["step"], "kl": r["eval/kl"], "per_prompt": r["eval/per_prompt"]}
                            for r in rows if "eval/per_prompt" in r],
            "per_prompt_gold": _gold(judge, str(answers / "answers.jsonl")),
            "ppo_per_prompt_gold": _gold(judge, _outputs(run_dir, "12_answers_ppo")["answers"])}


def gold_pairs(judge: Any, instructions: list[Any], responses: list[list[str]], n_pairs: int) -> list[Any]:
    """Noise-free preferences between distinct answers of different gold, taken round by round over the
    instructions (every instruction's first pair, then every one's second, ...), at most ``n_pairs``."""
    from rlp_align.data.records import Preference

    per_prompt = []
    for x, answers in zip(instructions, responses):
        distinct = list(dict.fromkeys(a for a in answers if a.strip()))
        gold = judge.score([x] * len(distinct), distinct) if distinct else []
        per_prompt.append([(x, distinct[i], distinct[j], gold[i] > gold[j]) for i in range(len(distinct))
                           for j in range(i + 1, len(distinct)) if gold[i] != gold[j]])
    out: list[Any] = []
    for rnd in range(max((len(p) for p in per_prompt), default=0)):
        for pairs in per_prompt:
            if rnd < len(pairs) and len(out) < n_pairs:
                x, a, b, a_better = pairs[rnd]
                out.append(Preference(x.prompt, a if a_better else b, b if a_better else a, {"gold_p": 1.0}))
    return out


def rm_capacity(cfg: Any, run_dir: Path, judge: Any, n_pairs: int = CAPACITY_PAIRS) -> dict[str, Any]:
    """The RM capacity: the oracle RM's stage and settings, on ``n_pairs`` noise-free pairs of PPO1 samples."""
    from rlp_align.data import read_instructions, read_sample_sets, write_preferences
    from rlp_align.pipeline import stages_impl
    from rlp_align.pipeline.run import refine_section

    folder = run_dir / "quality" / "rm_capacity"
    if (folder / "model" / "config.json").exists() and (folder / "info.json").exists():
        return json.loads((folder / "info.json").read_text())
    pools = _outputs(run_dir, "00_instructions")
    ppo1 = _manifest(run_dir, "04_ppo1")
    samples = next(m["outputs"] for p in sorted(run_dir.glob("05_samples*/manifest.json"))
                   if (m := json.loads(p.read_text())).get("inputs", {}).get("policy") == ppo1["hash"])
    # PPO1's samples on every training prompt (never an eval prompt): the stage's on the unlabelled pool, then the
    # preference and SFT pools, then the unlabelled pool again with other seeds, until n_pairs pairs
    sources = [name for name in ("unlabelled", "preference", "sft") if pools.get(name)]
    sources += ["unlabelled"] * CAPACITY_SAMPLE_ROUNDS
    instructions, by_text = [], {}
    for name in dict.fromkeys(sources):
        for x in read_instructions(pools[name]):
            if x.text not in by_text:
                by_text[x.text] = len(instructions)
                instructions.append(x)
    responses: list[list[str]] = [[] for _ in instructions]
    sample_files = [samples["samples"]]
    for rnd in range(len(sources)):
        for s in read_sample_sets(sample_files[-1]):
            responses[by_text[s.prompt[-1]["content"]]] += s.responses
        pairs = gold_pairs(judge, instructions, responses, n_pairs)
        if len(pairs) >= n_pairs or rnd == len(sources) - 1:
            break
        more = folder / f"samples{rnd + 1}"  # PPO1 again, on the next pool (another seed)
        if not (more / "samples.jsonl").exists():  # written atomically: present means complete (resume)
            more.mkdir(parents=True, exist_ok=True)
            stages_impl.sample_policy(cfg.sample, ppo1["outputs"]["model"], {**pools, "unlabelled": pools[sources[rnd + 1]]},
                                      cfg.seed + 100 * (rnd + 1), more)
        sample_files.append(str(more / "samples.jsonl"))
    folder.mkdir(parents=True, exist_ok=True)
    write_preferences(folder / "pairs.jsonl", pairs)
    stages_impl.refine_rm(refine_section(cfg), "oracle", _sft(cfg, run_dir), _outputs(run_dir, "03_rm0"),
                          _outputs(run_dir, "02_preferences"), samples, {"synthetic": str(folder / "pairs.jsonl")},
                          cfg.seed, folder / "rm")
    info = {"model": str(folder / "rm" / "model"), "pairs": len(pairs), "requested_pairs": n_pairs,
            "sample_files": sample_files}
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return info


def onpolicy_correct(cfg: Any, run_dir: Path, extra_rms: dict[str, str]) -> dict[str, list[float]]:
    """Per on-policy pair (the evaluation stage's), 1 / 0.5 / 0 for RM0, each of ``extra_rms``, each ensemble
    member (``Ensemble RM<i>``) and each ensemble aggregate (``Ensemble-<AGG> RM``), as `rm_accuracy` credits."""
    import torch

    from rlp_align.core.device import default_device
    from rlp_align.data import read_preferences
    from rlp_align.models import load_reward_model, load_tokenizer, score_texts
    from rlp_align.train.ensemble import aggregate

    on_policy = _outputs(run_dir, "13_onpolicy_pairs")
    pairs = read_preferences(on_policy["pairs_file"]) if on_policy["pairs"] else []
    if not pairs:
        return {}
    members = {f"Ensemble RM{i}": str(p.parent / "model") for i, p in
               enumerate(sorted(run_dir.glob("09_ens_rm*/manifest.json")))}
    paths = {"RM0": _outputs(run_dir, "03_rm0")["model"], **extra_rms, **members}
    prompts = [p.prompt for p in pairs]
    margins = {}
    for label, path in paths.items():
        model, tok = load_reward_model(path).to(default_device()), load_tokenizer(path)
        size, length = cfg.reward.optim.eval_batch_size, cfg.reward.max_length
        chosen = score_texts(model, tok, prompts, [p.chosen for p in pairs], size, length)
        rejected = score_texts(model, tok, prompts, [p.rejected for p in pairs], size, length)
        margins[label] = (chosen.double(), rejected.double())
    if members:
        for agg in cfg.ensemble.aggregates:
            both = [aggregate(torch.stack([margins[m][k] for m in members]), agg, cfg.ensemble.uwo_lambda)
                    for k in (0, 1)]
            margins[f"Ensemble-{agg.upper()} RM"] = (both[0], both[1])

    def credit(chosen: Any, rejected: Any) -> list[float]:
        margin = chosen - rejected
        return ((margin > 0).double() + 0.5 * (margin == 0).double()).tolist()

    return {label: credit(*m) for label, m in margins.items()}


def uml_baseline(cfg: Any, run_dir: Path) -> float | None:
    """The final I_JSD of RLP-UML's head trained alone on the frozen RM0 (same steps, batches, beta schedule)."""
    from rlp_align.data import read_sample_sets
    from rlp_align.pipeline.run import refine_section
    from rlp_align.rlp.refine import uml_head_on_frozen_rm

    stage = run_dir / "07_refine_uml"
    if not (stage / "summary.json").exists():
        return None
    summary = json.loads((stage / "summary.json").read_text())
    wanted = _manifest(run_dir, "07_refine_uml")["inputs"]["samples"]  # the samples stage's hash
    samples = read_sample_sets(next(m["outputs"]["samples"] for p in sorted(run_dir.glob("05_samples*/manifest.json"))
                                    if (m := json.loads(p.read_text()))["hash"] == wanted))
    refine = dataclasses.replace(refine_section(cfg), method="uml", seed=cfg.seed)
    stats = uml_head_on_frozen_rm(refine, _outputs(run_dir, "03_rm0")["model"], samples, summary["steps"])
    return stats.get("i_jsd")


def sizes(run_dir: Path) -> dict[str, Any]:
    """What stage 00_instructions says of its eval pool (``sizes``: n_eval, eval_distinct, eval_in_training)."""
    return dict(_outputs(run_dir, "00_instructions").get("sizes") or {})


def ceilings(cfg: Any, run_dir: Path, judge: Any, capacity_pairs: int = CAPACITY_PAIRS) -> dict[str, Any]:
    """Every per-seed measurement of this module, as the seed's record keys."""
    capacity = rm_capacity(cfg, run_dir, judge, capacity_pairs)
    return {"gold_ppo": gold_ppo(cfg, run_dir, judge), "rm_capacity": capacity,
            "onpolicy_correct": onpolicy_correct(cfg, run_dir, {"RM capacity": capacity["model"]}),
            "uml_baseline_i_jsd": uml_baseline(cfg, run_dir)}
