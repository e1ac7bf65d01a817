"""The benchmark scripts: speed.py and quality.py smoke runs, their pure helpers, and the README tables."""

import importlib.util
import json
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
    missed = speed.judge(ours, trl, None, {**mfu, "mfu_matmul": 0.2}, {"measured": False}, None)
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


def test_t_interval_by_hand():
    quality = _module("quality")
    r = quality.t_interval([0.4, 0.6])  # sd = 0.1414, half-width = 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert r["mean"] == pytest.approx(0.5) and r["ci_high"] == pytest.approx(1.7706, abs=1e-4)
    assert quality.t_interval([0.4, 0.6], (0.0, 1.0))["ci_low"] == 0.0
    assert quality.t_interval([0.3])["ci_low"] is None and quality.t_interval([])["mean"] is None


def test_quality_smoke_and_resume(tmp_path):
    out, work = tmp_path / "quality.json", tmp_path / "work"
    log = _run("quality.py", "--smoke", "--jobs", "2", "--out", str(out), "--work_dir", str(work), timeout=400)
    assert "seed 0: running" in log and "seed 1: running" in log
    assert (work / "seed0.log").exists() and (work / "seed1.log").exists()  # one process per seed
    d = json.loads(out.read_text())
    assert d["seeds_finished"] == [0, 1] and {"date", "commit", "settings", "targets"} <= set(d)
    quality = _module("quality")
    assert list(d["methods"]) == quality.METHODS
    for row in d["methods"].values():
        assert 0 <= row["win_rate"]["mean"] <= 1 and len(row["per_seed"]) == 2
        assert all(0 <= s["ci_low"] <= s["mean"] <= s["ci_high"] <= 1 for s in row["per_seed"])
    assert set(d["rm_accuracy_on_policy"]) == {"RM0", "RLP-UML", "RLP-SPG", "RLP-UML+SPG", "Oracle"}
    assert set(d["recovered_share"]) == set(quality.RLP_VARIANTS)
    assert set(d["spg_label_accuracy"]) == {"rm_rank", "select_all", "spg", "west_of_n"}
    for r in d["spg_label_accuracy"].values():
        assert r["mean"] is None or 0 <= r["mean"] <= 1
    assert set(d["targets"]) == {"RLP-SPG_above_PPO", "RLP-UML_above_PPO", "refined_RMs_more_accurate_on_policy"}
    assert Path(d["png"]).stat().st_size > 1000
    # the paired keys (issue 17): per-seed paired CIs and the hierarchical bootstrap pooled over seeds
    assert set(d["controls"]) == {"ppo_vs_sft_gold", "oracle_rm_vs_rm0_accuracy", "oracle_vs_ppo_gold", "refined_fit_d"}
    ppo_sft = d["controls"]["ppo_vs_sft_gold"]
    assert [s["seed"] for s in ppo_sft["per_seed"]] == [0, 1]
    assert ppo_sft["pooled"]["ci_low"] <= ppo_sft["pooled"]["diff"] <= ppo_sft["pooled"]["ci_high"]
    assert set(d["vs_ppo"]) == set(quality.METHODS) - {"PPO"}
    assert set(d["truncated_share"]) == set(quality.METHODS)
    assert d["sizes"]["n_eval"] > 0 and len(d["sizes"]["spg_pairs_per_seed"]) == 2
    for run in d["per_seed_run"].values():  # read from each seed's stage manifests
        assert run["total_minutes"] > 0 and run["spg_pairs"] >= 0
    # a later call with no seed budget aggregates the finished seeds without running anything
    out2 = tmp_path / "again.json"
    log = _run("quality.py", "--smoke", "--out", str(out2), "--work_dir", str(work), "--max_seeds_per_call", "0")
    assert "running" not in log
    assert json.loads(out2.read_text())["methods"] == d["methods"]


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
    assert "Not yet measured: run `.venv/bin/python benchmarks/quality.py`" in text
    readme = "# x\n\nintro\n\n" + tables.START + "\nold\n" + tables.END + "\ntail\n"
    new = tables.replace_section(readme, "NEW")
    assert new == "# x\n\nintro\n\n" + tables.START + "\nNEW\n" + tables.END + "\ntail\n"
    assert tables.replace_section(new, "NEW") == new
    assert tables.START in (ROOT / "README.md").read_text()
    assert "Speed\n\nNot yet measured" in tables.render(None, None)

    interval = {"mean": 0.6, "ci_low": 0.55, "ci_high": 0.65, "n": 3}
    quality = {
        "date": "2026-01-01", "commit": "abc123", "preset": "configs/alpaca.yaml", "seeds_finished": [0, 1, 2],
        "seeds_requested": [0, 1, 2],
        "settings": {"baseline": "reference", "n_eval": 64, "gold": "rule annotator without label noise",
                     "label_noise": 0.25},
        "methods": {"RLP-SPG": {"win_rate": interval, "gold_reward": {"mean": 0.4321},
                                "per_seed": [{"mean": 0.6, "ci_low": 0.5, "ci_high": 0.7}]}},
        "rm_accuracy_on_policy": {"RM0": {"mean": 0.55, "ci_low": None, "ci_high": None, "per_seed": {"0": 0.5, "1": 0.6}},
                                  "RLP-UML": {"mean": 0.6, "ci_low": None, "ci_high": None,
                                              "per_seed": {"0": 0.6, "1": 0.6}}},
        "recovered_share": {"RLP-SPG": {"mean": 0.25, "ci_low": -0.1, "ci_high": 0.6, "per_seed": [0.2, None, 0.3]}},
        "spg_label_accuracy": {"spg": {"label": "SPG (gamma = 0.5)", "mean": 0.7, "ci_low": 0.6, "ci_high": 0.8,
                                       "pairs_per_seed": [10, 11, 12]}},
        "targets": {"x": {"target": "RLP-SPG above PPO", "RLP-SPG_ci_low": 0.55, "PPO_ci_high": 0.5, "passed": True},
                    "y": {"target": "refined RMs better", "RM0": 0.55, "refined": {"RLP-UML": 0.6}, "passed": True}},
    }
    text = tables.render(None, quality)
    assert "| RLP-SPG | 60.0 | [55.0, 65.0] | 60.0 [50.0, 70.0] | 0.432 |" in text
    assert "| RM0 | 55.0 | [–, –] |" in text and "| RLP-SPG | 0.25 | [-0.10, 0.60] | 2 of 3 |" in text
    assert "| SPG (gamma = 0.5) | 70.0 | [60.0, 80.0] | [10, 11, 12] |" in text
    assert "| RLP-SPG above PPO | CI low 55.0 % vs PPO's CI high 50.0 %; every method's mean win-rate lies in " \
           "60.0 – 60.0 % | **pass** |" in text
    assert "| refined RMs better | RM0 55.0 %; RLP-UML 60.0 % (above RM0 in 1 of 2 seeds) | **pass** |" in text and "against the reference answers" in text


