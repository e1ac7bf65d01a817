"""The benchmark scripts: speed.py and quality.py smoke runs, their pure helpers, and the README tables."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _module(name: str):
    if str(BENCH) not in sys.path:  # the drivers import their shared helpers (common.py) as a script would
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script: str, *args: str, timeout: int = 240) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _fake_run_dir(folder: Path, seconds: dict[str, float]) -> Path:
    for stage, s in seconds.items():
        (folder / stage).mkdir(parents=True)
        (folder / stage / "manifest.json").write_text(json.dumps(
            {"stage": stage, "status": "done", "seconds": s, "started": 0.0, "hash": "h", "outputs": {}}))
    return folder


STAGES = {"00_instructions": 1.0, "02_preferences": 2.0, "03_rm0": 3.0, "04_ppo1": 4.0,  # RLHF: 10 s
          "05_samples_abc": 1.0, "06_spg_def": 1.0, "07_refine_uml": 1.0, "08_ppo2_uml": 2.0,
          "07_refine_spg": 0.5, "08_ppo2_spg": 2.5, "14_evaluate": 100.0}


def test_rlp_overhead_from_manifests(tmp_path):
    speed = _module("speed_targets")
    result = speed.rlp_overhead(_fake_run_dir(tmp_path / "run", STAGES))
    assert result["measured"] and result["rlhf_seconds"] == pytest.approx(10.0)
    # uml: samples 1 + refine 1 + ppo2 2 = 4 -> 1.4x; spg adds the SPG stage: 1 + 1 + 0.5 + 2.5 = 5 -> 1.5x
    assert result["variants"]["uml"]["ratio"] == pytest.approx(1.4)
    assert result["variants"]["spg"]["ratio"] == pytest.approx(1.5)
    assert result["worst_ratio"] == pytest.approx(1.5)  # evaluation is on neither side
    unfinished = speed.rlp_overhead(_fake_run_dir(tmp_path / "partial", {"00_instructions": 1.0}))
    assert not unfinished["measured"] and "04_ppo1" in unfinished["reason"]


def test_targets_say_why_trl_was_not_measured():
    speed = _module("speed_targets")
    ours = [{"median_step_seconds": 1.0, "step_seconds": [1.0], "peak_rss_mb": 100.0, "phases": []}]
    mfu = {"mfu_matmul": 0.6, "mfu_6nd": 0.7, "achieved_flops_per_second": 1.0}
    targets = speed.judge(ours, [], "TRL skipped: absent", mfu, {"measured": False, "reason": "no run"}, None)
    assert targets["ppo_step_vs_trl"]["passed"] is None and "absent" in targets["ppo_step_vs_trl"]["reason"]
    assert targets["update_mfu"]["passed"] is True and targets["rlp_overhead"]["passed"] is None
    trl = [{"median_step_seconds": 1.2, "peak_rss_mb": 90.0}]  # 1.2x faster and more memory: a miss, explained
    missed = speed.judge(ours, trl, None, {**mfu, "mfu_matmul": 0.2}, {"measured": False}, None, batch=8)
    assert missed["ppo_step_vs_trl"]["passed"] is False and "why" in missed["ppo_step_vs_trl"]
    assert missed["update_mfu"]["passed"] is False and "phase_share_of_step" in missed["update_mfu"]["why"]


def test_cheaper_optimisers_are_judged_in_episodes_per_second():
    speed = _module("speed_targets")
    trl = [{"batch": 8, "median_step_seconds": 4.0, "peak_rss_mb": 1000.0}]  # 2 episodes/s
    ours = [{"batch": 8, "median_step_seconds": 2.0, "peak_rss_mb": 800.0}]
    workloads = {"lora_ppo": {"batch": 8, "median_step_seconds": 1.0, "peak_rss_mb": 500.0},  # 4x TRL, RSS 0.5x
                 "rloo": {"batch": 8, "median_step_seconds": 2.0, "peak_rss_mb": 700.0}}       # 2x TRL: a miss
    t = speed.cheaper_targets(workloads, ours, trl, None)
    assert t["lora_ppo_vs_trl"]["vs_trl"] == pytest.approx(4.0) and t["lora_ppo_vs_trl"]["passed"] is True
    assert t["lora_ppo_vs_trl"]["rss_vs_trl"] == pytest.approx(0.5)
    assert t["lora_ppo_vs_trl"]["vs_our_full_ppo"] == pytest.approx(2.0)
    assert t["rloo_vs_trl"]["vs_trl"] == pytest.approx(2.0) and t["rloo_vs_trl"]["passed"] is False
    heavy = speed.cheaper_targets({"lora_ppo": {**workloads["lora_ppo"], "peak_rss_mb": 700.0}}, ours, trl, None)
    assert heavy["lora_ppo_vs_trl"]["passed"] is False  # fast enough, but 0.7x TRL's memory
    absent = speed.cheaper_targets(workloads, ours, [], "TRL skipped: absent")
    assert absent["rloo_vs_trl"]["passed"] is None and "absent" in absent["rloo_vs_trl"]["reason"]


def _trl_run(median: float) -> dict:
    """A TRL worker record as speed_worker_trl.py wrote it into benchmarks/results/speed.json (7b37b19): no batch."""
    return {"framework": "trl", "versions": {"trl": "1.12.0", "transformers": "5.23.0", "torch": "2.13.0+cpu"},
            "steps": 4, "step_seconds": [median + 0.8, median - 0.2, median], "first_step_seconds": 45.3,
            "load_seconds": 4.8, "peak_rss_mb": 9547.9, "generated_width": [64, 64, 64, 64],
            "phases": [{"step": 2, "time_rollout": 6.8, "time_score": 3.4, "time_update": median - 10.2}],
            "threads": 2, "wall_seconds": 146.7, "median_step_seconds": median}


def _our_run(median: float, rss: float, **extra) -> dict:
    """A speed_worker_ours.py record (it carries its batch)."""
    return {"framework": "rlp_align", "steps": 4, "step_seconds": [median] * 3, "peak_rss_mb": rss,
            "phases": [{"step": 2, "time_rollout": 9.1, "time_score": 5.3, "time_update": median - 14.4}],
            "batch": 8, "ppo_epochs": 2, "threads": 2, "median_step_seconds": median, **extra}


def test_the_judge_reads_real_trl_records_without_a_batch():
    """Issue 29: TRL's records carry no batch, so lora_ppo_vs_trl and rloo_vs_trl read "no TRL run to compare
    with" although TRL ran. The issue's b0812af figures: TRL 45.7 s/step, ours 40.8 (full), 32.4 (LoRA), 20.1
    (RLOO), batch 8 throughout."""
    speed = _module("speed_targets")
    mfu = {"mfu_matmul": 0.4, "mfu_6nd": 0.4, "achieved_flops_per_second": 1.0}
    trl = [_trl_run(45.7), _trl_run(45.7)]
    ours = [_our_run(40.8, 7925.0), _our_run(40.8, 7925.0)]
    workloads = {"lora_ppo": _our_run(32.4, 6493.0, mode="lora_ppo"), "rloo": _our_run(20.1, 5000.0, mode="rloo")}
    t = speed.judge(ours, trl, None, mfu, {"measured": False}, None, workloads, batch=8)
    assert t["ppo_step_vs_trl"]["speedup"]["median"] == pytest.approx(45.7 / 40.8)
    assert t["ppo_step_vs_trl"]["passed"] is False  # 1.12x < 1.5x
    assert t["lora_ppo_vs_trl"]["vs_trl"] == pytest.approx(45.7 / 32.4)  # 1.41x
    assert t["lora_ppo_vs_trl"]["rss_vs_trl"] == pytest.approx(6493.0 / 9547.9)
    assert t["lora_ppo_vs_trl"]["passed"] is False and "why" in t["lora_ppo_vs_trl"]
    assert t["rloo_vs_trl"]["vs_trl"] == pytest.approx(45.7 / 20.1)  # 2.27x
    assert t["rloo_vs_trl"]["passed"] is False
    fast = speed.judge(ours, trl, None, mfu, {"measured": False}, None, {"rloo": _our_run(15.0, 5000.0)}, batch=8)
    assert fast["rloo_vs_trl"]["passed"] is True  # 3.05x
    # without the benchmark's batch, a TRL record alone cannot be judged, and the reason says why
    unknown = speed.judge(ours, trl, None, mfu, {"measured": False}, None, workloads)
    assert unknown["rloo_vs_trl"]["passed"] is None and "batch" in unknown["rloo_vs_trl"]["reason"]
    assert unknown["ppo_step_vs_trl"]["passed"] is None and "batch" in unknown["ppo_step_vs_trl"]["reason"]


def test_speed_smoke(tmp_path):
    out = tmp_path / "speed.json"
    run_dir = _fake_run_dir(tmp_path / "run", STAGES)
    _run("speed.py", "--smoke", "--out", str(out), "--work_dir", str(tmp_path / "work"), "--run_dir", str(run_dir))
    d = json.loads(out.read_text())
    assert d["smoke"] and d["settings"]["model"] == "tiny" and d["settings"]["batch"] == 4
    assert {"date", "commit", "machine", "settings", "params", "matmul_peak", "ppo", "mfu", "rlp_overhead",
            "sampling", "targets"} <= set(d)
    assert d["matmul_peak"]["flops_per_second"] > 1e9
    assert d["matmul_peak"]["flops_per_second"] == max(d["matmul_peak"]["measurements"])  # before each run, at the end
    assert len(d["matmul_peak"]["measurements"]) == 2  # 1 repeat in smoke mode
    ours = d["ppo"]["ours"][0]
    assert "error" not in ours, ours.get("log_tail")
    assert len(ours["step_seconds"]) == 1 and ours["step_seconds"][0] > 0 and ours["peak_rss_mb"] > 50
    assert 0 < d["mfu"]["mfu_matmul"] < d["mfu"]["mfu_6nd"] < 1
    assert [r["batch"] for r in d["sampling"]] == [2, 4] and all(r["tokens_per_second"] > 0 for r in d["sampling"])
    assert d["rlp_overhead"]["worst_ratio"] == pytest.approx(1.5)
    assert set(d["targets"]) == {"ppo_step_vs_trl", "update_mfu", "rlp_overhead", "lora_ppo_vs_trl", "rloo_vs_trl"}
    for mode in ("lora_ppo", "rloo"):  # the cheaper optimisers ran, and are judged against TRL's PPO
        run = d["workloads"][mode]
        assert "error" not in run, run.get("log_tail")
        assert run["mode"] == mode and run["step_seconds"][0] > 0 and run["peak_rss_mb"] > 50
        assert d["targets"][f"{mode}_vs_trl"]["episodes_per_second"] > 0
    assert all(t["passed"] in (True, False, None) for t in d["targets"].values())
    if (BENCH / ".venv-trl" / "bin" / "python").exists():
        trl = d["ppo"]["trl"][0]
        assert "error" not in trl, trl.get("log_tail")
        assert trl["step_seconds"][0] > 0 and trl["peak_rss_mb"] > 50
        assert d["ppo"]["speedup_trl_over_ours"]["median"] > 0
    else:
        assert d["ppo"]["trl"] == [] and "absent" in d["ppo"]["trl_note"]
    assert d["targets"]["update_mfu"]["passed"] or "profile" in d["targets"]["update_mfu"]["why"]


QUALITY_KEYS = {"controls", "vs_ppo", "onpolicy_accuracy", "label_accuracy", "majority_vs_single", "sizes", "seconds_per_seed",
                "commit", "date", "checks"}
CONTROLS = {"ppo_vs_sft_gold", "oracle_rm_vs_rm0_accuracy", "oracle_vs_ppo_gold", "overoptimisation",
            "refined_fit_d", "uml_mi_above_baseline", "gold_ppo_vs_ppo_gold", "rm_capacity_onpolicy_accuracy"}
VS_PPO = {"RLP-UML", "RLP-SPG", "RLP-UML+SPG", "West-of-N", "Oracle", "Best-of-n", "Ensemble-MEAN", "Ensemble-WCO",
          "Ensemble-UWO"}


def test_quality_micro_smoke_writes_every_key(tmp_path):
    """`quality.py --world micro --smoke` (CI, issue 21 section 4): every key of quality-micro.json is written."""
    out, work = tmp_path / "quality-micro.json", tmp_path / "work"
    _run("quality.py", "--world", "micro", "--smoke", "--out", str(out), "--work_dir", str(work), timeout=900)
    d = json.loads(out.read_text())
    assert QUALITY_KEYS <= set(d) and d["world"] == "micro" and d["seeds_finished"] == [0]
    assert set(d["controls"]) == CONTROLS
    for key in ("ppo_vs_sft_gold", "oracle_rm_vs_rm0_accuracy", "oracle_vs_ppo_gold"):
        assert [s["seed"] for s in d["controls"][key]["per_seed"]] == [0] and "pooled" in d["controls"][key]
    over = d["controls"]["overoptimisation"]
    assert over["per_seed"][0]["points"] and over["pooled"]["points"] and "shown" in over["pooled"]
    assert [r["n"] for r in over["best_of_n"]["pooled"]] == list(range(1, 65))
    kls = [r["kl"] for r in over["best_of_n"]["pooled"]]  # plug-in KL: 0 for best-of-1, recorded for every n
    assert kls[0] == 0.0 and all(k >= 0 for k in kls) and over["best_of_n"]["pooled"][-1]["kl_analytic"] > 3
    assert set(d["controls"]["refined_fit_d"]) == {"RLP-UML", "RLP-SPG", "RLP-UML+SPG", "West-of-N", "Oracle"}
    assert isinstance(d["controls"]["uml_mi_above_baseline"]["passed"], bool)
    assert d["controls"]["uml_mi_above_baseline"]["per_seed"][0]["baseline_i_jsd"] is not None
    assert d["controls"]["gold_ppo_vs_ppo_gold"]["per_seed"][0]["seed"] == 0
    capacity = d["controls"]["rm_capacity_onpolicy_accuracy"]["per_seed"][0]
    assert capacity["train_pairs"] > 0 and 0 <= capacity["accuracy"] <= 1
    assert set(d["vs_ppo"]) == VS_PPO | {"Gold-PPO"}
    for label, e in d["vs_ppo"].items():
        assert e["end"]["per_seed"] and e["end"]["pooled"] and e["matched_kl"]["per_seed"], label
        assert e["matched_kl"]["reached"] in ("0/1", "1/1") and set(e["matched_kl"]["where"]) == {"0"}, label
        assert label == "Gold-PPO" or "recovered_share_gold_ppo" in e
    # every RM on the same on-policy pairs as RM0: refined, capacity, ensemble members and aggregates
    assert {"RLP-UML", "RLP-SPG", "RLP-UML+SPG", "West-of-N", "Oracle", "RM capacity", "Ensemble RM0",
            "Ensemble RM1", "Ensemble-MEAN RM", "Ensemble-WCO RM", "Ensemble-UWO RM"} <= set(d["onpolicy_accuracy"])
    assert all(e["vs_rm0"]["per_seed"] for label, e in d["onpolicy_accuracy"].items() if label != "RM0")
    assert {"gold_ppo_vs_ppo_gold", "rm_capacity_onpolicy_accuracy", "uml_mi_above_baseline"} <= set(d["checks"])
    assert set(d["label_accuracy"]) == {"rm_rank", "select_all", "spg", "west_of_n"}
    assert d["majority_vs_single"]["per_seed"][0]["n_samples"] == 8  # the micro world has a canonical answer
    assert {"n_eval", "eval_distinct", "eval_in_training", "n_onpolicy_pairs", "spg_pairs_per_seed"} <= set(d["sizes"])
    assert len(d["seconds_per_seed"]) == 1 and d["seconds_per_seed"][0] > 0
    assert all(Path(p).stat().st_size > 1000 for p in d["png"])


def _points(kls: list[float], gold: list[list[float]], proxy: list[list[float]]) -> list[dict]:
    return [{"step": 10 * j, "kl": k, "per_prompt": {"gold": g, "proxy": x, "kl": [k] * len(g)}}
            for j, (k, g, x) in enumerate(zip(kls, gold, proxy))]


def _records(oracle_gain: float) -> list[dict]:
    """Three seeds of hand-made evaluations: PPO beats SFT by 0.1, the oracle PPO by ``oracle_gain``, RLP-SPG by
    half of it; PPO1's gold peaks at its middle evaluation point while the proxy keeps rising."""
    import numpy as np

    from rlp_align.pipeline.stages_impl import paired_evaluation

    records = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        base = rng.uniform(0, 1, size=64)
        gold = {"SFT": base, "PPO": base + 0.1 + rng.normal(0, 0.01, 64), "Oracle": base + 0.1 + oracle_gain
                + rng.normal(0, 0.01, 64), "RLP-SPG": base + 0.1 + oracle_gain / 2 + rng.normal(0, 0.01, 64)}
        ev = paired_evaluation({k: list(v) for k, v in gold.items()},
                               {"RM0": [1.0] * 40 + [0.0] * 24, "Oracle": [1.0] * 56 + [0.0] * 8}, seed,
                               {"RM0": [1.0] * 60 + [0.0] * 4, "Oracle": [1.0] * 59 + [0.5] + [0.0] * 4})
        ev.update(n_eval=64, on_policy_pairs=64, heldout_d_pairs=64)
        g = [list(base + d + rng.normal(0, 0.01, 64)) for d in (0.0, 0.3, 0.1)]  # peak at the middle point
        x = [list(base + d + rng.normal(0, 0.01, 64)) for d in (0.0, 0.5, 1.0)]  # proxy still rising
        # RLP-SPG passes PPO1's final KL (2.0) half-way between its points at KL 1 and 3
        spg = _points([0.0, 1.0, 3.0], [list(base)] * 2 + [list(base + 0.4)], [list(base)] * 3)
        # gold PPO gains 0.3 over PPO1 on every prompt; the RM capacity is right on 60 of 64 pairs
        gold_ppo = {"per_prompt_gold": list(gold["PPO"] + 0.3), "ppo_per_prompt_gold": list(gold["PPO"])}
        onpolicy = {"RM0": [1.0] * 40 + [0.0] * 24, "RM capacity": [1.0] * 60 + [0.0] * 4}
        records.append({"seed": seed, "evaluation": ev, "spg_pairs": 130, "seconds": 500.0 + seed,
                        "eval_points": {"PPO": _points([0.0, 1.0, 2.0], g, x), "RLP-SPG": spg},
                        "gold_ppo": gold_ppo, "onpolicy_correct": onpolicy, "rm_capacity": {"pairs": 10000},
                        "sizes": {"n_eval": 64, "eval_distinct": 64, "eval_in_training": 0},
                        "uml_i_jsd": {"RLP-UML": -1.0}, "uml_baseline_i_jsd": -1.25 + 0.05 * seed, "table5": {"spg": {"label": "SPG", "pairs": 10,
                                                                            "instructions": 12, "accuracy": 0.7}},
                        "majority": {"n": 8, "majority_correct": [1.0, 1.0, 0.0, 1.0],
                                     "single_correct": [0.75, 0.5, 0.25, 0.5]}})
    return records


