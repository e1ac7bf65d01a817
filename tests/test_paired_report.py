"""The evaluation stage's paired comparisons and the report section that shows them."""

import re

import numpy as np

from rlp_align.pipeline.report import paired_section
from rlp_align.pipeline.stages_impl import paired_evaluation


def synthetic(oracle_gain: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, size=120)
    gold = {"SFT": base.tolist(), "PPO": (base + 0.05).tolist(), "Oracle": (base + 0.05 + oracle_gain).tolist(),
            "RLP-SPG": (base + 0.05 + 0.5 * oracle_gain + rng.normal(0, 0.01, 120)).tolist()}
    rm0 = [True] * 60 + [False] * 60
    refined = [True] * 80 + [False] * 40
    return paired_evaluation(gold, {"RM0": rm0, "RLP-SPG": refined}, seed=0,
                             heldout_correct={"RM0": [True] * 50 + [False] * 14, "RLP-SPG": [True] * 48 + [False] * 16})


def test_paired_evaluation_and_report_section():
    ev = synthetic(oracle_gain=0.1)
    assert set(ev["paired"]) == {"PPO", "SFT"}
    assert abs(ev["paired"]["SFT"]["PPO"]["gold_diff"]["diff"] - 0.05) < 1e-12
    acc = ev["rm_accuracy_vs_rm0"]["RLP-SPG"]
    assert (acc["only_new"], acc["only_ref"]) == (20, 0) and abs(acc["diff"] - 20 / 120) < 1e-12
    assert len(acc["per_pair_diff"]) == 120 and acc["mcnemar_p"] < 1e-5
    md = "\n".join(paired_section(ev))
    assert "| PPO | SFT | +0.0500 |" in md and "| Oracle | PPO | +0.1000 |" in md
    share = re.search(r"RLP-SPG (\d\.\d\d) \[(\d\.\d\d), (\d\.\d\d)\]", md)  # significant oracle gain: shown
    assert share and abs(float(share[1]) - 0.5) < 0.03 and float(share[2]) < float(share[1]) < float(share[3])
    assert "| RLP-SPG | +16.7 pts |" in md
    fit = ev["refined_fit_d"]["RLP-SPG"]  # held-out D: 2 pairs lost, none gained
    assert (fit["only_new"], fit["only_ref"]) == (0, 2) and abs(fit["diff"] + 2 / 64) < 1e-12
    assert "Held-out D accuracy against RM0" in md and "| RLP-SPG | -3.1 pts |" in md

    flat = "\n".join(paired_section(synthetic(oracle_gain=0.0)))
    assert "not reported: the oracle's gain over PPO is not significant" in flat
    assert paired_section({}) == []


def test_report_shows_the_uml_information_term(tmp_path):
    """Issue 22: uml/i_jsd and uml/d_skl of each UML refinement appear in the report, with the distance of the
    last I_JSD from its floor -2 log 2; folders without UML metrics (SPG) give no row."""
    import json

    from rlp_align.pipeline.report import uml_section

    (tmp_path / "07_refine_uml").mkdir()
    (tmp_path / "07_refine_spg").mkdir()
    rows = [{"step": 1, "uml/i_jsd": -1.386, "uml/d_skl": 0.5, "uml/beta": 0.001},
            {"step": 2, "eval/accuracy": 0.9},
            {"step": 100, "uml/i_jsd": -0.5, "uml/d_skl": 0.125, "uml/beta": 1.0}]
    (tmp_path / "07_refine_uml" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "07_refine_spg" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.6}) + "\n")
    md = "\n".join(uml_section(tmp_path))
    assert "### RLP-UML information term" in md
    assert "| uml | 100 | -1.386 | -0.500 | +0.886 | 0.1250 | 1 |" in md
    assert "spg" not in md.split("|---|")[-1]
    assert uml_section(tmp_path / "07_refine_spg") == []