def test_quality_paired_aggregate_on_synthetic_records():
    import numpy as np

    from rlp_align.pipeline.stages_impl import paired_evaluation

    quality = _module("quality")
    records = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        base = rng.uniform(0, 1, size=64)
        gold = {"SFT": base, "PPO": base + 0.1 + rng.normal(0, 0.01, 64), "Oracle": base + 0.2,
                "RLP-SPG": base + 0.15 + rng.normal(0, 0.01, 64)}
        ev = paired_evaluation({k: list(v) for k, v in gold.items()},
                               {"RM0": [True] * 40 + [False] * 24, "Oracle": [True] * 56 + [False] * 8}, seed,
                               {"RM0": [True] * 60 + [False] * 4, "Oracle": [True] * 60 + [False] * 4})
        ev.update(n_eval=64, on_policy_pairs=64, heldout_d_pairs=64,
                  win_rates={m: {"truncated_share": 0.25} for m in gold})
        records.append({"seed": seed, "evaluation": ev, "run": {"spg_pairs": 70 + seed}})
    out = quality.paired_aggregate(records)
    ppo_sft = out["controls"]["ppo_vs_sft_gold"]
    assert [s["seed"] for s in ppo_sft["per_seed"]] == [0, 1, 2] and all(s["ci_low"] > 0 for s in ppo_sft["per_seed"])
    assert abs(ppo_sft["pooled"]["diff"] - 0.1) < 0.01 and ppo_sft["pooled"]["ci_low"] > 0
    assert abs(out["controls"]["oracle_rm_vs_rm0_accuracy"]["pooled"]["diff"] - 16 / 64) < 1e-9
    assert out["controls"]["oracle_vs_ppo_gold"]["pooled"]["ci_low"] > 0
    fit = out["controls"]["refined_fit_d"]["Oracle"]["pooled"]
    assert fit == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0} and not out["controls_missing"]
    assert set(out["vs_ppo"]) == {"SFT", "Oracle", "RLP-SPG"}
    assert abs(out["recovered_share_paired"]["RLP-SPG"]["share"] - 0.5) < 0.05
    assert out["sizes"] == {"n_eval": 64, "n_heldout_d_pairs": 64, "n_onpolicy_pairs": 64,
                            "spg_pairs_per_seed": [70, 71, 72]}
    assert out["truncated_share"]["PPO"] == 0.25


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