def test_quality_aggregate_on_hand_made_seeds():
    import numpy as np

    agg = _module("quality_aggregate")
    records = _records(oracle_gain=0.1)
    d = agg.aggregate(records)
    c = d["controls"]
    ppo_sft = c["ppo_vs_sft_gold"]
    means = [s["diff"] for s in ppo_sft["per_seed"]]
    half = 4.303 * np.std(means, ddof=1) / np.sqrt(3)  # t-interval over the 3 per-seed means, 2 dof
    assert ppo_sft["pooled"]["ci_low"] == pytest.approx(np.mean(means) - half, abs=1e-3) and half > 0
    assert d["checks"]["ppo_vs_sft_gold"]["passed"] is True and d["checks"]["oracle_vs_ppo_gold"]["passed"] is True
    assert c["oracle_rm_vs_rm0_accuracy"]["pooled"]["diff"] == pytest.approx(16 / 64)
    assert c["refined_fit_d"]["Oracle"]["pooled"]["diff"] == pytest.approx(-0.5 / 64)  # a tie counts 1/2
    over = c["overoptimisation"]["pooled"]
    assert over["peak_step"] == 10 and over["shown"] and d["checks"]["overoptimisation"]["passed"]
    assert over["gold_final_minus_peak"]["diff"] == pytest.approx(-0.2, abs=0.01)
    # RLP-UML's I_JSD above its frozen-RM0 baseline by 0.25, 0.2, 0.15: at least 0.1 in every seed
    assert c["uml_mi_above_baseline"]["pooled"]["diff"] == pytest.approx(0.2) and c["uml_mi_above_baseline"]["passed"]
    assert c["gold_ppo_vs_ppo_gold"]["pooled"]["diff"] == pytest.approx(0.3)
    assert d["checks"]["gold_ppo_vs_ppo_gold"]["passed"] is True
    assert [e["accuracy"] for e in c["rm_capacity_onpolicy_accuracy"]["per_seed"]] == [60 / 64] * 3
    assert d["checks"]["rm_capacity_onpolicy_accuracy"]["passed"] is True
    assert d["onpolicy_accuracy"]["RM capacity"]["vs_rm0"]["pooled"]["diff"] == pytest.approx(20 / 64)
    assert d["onpolicy_accuracy"]["Oracle"]["vs_rm0"]["pooled"]["diff"] == pytest.approx(16 / 64)
    # RLP-SPG gains half the oracle's 0.1 over PPO1: a sixth of gold PPO's 0.3
    assert d["vs_ppo"]["Gold-PPO"]["end"]["pooled"]["diff"] == pytest.approx(0.3)
    assert spg_share_gold(d) == pytest.approx(0.05 / 0.3, abs=0.02)
    assert d["sizes"]["eval_distinct"] == 64 and d["sizes"]["eval_in_training"] == 0
    assert d["majority_vs_single"]["pooled"]["majority_minus_single"][
        "diff"] == pytest.approx(0.25)
    # matched KL: RLP-SPG's gold at KL 2.0 is half-way between base and base + 0.4; PPO1's final is base + 0.1
    spg = d["vs_ppo"]["RLP-SPG"]
    assert spg["matched_kl"]["pooled"]["diff"] == pytest.approx(0.1, abs=0.01)
    assert spg["matched_kl"]["where"][0] == {"kl": 2.0, "reached": True, "method_final_kl": 3.0,
                                             "ppo1_final_kl": 2.0, "between_steps": [10, 20],
                                             "ppo1_between_steps": [10, 20]}
    assert spg["matched_kl"]["reached"] == "3/3" and spg["matched_kl"]["reached_seeds"] == 3
    assert spg["recovered_share"]["end"]["share"] == pytest.approx(0.5, abs=0.05)
    assert d["checks"]["sizes"]["passed"] is False and d["checks"]["budget"]["passed"] is True
    # no significant oracle gain: no share, a reason instead
    flat = agg.aggregate(_records(oracle_gain=0.0))["vs_ppo"]["RLP-SPG"]["recovered_share"]["end"]
    assert flat["share"] is None and "not significant" in flat["reason"]


