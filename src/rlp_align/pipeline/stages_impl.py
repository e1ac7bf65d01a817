"""What each pipeline stage does, one function per stage: ``fn(sections..., upstream outputs..., folder)``.

A stage receives only its own config section(s), the plain values it borrows from other sections (named
arguments, e.g. ``batch_size`` of generation), and the outputs of the stages upstream; `StageCache.stage`
hashes exactly these arguments into the stage's key, so a key cannot miss a setting the stage reads.
Each function writes only inside its stage folder and returns a small dict of output paths and headline
numbers, which the stage manifest records. Trainers are called through their ``run_*`` entry points with
the section config, so ``rlp run`` and the single-stage commands share one path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rlp_align.core.errors import UserError
from rlp_align.core.io import write_json, write_jsonl
from rlp_align.data import read_instructions, read_preferences, read_sample_sets, write_preferences
from rlp_align.data.records import Instruction, Preference, without_empty_responses
from rlp_align.judge.annotators.base import AnnotatorConfig
from rlp_align.models.generation import GenerateConfig
from rlp_align.pipeline.pipeline_config import (
    DataConfig,
    WorldConfig,
    overlap_sizes,
    prompt_key,
    split,
    split_by_content,
    write_instructions,
)
from rlp_align.rlp.refine import RefineConfig
from rlp_align.rlp.spg import SPGConfig
from rlp_align.train.best_of_n import BestOfNConfig
from rlp_align.train.ppo import PPOConfig
from rlp_align.train.reward import RewardConfig
from rlp_align.train.sample import SampleConfig
from rlp_align.train.sft import SFTConfig


def _annotator(annotator: AnnotatorConfig, world: WorldConfig):
    """The gold judge. The instruction world's is the configured `annotator` (rule, an RM or an LLM judge);
    any other world's is its own program (``judge(temperature, **world.judge)``)."""
    from rlp_align.judge.annotators import make_annotator
    from rlp_align.worlds import load_world

    if world.name == "instructions":
        return make_annotator(annotator)
    return load_world(world.name).judge(temperature=annotator.temperature, **world.judge)


