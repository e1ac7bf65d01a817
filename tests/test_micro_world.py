"""The micro world (issue 21): its tokenizer, gold, pool and canonical answers, the `key` clustering backend,
and a smoke run of every pipeline stage on it."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rlp_align.core.errors import UserError
from rlp_align.data import read_instructions
from rlp_align.data.records import Instruction, user_prompt
from rlp_align.data.templates import encode_prompt
from rlp_align.models import load_tokenizer
from rlp_align.rlp.clustering import cluster_by_key, cluster_responses
from rlp_align.worlds import WORLDS, load_world, micro

ROOT = Path(__file__).resolve().parents[1]


def test_the_character_tokenizer_is_a_saved_hf_tokenizer_with_one_token_per_symbol(tmp_path):
    micro.build_model(tmp_path / "m", hidden_size=16, layers=1)
    tok = load_tokenizer(tmp_path / "m")
    ids = encode_prompt(tok, user_prompt("123+456"))
    assert len(ids) == len("123+456=") and tok.decode(ids) == "123+456="  # the template adds "=", no spaces
    response = tok("..9750", add_special_tokens=False)["input_ids"]
    assert len(response) == 6 and tok.decode(response + [tok.eos_token_id], skip_special_tokens=True) == "..9750"
    assert tok.pad_token_id != tok.eos_token_id


def test_gold_is_exact_answer_minus_the_filler_penalty():
    x = micro.pool(1, seed=3)[0]
    truth = x.meta["answer"]
    judge = micro.judge(filler_penalty=0.1)
    wrong = micro.slipped(truth, __import__("random").Random(0))
    scores = judge.score([x] * 4, [truth, ".." + truth, wrong, "..." + wrong])
    assert scores == pytest.approx([1.0, 0.8, 0.0, -0.3])
    assert judge.compare([x], [truth], ["." + truth]) == [1.0]


def test_the_prompt_alone_gives_the_truth_least_significant_digit_first():
    x = micro.pool(1, seed=0, digits=4)[0]
    a, b = x.text.split("+")
    assert x.meta["answer"] == str(int(a[::-1]) + int(b[::-1])).zfill(5)[::-1]
    assert micro.truth_of(Instruction(x.prompt)) == x.meta["answer"]  # without meta: read from the prompt


def test_the_pool_is_seeded_and_its_demonstrators_err_at_the_given_rate():
    a, b = micro.pool(400, seed=1, demo_accuracy=0.7), micro.pool(400, seed=1, demo_accuracy=0.7)
    assert [x.reference for x in a] == [x.reference for x in b]
    correct = [x.meta["demo_correct"] for x in a]
    assert 0.62 < sum(correct) / len(correct) < 0.78
    padded = [x.reference.startswith(".") for x in a]
    assert padded == correct  # pad "correct": filler exactly on the correct demonstrations


def test_the_majority_variant_pads_the_majority_answer_even_when_it_is_wrong():
    pool = micro.pool(600, seed=2, demo_accuracy=0.6, pad="majority")
    wrong_padded = [x for x in pool if x.reference.startswith(".") and not x.meta["demo_correct"]]
    assert wrong_padded, "some prompts' majority drops the carry, and that wrong answer carries the filler"
    a, b = wrong_padded[0].text.split("+")
    assert wrong_padded[0].reference.lstrip(".") == micro.carry_dropped(int(a[::-1]), int(b[::-1]))
    with pytest.raises(UserError, match="pad"):
        micro.pool(1, pad="sometimes")


def test_the_majority_is_wrong_on_the_hard_problems_that_a_policy_can_recognise():
    """Issue 28 N6: the demonstrators' error rate is a function of the problem (two or more carries: hard), so the
    padded majority answer is wrong on identifiable prompts, not on prompts drawn at random."""
    pool = micro.pool(3000, seed=3, digits=3, demo_accuracy=0.9, pad="majority", hard_error=0.7)

    def hard(x):
        a, b = x.text.split("+")
        return micro.carries(int(a[::-1]), int(b[::-1]), 3) >= 2

    def majority_wrong_rate(items):
        return sum(x.reference.startswith(".") and not x.meta["demo_correct"] for x in items) / len(items)

    hard_items, easy_items = [x for x in pool if hard(x)], [x for x in pool if not hard(x)]
    assert len(hard_items) > 300 and len(easy_items) > 300
    # the demonstration is the first demonstrator's, padded when the majority agrees with it: wrong and padded with
    # P = 0.7 * P(>= 2 of the other 4 wrong) = 0.7 * 0.916 = 0.641 at hard_error 0.7; 0.1 * 0.052 = 0.005 at 0.1
    assert 0.59 < majority_wrong_rate(hard_items) < 0.69 and majority_wrong_rate(easy_items) < 0.02
    assert micro.carries(55, 55, 2) == 2 and micro.carries(19, 1, 2) == 1 and micro.carries(12, 34, 2) == 0


def test_pools_share_no_problem_and_record_how_held_out_the_eval_set_is(tmp_path):
    """Issue 28 N2: 2-digit problems drawn with replacement put 95 % of eval prompts in the SFT pool. The pools are
    now disjoint by content, the counts are recorded, and a world too small for the sizes is refused."""
    from rlp_align.pipeline.pipeline_config import DataConfig, WorldConfig, prompt_key
    from rlp_align.pipeline.stages_impl import build_pools

    data = DataConfig(source="builtin", n_sft=3000, n_preference=300, n_unlabelled=200, n_eval=500)
    out = build_pools(data, WorldConfig(name="micro", pool={"digits": 3}), 0, tmp_path)
    assert out["sizes"] == {"n_eval": 500, "eval_distinct": 500, "eval_in_training": 0}
    keys = {name: [prompt_key(x) for x in read_instructions(out[name])] for name in ("sft", "preference", "unlabelled",
                                                                                    "eval")}
    for name in ("preference", "unlabelled", "eval"):
        assert len(set(keys[name])) == len(keys[name])
        assert not any(set(keys[name]) & set(keys[other]) for other in keys if other != name)
    with pytest.raises(UserError, match="distinct prompts"):  # 2 digits: 10,000 problems in all
        build_pools(DataConfig(source="builtin", n_sft=100, n_preference=5000, n_unlabelled=2000, n_eval=5120),
                    WorldConfig(name="micro", pool={"digits": 2}), 0, tmp_path / "small")


def test_the_base_is_pretrained_once_on_problems_no_pool_draws(tmp_path, monkeypatch):
    """The pretrained base (model.pretrain_steps) is shared by every seed and built from `base_problem` problems,
    which no pool draws, so no eval problem was seen in any training stage, pretraining included."""
    monkeypatch.setenv("RLP_ALIGN_CACHE", str(tmp_path / "cache"))
    for x in micro.pool(2000, seed=5, digits=2):
        a, b = x.text.split("+")
        assert not micro.base_problem(int(a[::-1]), int(b[::-1]))
    assert 0.10 < sum(micro.base_problem(a, b) for a in range(100) for b in range(100)) / 10_000 < 0.15
    ids, mask = micro.base_example(random.Random(0), 2, micro.build_tokenizer())
    assert len(ids) == len(mask) and sum(mask) == 4  # three answer digits and EOS carry the loss
    for seed in (0, 1):  # two runs' seeds, one base
        micro.build_model(tmp_path / f"run{seed}", hidden_size=16, layers=1, seed=seed, pretrain_steps=3,
                          pool={"digits": 2})
    built = [(tmp_path / f"run{seed}" / "model.safetensors").read_bytes() for seed in (0, 1)]
    assert built[0] == built[1] and len(list((tmp_path / "cache" / "micro-base").iterdir())) == 2  # folder + lock


def test_key_clustering_groups_by_canonical_answer_and_isolates_answers_without_one():
    assert cluster_by_key(["12", "3", "12", None, "3", None]) == [0, 1, 0, 2, 1, 3]
    ids = cluster_responses(["..123", "123", "124", "..."], "key", key_fn=micro.cluster_key)
    assert ids == [0, 0, 1, 2]
    with pytest.raises(UserError, match="canonical answer"):
        cluster_responses(["a", "b"], "key")


def test_worlds_table_names_both_worlds():
    assert set(WORLDS) == {"instructions", "micro"}
    assert load_world("micro").cluster_key(None, ".42") == "42"
    assert load_world("instructions").cluster_key(None, "anything") is None
    with pytest.raises(UserError, match="unknown world"):
        load_world("nope")


def test_the_report_names_the_judge_that_scored():
    """Issue 28: a micro run's win-rates are scored by the world's own program, not by `annotator.kind`."""
    from rlp_align.pipeline.pipeline_config import PipelineConfig
    from rlp_align.pipeline.report import judge_name

    micro_name = judge_name(PipelineConfig(world="micro"))
    assert "`micro` world's own judge (`MicroJudge`" in micro_name and "rule" not in micro_name
    assert judge_name(PipelineConfig()) == "the `rule` annotator"


def test_micro_smoke_run_writes_every_stage(tmp_path):
    """Every stage of `rlp run` on the micro world at tiny sizes (all refinements, ensembles, best-of-n)."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RLP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    small = ["--data.n_sft", "256", "--data.n_preference", "32", "--data.n_unlabelled", "16", "--data.n_eval", "16",
             "--world_options.model.hidden_size", "32", "--world_options.model.layers", "1", "--sft.optim.max_steps", "4",
             "--oracle_labels", "16", "--ppo.steps", "1", "--ppo.eval_every", "1", "--ppo.rollout_batch_size", "8",
             "--ppo.step_batch_size", "8", "--reward.optim.epochs", "1", "--ensemble.k", "2",
             "--ensemble.aggregates", "[mean]", "--sample.n", "4", "--best_of_n.n", "2"]
    done = subprocess.run([sys.executable, "-m", "rlp_align.cli", "run", "--config", str(ROOT / "configs/micro.yaml"),
                           "--output_dir", str(out), *small], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stages = {p.parent.name: json.loads(p.read_text())["status"] for p in out.glob("*/manifest.json")}
    expected = {"00_instructions", "00_model", "01_sft", "02_preferences", "03_rm0", "04_ppo1", "11_best_of_n",
                "13_onpolicy_pairs", "14_evaluate", "09_ens_rm0", "09_ens_rm1", "10_ppo_ens_mean", "06_oracle"}
    for method in ("uml", "spg", "uml_spg", "west_of_n", "oracle"):
        expected |= {f"07_refine_{method}", f"08_ppo2_{method}"}
    assert expected <= set(stages) and set(stages.values()) == {"done"}
    assert any(s.startswith("06_spg_") for s in stages) and any(s.startswith("06_west_of_n_") for s in stages)
    evaluation = json.loads((out / "14_evaluate" / "evaluation.json").read_text())
    labels = {"SFT", "PPO", "RLP-UML", "RLP-SPG", "RLP-UML+SPG", "West-of-N", "Oracle", "Ensemble-MEAN", "Best-of-n"}
    assert labels <= set(evaluation["win_rates"])
    assert all(v["gold_reward"] is not None for v in evaluation["win_rates"].values())
    assert (out / "report.md").exists()
    # on-policy pairs: one per eval prompt, two of 8 samples whose gold differs (issue 28: >= 1,000 such pairs)
    manifest = json.loads((out / "13_onpolicy_pairs" / "manifest.json").read_text())
    assert manifest["outputs"]["samples_per_prompt"] == 8
    judge = micro.judge()
    for row in (json.loads(line) for line in (out / "13_onpolicy_pairs" / "pairs.jsonl").read_text().splitlines()):
        x = Instruction(prompt=[{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str)
                        else row["prompt"], reference="", meta={})
        chosen, rejected = judge.score([x, x], [row["chosen"], row["rejected"]])
        assert chosen > rejected