def test_matched_kl_stops_where_the_shorter_run_stops():
    """Issue 28 N1: a method that never reaches PPO1's final KL is compared with PPO1 at the method's final KL,
    not its last point against PPO1's last; best-of-n along its plug-in KL. Per seed: the KL and whether reached."""
    agg = _module("quality_aggregate")
    base = [0.0, 0.5, 1.0, 0.25]
    up = lambda d: [b + d for b in base]  # noqa: E731
    ppo = _points([0.0, 1.0, 2.0], [up(0.0), up(0.2), up(0.4)], [base] * 3)  # gold + 0.2 per unit of KL
    short = _points([0.0, 1.0], [up(0.0), up(0.3)], [base] * 2)  # stops at KL 1: + 0.3 there, PPO1 + 0.2
    long = _points([0.0, 4.0], [up(0.0), up(0.8)], [base] * 2)  # at KL 2 (its half-way): + 0.4, as PPO1
    bon = {"prompts": 4, "kl": [0.0, 0.5, 1.5], "kl_analytic": [0.0, 0.19, 0.43],
           "per_prompt_gold": [up(0.0), up(0.1), up(0.5)], "per_prompt_proxy": [base] * 3}  # ends at KL 1.5
    records = [{"seed": s, "evaluation": {}, "eval_points": {"PPO": ppo, "RLP-SPG": short if s == 0 else long},
                "bon_curve": bon} for s in range(2)]
    out = agg.vs_ppo(records)
    spg = out["RLP-SPG"]["matched_kl"]
    assert [e["diff"] for e in spg["per_seed"]] == pytest.approx([0.3 - 0.2, 0.0])
    assert spg["where"][0]["kl"] == 1.0 and spg["where"][0]["reached"] is False
    assert spg["where"][1]["kl"] == 2.0 and spg["where"][1]["reached"] is True and spg["reached"] == "1/2"
    bon_kl = out["Best-of-n"]["matched_kl"]  # at KL 1.5 (n = 3): + 0.5 against PPO1's + 0.3 there
    assert bon_kl["pooled"]["diff"] == pytest.approx(0.2) and bon_kl["reached"] == "0/2"
    assert bon_kl["where"][0]["n"] == pytest.approx(3.0) and bon_kl["where"][0]["kl"] == 1.5