def _two_samples(policy: str, instructions: list[Instruction], temperature: float, max_new_tokens: int,
                 batch_size: int, seed: int, n: int = 2,
                 pick: Any = None) -> tuple[list[Instruction], list[list[str]], int, list[list[bool]]]:
    """Two samples of ``policy`` per instruction: the pairs an annotator labels (D, on-policy pairs).

    With ``n`` > 2 samples per instruction, ``pick(instruction, samples)`` chooses the two (their indices, or
    None to drop the instruction). Returns the instructions kept, their pairs, how many were dropped because a
    sample was empty (the policy said EOS at once): a preference row with an empty response is invalid, and the
    readers refuse it; and each kept pair's truncated flags (cut at max_new_tokens), which D keeps in its meta.
    """
    from rlp_align.core.device import default_device
    from rlp_align.models import load_policy, load_tokenizer
    from rlp_align.models.generation import generate

    device = default_device()
    gens = generate(load_policy(policy).to(device), load_tokenizer(policy), [x.prompt for x in instructions], n=n,
                    temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    kept, empty = [], 0
    for i, (x, samples) in enumerate(zip(instructions, gens.grouped())):
        chosen = (0, 1) if pick is None else pick(x, samples)
        if chosen is None:
            continue
        pair, cut = [samples[j] for j in chosen], [gens.truncated[n * i + j] for j in chosen]
        if all(t.strip() for t in pair):
            kept.append((x, pair, cut))
        else:
            empty += 1
    return [x for x, _, _ in kept], [p for _, p, _ in kept], empty, [c for _, _, c in kept]


def build_model(world: WorldConfig, seed: int, folder: Path) -> dict[str, Any]:
    """A world's policy built from random initialisation (the micro world's tiny Llama), before SFT."""
    from rlp_align.worlds import load_world

    load_world(world.name).build_model(folder / "model", seed=seed, pool=world.pool, **world.model)
    return {"model": str(folder / "model")}


def build_pools(data: DataConfig, world: WorldConfig, seed: int, folder: Path) -> dict[str, Any]:
    """SFT / preference / unlabelled instruction pools and the eval set, no prompt in two of them (the world's own),
    or read from files; ``sizes`` says how held out the eval set is."""
    import warnings

    from rlp_align.worlds import load_world
    from rlp_align.worlds.instructions import load_instruction_pool

    d = data
    if d.source == "builtin":
        pool = load_world(world.name).pool(d.n_sft + d.n_preference + d.n_unlabelled + d.n_eval, seed=seed,
                                           **world.pool)
        wanted = [d.n_eval, d.n_preference, d.n_unlabelled, d.n_sft]
        evaluation, pref, unlabelled, sft = split_by_content(pool, wanted, seed)
        got = [len(evaluation), len(pref), len(unlabelled)]
        if got != wanted[:3]:
            raise UserError(f"world {world.name!r} gave {len({prompt_key(x) for x in pool})} distinct prompts, too few "
                            f"for n_eval {d.n_eval} + n_preference {d.n_preference} + n_unlabelled {d.n_unlabelled} "
                            "prompts that no other pool shares: lower data.n_eval / data.n_preference / "
                            "data.n_unlabelled" + (", or raise world_options.pool.digits" if world.name == "micro" else ""))
    else:
        sizes = [d.n_sft, d.n_preference, d.n_unlabelled]
        train = load_instruction_pool(d.train_file, with_constraints=d.with_constraints, seed=seed,
                                      skip_invalid=d.skip_invalid)
        sft, pref, unlabelled = split(train, sizes, seed)
        evaluation = load_instruction_pool(d.eval_file, with_constraints=d.with_constraints, seed=seed + 1,
                                           skip_invalid=d.skip_invalid)
        evaluation = split(evaluation, [d.n_eval], seed)[0]
    sizes = overlap_sizes(evaluation, [sft, pref, unlabelled])
    if sizes["eval_in_training"]:
        warnings.warn(f"{sizes['eval_in_training']} of {sizes['n_eval']} eval prompts also stand in a training pool "
                      f"({d.eval_file} and {d.train_file}): their scores are partly in-sample", RuntimeWarning,
                      stacklevel=2)
    out = {name: write_instructions(folder / f"{name}.jsonl", items)
           for name, items in [("sft", sft), ("preference", pref), ("unlabelled", unlabelled), ("eval", evaluation)]
           if items}
    return {**out, "n_sft": len(sft), "n_preference": len(pref), "n_unlabelled": len(unlabelled),
            "n_eval": len(evaluation), "sizes": sizes}


def train_sft(sft: SFTConfig, model: str, pools: dict, seed: int, folder: Path) -> dict[str, Any]:
    from rlp_align.train.sft import run_sft

    summary = run_sft(dataclasses.replace(sft, model=model, train_file=pools["sft"], output_dir=str(folder),
                                          seed=seed))
    return {"model": str(folder / "model"), "final_loss": (summary.get("train") or {}).get("loss")}


def collect_preferences(annotator: AnnotatorConfig, world: WorldConfig, sft_model: str, pools: dict, preference_file: str | None,
                        skip_invalid: bool, heldout_fraction: float, label_noise: float, pair_temperature: float,
                        max_new_tokens: int, batch_size: int, seed: int, folder: Path) -> dict[str, Any]:
    """D: a human file, or two SFT samples per instruction labelled by the noisy simulated annotator."""
    from rlp_align.judge.annotate import label_pairs

    empty = identical = 0  # instructions dropped because a sample was empty / the two samples were the same
    if preference_file:
        prefs = read_preferences(preference_file, skip_invalid=skip_invalid)
    else:
        instructions, pairs, empty, cut = _two_samples(sft_model, read_instructions(pools["preference"]),
                                                       pair_temperature, max_new_tokens, batch_size, seed=seed)
        # Two identical answers carry no preference: their label would be a coin flip that no RM can fit (a
        # peaked policy on a short-answer task samples the same answer twice often: 21 % of the micro world's D)
        differ = [i for i, (a, b) in enumerate(pairs) if a != b]
        identical = len(pairs) - len(differ)
        instructions, pairs, cut = [instructions[i] for i in differ], [pairs[i] for i in differ], [cut[i] for i in differ]
        prefs = label_pairs(_annotator(annotator, world), instructions, [p[0] for p in pairs], [p[1] for p in pairs],
                            noise=label_noise, temperature=annotator.temperature, seed=seed,
                            truncated_a=[c[0] for c in cut], truncated_b=[c[1] for c in cut])
    heldout = max(1, int(len(prefs) * heldout_fraction))
    train, test = split(prefs, [len(prefs) - heldout, heldout], seed)
    write_preferences(folder / "train.jsonl", train)
    write_preferences(folder / "heldout.jsonl", test)
    return {"train": str(folder / "train.jsonl"), "heldout": str(folder / "heldout.jsonl"),
            "pairs": len(train), "heldout_pairs": len(test), **({"dropped_empty": empty} if empty else {}),
            **({"dropped_identical": identical} if identical else {})}


def train_rm(reward: RewardConfig, sft_model: str, prefs: dict, seed: int, folder: Path) -> dict[str, Any]:
    from rlp_align.train.reward import run_reward

    summary = run_reward(dataclasses.replace(reward, model=sft_model, train_file=prefs["train"],
                                             eval_file=prefs["heldout"], output_dir=str(folder), seed=seed))
    return {"model": str(folder / "model"), "heldout_accuracy": (summary.get("eval") or {}).get("accuracy")}


def train_ppo(ppo: PPOConfig, annotator: AnnotatorConfig, world: WorldConfig, sft_model: str, reward_models: list[str], pools: dict,
              seed: int, folder: Path, aggregate: str | None = None, uwo_lambda: float = 0.5,
              gold_reward: bool = False) -> dict[str, Any]:
    """PPO from the SFT policy; the gold annotator scores every rollout (over-optimisation curves).

    One reward model, or an ensemble of them combined by ``aggregate`` (with ``uwo_lambda`` for "uwo"), or
    with ``gold_reward`` the gold judge itself (`ensemble.JudgeReward`; ``reward_models`` unused): the ceiling
    of any refreshed RM."""
    from rlp_align.core.device import default_device
    from rlp_align.train.ensemble import JudgeReward, make_reward_fn
    from rlp_align.train.ppo import train_ppo as ppo_train

    ensemble = {"reward_ensemble": reward_models, "ensemble_aggregate": aggregate, "uwo_lambda": uwo_lambda} \
        if aggregate else {"reward_model": "" if gold_reward else reward_models[0], "reward_ensemble": []}
    ppo_cfg = dataclasses.replace(ppo, policy=sft_model, reference=sft_model, prompts_file=pools["unlabelled"],
                                  output_dir=str(folder), seed=seed, **ensemble)
    instructions = read_instructions(pools["unlabelled"])
    evaluation = read_instructions(pools["eval"]) if ppo.eval_every else []  # evaluation points along PPO
    by_prompt = {x.text: x for x in instructions + evaluation}
    judge = _annotator(annotator, world)
    if gold_reward:
        reward_fn = JudgeReward(judge, instructions + evaluation)
    else:
        reward_fn = make_reward_fn(ppo_cfg.reward_model or None, ppo_cfg.reward_ensemble, ppo_cfg.ensemble_aggregate,
                                   ppo_cfg.uwo_lambda, device=default_device(),
                                   batch_size=ppo_cfg.reward_batch_size,
                                   max_length=ppo_cfg.max_prompt_length + ppo_cfg.max_new_tokens + 1,
                                   max_prompt_length=ppo_cfg.max_prompt_length)

    def gold_fn(prompts: list, responses: list[str]) -> list[float]:
        return judge.score([by_prompt[p[-1]["content"]] for p in prompts], responses)

    summary = ppo_train(ppo_cfg, [x.prompt for x in instructions], reward_fn,
                        gold_fn=gold_fn if judge.can_score else None, eval_prompts=[x.prompt for x in evaluation])
    final = summary.get("final", {})
    return {"model": str(folder / "model"), "final_reward": final.get("reward"), "final_kl": final.get("kl"),
            "final_gold": final.get("gold_reward")}


def sample_policy(sample: SampleConfig, policy: str, pools: dict, seed: int, folder: Path) -> dict[str, Any]:
    from rlp_align.train.sample import run_sample

    summary = run_sample(dataclasses.replace(sample, policy=policy, prompts_file=pools["unlabelled"],
                                             output_file=str(folder / "samples.jsonl"), seed=seed))
    return {"samples": str(folder / "samples.jsonl"), "mean_chars": summary.get("mean_response_chars")}


def synthesize(spg: SPGConfig, samples: dict, rm: str, seed: int, folder: Path) -> dict[str, Any]:
    from rlp_align.rlp.spg import run_spg

    stats = run_spg(dataclasses.replace(spg, samples_file=samples["samples"], reward_model=rm,
                                        output_file=str(folder / "synthetic.jsonl"), seed=seed))
    return {"synthetic": str(folder / "synthetic.jsonl"), "stats": stats.get("stats_file"),
            "pairs": stats["pairs"], "acceptance_rate": stats["acceptance_rate"]}


def oracle_labels(annotator: AnnotatorConfig, world: WorldConfig, samples: dict, n_pairs: int, label_noise: float, seed: int,
                  folder: Path, pools: dict | None = None) -> dict[str, Any]:
    """The upper bound RLP approximates: fresh (noisy) annotator labels on up to ``n_pairs`` policy-sample pairs.

    Pairs are disjoint pairs of distinct answers, taken round by round over the instructions (first the first
    two distinct answers of every instruction, then the next two, ...), so a budget larger than the number of
    instructions is spent on independent pairs. Empty samples are removed first (`without_empty_responses`).
    The annotator sees the unlabelled pool's full instructions (reference answer, constraints), as D's did.
    """
    from rlp_align.judge.annotate import label_pairs

    sets, empty = without_empty_responses(read_sample_sets(samples["samples"]))
    distinct = [[j for j, r in enumerate(s.responses) if s.responses.index(r) == j] for s in sets]  # first copies
    picked = []  # (set index, answer index a, answer index b)
    for rnd in range(max((len(d) // 2 for d in distinct), default=0)):
        picked += [(i, d[2 * rnd], d[2 * rnd + 1]) for i, d in enumerate(distinct) if len(d) >= 2 * rnd + 2]
    picked = picked[:n_pairs]
    pool = {x.text: x for x in read_instructions(pools["unlabelled"])} if pools else {}
    instructions = [pool.get(sets[i].prompt[-1]["content"], Instruction(sets[i].prompt, meta=sets[i].meta))
                    for i, _, _ in picked]
    flags = [sets[i].meta.get("truncated") for i, _, _ in picked]
    known = all(isinstance(f, list) for f in flags)
    prefs = label_pairs(_annotator(annotator, world), instructions, [sets[i].responses[j] for i, j, _ in picked],
                        [sets[i].responses[k] for i, _, k in picked], noise=label_noise,
                        temperature=annotator.temperature, seed=seed + 7,
                        truncated_a=[f[j] for f, (_, j, _) in zip(flags, picked)] if known else None,
                        truncated_b=[f[k] for f, (_, _, k) in zip(flags, picked)] if known else None)
    write_preferences(folder / "oracle.jsonl", prefs)
    return {"synthetic": str(folder / "oracle.jsonl"), "pairs": len(prefs), "empty_samples_removed": empty}


def refine_rm(refine: RefineConfig, method: str, sft_model: str, rm: dict, prefs: dict, samples: dict,
              synthetic: dict | None, seed: int, folder: Path) -> dict[str, Any]:
    """Step 4. ``refine`` arrives with its RM-training settings resolved (`refine.inherit_reward_settings`)."""
    from rlp_align.rlp.refine import run_refine

    refine_cfg = dataclasses.replace(
        refine, method="spg" if method in ("oracle", "west_of_n") else method, base_model=sft_model,
        previous_rm=rm["model"], preference_file=prefs["train"], eval_file=prefs["heldout"],
        synthetic_file=synthetic["synthetic"] if synthetic else None, samples_file=samples["samples"],
        output_dir=str(folder), seed=seed)
    summary = run_refine(refine_cfg)
    return {"model": str(folder / "model"), "heldout_accuracy": (summary.get("eval") or {}).get("accuracy")}


def best_of_n(best_of_n: BestOfNConfig, sft_model: str, rm: str, pools: dict, seed: int,
              folder: Path) -> dict[str, Any]:
    from rlp_align.train.best_of_n import run_best_of_n

    run_best_of_n(dataclasses.replace(best_of_n, policy=sft_model, reward_model=rm, instructions_file=pools["eval"],
                                      output_file=str(folder / "answers.jsonl"), seed=seed))
    return {"answers": str(folder / "answers.jsonl")}


def answer_eval(generate: GenerateConfig, policy: str, pools: dict, seed: int, folder: Path) -> dict[str, Any]:
    """Evaluation answers at the paper's eval temperature (0.7 by default)."""
    from rlp_align.models.generation import run_generate

    summary = run_generate(dataclasses.replace(generate, policy=policy, instructions_file=pools["eval"],
                                               output_file=str(folder / "answers.jsonl"), seed=seed))
    return {"answers": str(folder / "answers.jsonl"), "mean_chars": summary.get("mean_response_chars")}


def on_policy_pairs(annotator: AnnotatorConfig, world: WorldConfig, policy: str, pools: dict, temperature: float, max_new_tokens: int,
                    batch_size: int, seed: int, folder: Path, n_samples: int = 8) -> dict[str, Any]:
    """Gold-labelled (noise-free) pairs of PPO₁ samples on held-out eval prompts: on-policy RM accuracy.

    Sampled like step 4's policy samples (the pipeline passes ``sample.temperature`` and
    ``sample.max_new_tokens``) with generation's ``batch_size``. One pair per prompt: where the gold judge scores
    answers, the first two of ``n_samples`` samples whose gold differs (a pair of equal gold says nothing of an RM;
    with two samples a policy that is right 80 % of the time gives such a pair on a third of the prompts, with 8 on
    83 %), else
    the first two samples."""
    judge = _annotator(annotator, world)

    def differing(x: Instruction, samples: list[str]) -> tuple[int, int] | None:
        gold = judge.score([x] * len(samples), samples)
        return next(((i, j) for i in range(len(samples)) for j in range(i + 1, len(samples))
                     if gold[i] != gold[j] and samples[i].strip() and samples[j].strip()), None)

    can_score = getattr(judge, "can_score", False)
    instructions, pairs, _, cut = _two_samples(policy, read_instructions(pools["eval"]), temperature,
                                               max_new_tokens, batch_size, seed=seed + 3,
                                               n=n_samples if can_score else 2, pick=differing if can_score else None)
    probs = judge.compare(instructions, [p[0] for p in pairs], [p[1] for p in pairs])
    prefs = [Preference(x.prompt, a if p > 0.5 else b, b if p > 0.5 else a,
                        {"gold_p": p, "truncated_chosen": c[0] if p > 0.5 else c[1],
                         "truncated_rejected": c[1] if p > 0.5 else c[0]})
             for x, (a, b), p, c in zip(instructions, pairs, probs, cut) if p != 0.5 and a != b]
    write_preferences(folder / "pairs.jsonl", prefs)
    return {"pairs_file": str(folder / "pairs.jsonl"), "pairs": len(prefs), "samples_per_prompt":
            n_samples if can_score else 2}


def paired_evaluation(gold_by_label: dict[str, list[float]], correct: dict[str, list[bool]], seed: int,
                      heldout_correct: dict[str, list[bool]] | None = None) -> dict:
    """Paired comparisons within this seed (`rlp_align.judge.stats`): every method's per-prompt gold difference and
    head-to-head win-rate against PPO and SFT; every refined RM's accuracy against RM0's on the same pairs
    (on-policy pairs, and held-out D pairs: does it still fit D?), by paired bootstrap and exact McNemar, with
    the per-item differences that pool across seeds."""
    from rlp_align.judge.stats import paired_comparisons, rm_accuracy_vs

    def vs_rm0(by_label: dict[str, list[bool]]) -> dict[str, dict]:
        if "RM0" not in by_label:
            return {}
        ref = by_label["RM0"]
        return {label: {**rm_accuracy_vs(ok, ref, seed=seed),
                        "per_pair_diff": [float(a) - float(b) for a, b in zip(ok, ref)]}
                for label, ok in by_label.items() if label != "RM0"}

    return {"paired": paired_comparisons(gold_by_label, seed=seed) if gold_by_label else {},
            "rm_accuracy_vs_rm0": vs_rm0(correct), "refined_fit_d": vs_rm0(heldout_correct or {})}


def evaluate(annotator: AnnotatorConfig, world: WorldConfig, answers: dict[str, str], rms: dict[str, str], on_policy: dict,
             eval_baseline: str, rm_batch_size: int, rm_max_length: int, seed: int, folder: Path,
             heldout: str | None = None) -> dict[str, Any]:
    """Gold win-rate (vs reference answers or vs SFT), mean gold reward, on-policy RM accuracy, and the paired
    comparisons (`paired_evaluation`); ``heldout`` (held-out D) adds every RM's fit of D against RM0's."""
    from rlp_align.core.device import default_device
    from rlp_align.core.io import read_rows
    from rlp_align.judge.evaluate import rm_accuracy, win_rate
    from rlp_align.models import load_reward_model, load_tokenizer

    judge = _annotator(annotator, world)
    rows = {label: [r for _, r in read_rows(path)] for label, path in answers.items()}
    instructions = [Instruction(r["prompt"], r.get("reference"), r.get("constraints") or [], r.get("meta") or {})
                    for r in next(iter(rows.values()))]
    if eval_baseline == "reference":
        baseline = [x.reference or "" for x in instructions]
    else:
        baseline = [r["response"] for r in rows["SFT"]]
    table, per_label, gold_by_label = {}, {}, {}
    for label, label_rows in rows.items():
        responses = [r["response"] for r in label_rows]
        prefs = judge.compare(instructions, responses, baseline)
        gold = judge.score(instructions, responses) if judge.can_score else None
        cut = [(r.get("meta") or {}).get("truncated") for r in label_rows]
        table[label] = {**win_rate(prefs, n_boot=2000, seed=seed),
                        "gold_reward": sum(gold) / len(gold) if gold else None,
                        "mean_chars": sum(map(len, responses)) / max(1, len(responses)),
                        "truncated_share": sum(map(bool, cut)) / len(cut) if all(c is not None for c in cut) else None}
        per_label[label] = prefs
        if gold:
            gold_by_label[label] = gold
    pairs = read_preferences(on_policy["pairs_file"]) if on_policy["pairs"] else []
    d_pairs = read_preferences(heldout) if heldout else []  # held-out D: refined RMs must still fit it
    accuracy, correct, d_correct = {}, {}, {}
    for label, path in rms.items():
        if pairs or d_pairs:
            model, tok = load_reward_model(path).to(default_device()), load_tokenizer(path)
        if pairs:
            accuracy[label] = rm_accuracy(model, tok, pairs, batch_size=rm_batch_size, max_length=rm_max_length,
                                          per_pair=True)
            correct[label] = accuracy[label].pop("correct")
        if d_pairs:
            d_correct[label] = rm_accuracy(model, tok, d_pairs, batch_size=rm_batch_size, max_length=rm_max_length,
                                           per_pair=True)["correct"]
    result = {"win_rates": table, "rm_accuracy_on_policy": accuracy, "baseline": eval_baseline,
              "n_eval": len(instructions), "on_policy_pairs": len(pairs), "heldout_d_pairs": len(d_pairs),
              **paired_evaluation(gold_by_label, correct, seed, d_correct)}
    write_json(folder / "evaluation.json", result)
    write_jsonl(folder / "preferences.jsonl", [{"label": k, "prefs": v} for k, v in per_label.items()])
    return result