def _flat_or_peaked_study(rng, gold_shape: list[float], seeds: int = 5, prompts: int = 16) -> list[dict]:
    """PPO1 evaluation points of ``seeds`` runs whose true gold follows ``gold_shape`` (per point) and whose proxy
    rises; each point's per-prompt values carry fresh sampling noise (sd 0.3)."""
    records = []
    for seed in range(seeds):
        base = rng.uniform(0, 1, prompts)
        points = [{"step": 10 * j, "kl": 0.5 * j, "per_prompt": {
            "gold": (base + level + rng.normal(0, 0.3, prompts)).tolist(),
            "proxy": (base + 0.5 * j + rng.normal(0, 0.3, prompts)).tolist()}} for j, level in enumerate(gold_shape)]
        records.append({"seed": seed, "eval_points": {"PPO": points}})
    return records


def test_overoptimisation_is_not_found_in_a_flat_curve_and_is_in_a_real_one(monkeypatch):
    """Issue 28 N3: the peak is picked on half of the prompts and the drop tested on the other half, so a flat
    true gold curve (noise only, 5 seeds, 11 points) shows a drop in about the nominal 2.5 % of studies (7 of 400
    here); picked and tested on the same prompts it did in 42 of 400 (13 % in the issue's simulation)."""
    import numpy as np

    from rlp_align.judge import stats

    agg = _module("quality_aggregate")
    # per-point and per-seed bootstrap CIs do not enter the pooled call: left out or cut to 20 resamples, 400
    # studies stay cheap
    monkeypatch.setattr(agg, "mean_ci", lambda values, *a, **k: {"diff": float(np.mean(values))})
    monkeypatch.setattr(agg, "seed_summary", lambda values, *a, **k: stats.seed_summary(values, n_boot=20))
    rng = np.random.default_rng(0)
    studies = 400
    false = sum(agg.overoptimisation(_flat_or_peaked_study(rng, [0.0] * 11))["pooled"]["shown"]
                for _ in range(studies))
    assert false / studies <= 0.05, false / studies
    peaked = [0.0, 0.2, 0.4, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2]  # rises, peaks at step 30, falls
    found = [agg.overoptimisation(_flat_or_peaked_study(rng, peaked))["pooled"] for _ in range(20)]
    assert sum(p["shown"] for p in found) >= 19 and {p["peak_step"] for p in found} <= {20, 30, 40}


def test_best_of_k_kl_exact_against_the_bound():
    """Issue 28 N4: KL(best-of-k || base) on the empirical sample distribution, by hand."""
    quality = _module("quality")
    assert quality.best_of_k_kl([1.0, 1.0, 0.0], ["a", "a", "b"], 1) == 0.0  # best-of-1 is the base
    # k = 2 of 3: the pair {a, a} or {a, b} always holds an "a", the best: q(a) = 1 against p(a) = 2/3
    assert quality.best_of_k_kl([1.0, 1.0, 0.0], ["a", "a", "b"], 2) == pytest.approx(math.log(3 / 2))
    # answers with probabilities [0.55, 0.15, 0.10, 0.08, 0.07, 0.05], the likeliest the proxy's best: 64 of 100
    # samples always hold one of its 55, so best-of-64 is that answer: KL log(1 / 0.55) = 0.60, the bound 3.17
    counts, rank = [55, 15, 10, 8, 7, 5], [6.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    responses = [f"answer {i}" for i, c in enumerate(counts) for _ in range(c)]
    proxy = [rank[i] for i, c in enumerate(counts) for _ in range(c)]
    assert quality.best_of_k_kl(proxy, responses, 64) == pytest.approx(math.log(1 / 0.55))
    assert math.log(64) - 63 / 64 == pytest.approx(3.17, abs=0.01)


def spg_share_gold(d: dict) -> float:
    return d["vs_ppo"]["RLP-SPG"]["recovered_share_gold_ppo"]["end"]["share"]


def test_uml_control_fails_for_an_rm_no_better_than_its_baseline():
    """Issue 28: an RLP-UML whose I_JSD is the frozen baseline's (a frozen random-init RM) fails the control,
    though it is far above the floor -2 ln 2 that the control used to judge by."""
    agg = _module("quality_aggregate")
    records = [{"seed": s, "uml_i_jsd": {"RLP-UML": -0.5 + 0.01 * s}, "uml_baseline_i_jsd": -0.48} for s in range(3)]
    mi = agg.uml_mi(records)
    assert all(e["above_floor"] > 0.8 for e in mi["per_seed"]) and mi["passed"] is False
    assert agg.uml_mi([{"seed": 0, "uml_i_jsd": {"RLP-UML": -0.5}}])["passed"] is False  # no baseline: not passed


def test_a_frozen_random_micro_rm_as_rlp_uml_fails_the_uml_control(tmp_path):
    """Issue 28's null case, end to end: RLP-UML's head on a frozen random-init micro RM (an RM that learned
    nothing) ends far above the floor -2 ln 2, which the old control passed, and no higher than the same head
    on another frozen RM (the baseline), so the new control fails. ~25 s on one core."""
    import math
    import random

    from rlp_align.data.records import SampleSet
    from rlp_align.models import load_reward_model, load_tokenizer, save_model
    from rlp_align.rlp.refine import RefineConfig, uml_head_on_frozen_rm
    from rlp_align.worlds import micro

    rms = []
    for seed in (0, 1):
        micro.build_model(tmp_path / f"lm{seed}", hidden_size=128, layers=2, seed=seed)
        save_model(load_reward_model(tmp_path / f"lm{seed}", new_head=True), load_tokenizer(tmp_path / f"lm{seed}"),
                   tmp_path / f"rm{seed}")
        rms.append(str(tmp_path / f"rm{seed}"))
    rng = random.Random(0)
    sets = [SampleSet(x.prompt, [x.meta["answer"], "." + x.meta["answer"], micro.slipped(x.meta["answer"], rng)])
            for x in micro.pool(256, seed=0, digits=2)]
    cfg = RefineConfig(method="uml", base_model=rms[0], output_dir=str(tmp_path / "o"), max_length=32,
                       uml_batch_size=32, lam=0.5, optim={"learning_rate": 1e-3, "batch_size": 32})
    null, baseline = (uml_head_on_frozen_rm(cfg, rm, sets, 150)["i_jsd"] for rm in rms)
    assert null > -2 * math.log(2) + 0.5  # measured: -0.60 (the old control: passed)
    mi = _module("quality_aggregate").uml_mi([{"seed": 0, "uml_i_jsd": {"RLP-UML": null},
                                               "uml_baseline_i_jsd": baseline}])
    assert mi["per_seed"][0]["margin"] < 0.1 and mi["passed"] is False


def test_capacity_pairs_are_noise_free_distinct_of_different_gold_and_spread_over_prompts():
    from rlp_align.worlds import micro

    ceilings = _module("quality_ceilings")
    a, b = micro.pool(2, seed=3)
    ta, tb = a.meta["answer"], b.meta["answer"]
    wrong = "9" * len(ta)
    # a: gold 1, 0.9, 0 (the copy of ta counts once) -> 3 pairs; b: gold 1, 1 -> none, only a tie
    pairs = ceilings.gold_pairs(micro.judge(), [a, b], [[ta, "." + ta, wrong, ta], [tb, " " + tb]], n_pairs=10)
    assert [(p.chosen, p.rejected) for p in pairs] == [(ta, "." + ta), (ta, wrong), ("." + ta, wrong)]
    both = ceilings.gold_pairs(micro.judge(), [a, b], [[ta, wrong, "." + ta], [wrong, tb]], n_pairs=3)
    assert [p.prompt for p in both] == [a.prompt, b.prompt, a.prompt]  # round by round over the prompts
    assert [(p.chosen, p.rejected) for p in both][1] == (tb, wrong) and both[0].meta == {"gold_p": 1.0}


def test_expected_best_of_k_by_hand():
    quality = _module("quality")
    proxy, gold = [3.0, 1.0, 2.0], [0.9, 0.3, 0.6]
    assert quality.expected_best_of(proxy, gold, 1) == pytest.approx((2.0, 0.6))  # the mean of the samples
    # k = 2: subsets {0,1} -> 0, {0,2} -> 0, {1,2} -> 2, each with probability 1/3
    assert quality.expected_best_of(proxy, gold, 2) == pytest.approx(((3 + 3 + 2) / 3, (0.9 + 0.9 + 0.6) / 3))
    assert quality.expected_best_of(proxy, gold, 3) == pytest.approx((3.0, 0.9))


def test_readme_tables_render_from_json(tmp_path):
    tables = _module("readme_tables")
    speed = {
        "date": "2026-01-01", "commit": "abc123", "dirty": False, "smoke": False,
        "settings": {"model": "m", "batch": 8, "new_tokens": 64, "ppo_epochs": 2, "timed_steps": "2..4",
                     "repeats": 3, "threads": 2},
        "machine": {"cpu": "cpu", "cores_available": 2, "busy_at_start": False},
        "ppo": {"ours": [{"median_step_seconds": 2.0, "peak_rss_mb": 2048.0}],
                "trl": [{"median_step_seconds": 5.0, "peak_rss_mb": 4096.0}], "trl_note": None,
                "speedup_trl_over_ours": {"min": 2.4, "median": 2.5, "max": 2.6}},
        "targets": {"ppo_step_vs_trl": {"passed": True, "speedup": {"median": 2.5}, "peak_rss_mb_ours": 2048.0,
                                        "peak_rss_mb_trl": 4096.0},
                    "update_mfu": {"passed": False}, "rlp_overhead": {"passed": None}},
        "mfu": {"mfu_matmul": 0.123, "mfu_6nd": 0.2, "formula": "6ND"},
        "matmul_peak": {"flops_per_second": 180e9, "measurements": [150e9, 180e9]},
        "rlp_overhead": {"measured": False, "reason": "not run yet"},
        "sampling": [{"batch": 8, "tokens_per_second": 64.4, "seconds": 8.0}],
    }
    text = tables.render(speed, None)
    assert "| rlp_align | 2.00, 2.00 – 2.00 | 2.00 |" in text and "| TRL 1.12 PPOTrainer | 5.00" in text
    assert "of 180 GFLOP/s (the highest of 2 measurements, 150 – 180)" in text
    assert "median 2.50×" in text and "12.3 %" in text and "**miss**" in text and "| 8 | 64 | 8.0 |" in text
    assert "Not yet measured: run `.venv/bin/python benchmarks/quality.py --world micro`" in text
    readme = "# x\n\nintro\n\n" + tables.START + "\nold\n" + tables.END + "\ntail\n"
    new = tables.replace_section(readme, "NEW")
    assert new == "# x\n\nintro\n\n" + tables.START + "\nNEW\n" + tables.END + "\ntail\n"
    assert tables.replace_section(new, "NEW") == new
    assert tables.START in (ROOT / "README.md").read_text()
    assert "Speed\n\nNot yet measured" in tables.render(None, None)

    agg = _module("quality_aggregate")
    quality = {"world": "micro", "date": "2026-01-01", "commit": "abc123", "preset": "configs/micro.yaml",
               "seeds_finished": [0, 1, 2], "seeds_requested": [0, 1, 2, 3, 4], **agg.aggregate(_records(0.1)),
               "png": []}
    text = tables.render(None, quality)
    assert "### Quality, micro world (`benchmarks/results/quality-micro.json`)" in text
    assert "| ppo_vs_sft_gold | CI above 0 in 3 of 3 seeds; pooled +0.0998 [" in text and "**pass**" in text
    spg_row = next(line for line in text.splitlines() if line.startswith("| RLP-SPG |"))
    assert "| 3 of 3 |" in spg_row and "| +0.50 [+0.48, +0.51] |" in spg_row  # the share of the oracle's gain
    assert spg_row.endswith("| 3/3 | +0.50 [+0.48, +0.51] | +0.16 [+0.16, +0.17] |")  # reached; shares of the
    # oracle's gain and of gold PPO's (0.049 of 0.3)
    assert "| RM capacity | 93.8 [93.8, 93.8] | +31.2 [+31.2, +31.2] |" in text
    assert "Not yet measured: run `.venv/bin/python benchmarks/quality.py --world micro --variant majority`" in text
    both = tables.render(None, quality, None, {**quality, "variant": "majority"})
    assert "### Quality, both variants side by side" in both and "| gold_ppo_vs_ppo_gold | **pass** | **pass** |" in both
    assert "### Quality, micro-majority world (`benchmarks/results/quality-micro-majority.json`)" in both
    assert "| sizes | n_eval 64 (64 distinct, 0 in training), on-policy pairs 64, SPG pairs per seed [130, 130, 130] |" in text
    assert "P(majority answer correct) +0.750" in text
    # best-of-n: the plug-in KL, the analytic bound in brackets
    with_bon = _records(0.1)
    for r in with_bon:
        r["bon_curve"] = {"prompts": 2, "kl": [0.01 * (n - 1) for n in range(1, 65)],
                          "kl_analytic": [math.log(n) - (n - 1) / n for n in range(1, 65)],
                          "per_prompt_gold": [[0.5, 0.5]] * 64, "per_prompt_proxy": [[0.0, 0.0]] * 64}
    text = tables.render(None, {**quality, **agg.aggregate(with_bon)})
    assert "n = 4 (KL 0.03 [0.64]) +0.500" in text and "n = 64 (KL 0.63 [3.17]) +0.500" in text
    unshared = {**quality, **agg.aggregate(_records(0.0))}
    assert "not given: the oracle's gain is not significant" in tables.render(None, unshared)




def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: every phase of the GPU check runs on the CPU (tiny sizes) and the
    README's GPU table renders from its JSON. (The "under 2 minutes" is measured, not asserted here.)"""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--dry-run", "--budget_s", "900"], env=env,
                          capture_output=True, text=True, timeout=1000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = json.loads((tmp_path / "gpu.json").read_text())
    assert d["dry_run"] and d["settings"]["batch"] == 4 and d["gpu"] is None
    assert d["tests"]["status"] == "ok" and d["tests"]["tests"] >= 3 and d["tests"]["failures"] == 0
    assert d["peak"]["flops_per_second"] > 0 and d["build"]["tiny"]["status"] == "ok"
    for tag in ("full", "lora"):
        run = d["ppo"][f"tiny/{tag}"]
        assert run["status"] == "ok" and run["config"]["optim"]["mixed_precision"] == "bf16", run
        assert run["step_seconds"] > 0 and 0 < run["mfu"]["step"] < 1 and 0 < run["mfu"]["update"] < 1
        assert run["phases"]["response_length"] > 0
    rloo = d["rloo"]["tiny/full"]
    assert rloo["status"] == "ok" and (rloo["step_seconds"] > 0 if rloo["available"] else rloo["reason"])
    assert d["trl"]["tiny/full"]["status"] == "ok"  # measured, or a reason why trl does not import
    batches = d["sampling"]["tiny"]["batches"]
    assert set(batches) == {"4", "8"} and all(b["tokens_per_second"] > 0 for b in batches.values())
    tables = _module("readme_tables")
    text = tables.render(None, None, d)
    assert "| ppo tiny/full |" in text and "Dry run on the CPU" in text and "| tiny | 8 |" in text
    assert "### GPU\n\nNot yet measured" in tables.render(None, None)
