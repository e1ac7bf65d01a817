"""Issue "yardsticks": ensemble members trained with different seeds differ; the oracle labeller flips
labels at the configured noise rate."""

import math

import torch
from helpers import marker_prefs, tiny_reward_model
from safetensors.torch import load_file

from rlp_align.data import read_preferences
from rlp_align.data.records import SampleSet, user_prompt
from rlp_align.pipeline.pipeline_config import world_config
from rlp_align.pipeline.run import PipelineConfig, refine_section
from rlp_align.pipeline.stages_impl import oracle_labels
from rlp_align.train.reward import RewardConfig, train_reward_model
from rlp_align.train.sample import write_sample_sets
from rlp_align.train.training import OptimConfig


def test_ensemble_members_from_different_seeds_have_different_heads(tmp_path):
    prefs = marker_prefs(48)
    heads = []
    for seed in (1001, 2001):  # the pipeline's member seeds: seed + 1000 * (i + 1)
        cfg = RewardConfig(model="tiny", output_dir=str(tmp_path / f"rm{seed}"), seed=seed,
                           optim=OptimConfig(learning_rate=1e-3, max_steps=4, batch_size=8))
        train_reward_model(cfg, prefs)
        heads.append(load_file(tmp_path / f"rm{seed}" / "model" / "model.safetensors")["score.weight"])
    assert torch.count_nonzero(heads[0]) > 0 and not torch.allclose(heads[0], heads[1])


def test_oracle_labeller_flips_at_the_configured_noise(tmp_path):
    """Each pair is a full answer vs an empty-ish one, so the noise-free gold choice is certain; the share
    of oracle labels that choose the degenerate answer is the flip rate."""
    n, noise = 400, 0.25
    sets = [SampleSet(user_prompt(f"Describe item {i} in one sentence."),
                      [f"Item {i} is a small, useful tool that people carry every day.", "the the the the the"])
            for i in range(n)]
    write_sample_sets(str(tmp_path / "samples.jsonl"), sets)
    cfg = PipelineConfig(label_noise=noise)
    out = oracle_labels(cfg.annotator, world_config(cfg), {"samples": str(tmp_path / "samples.jsonl")}, n_pairs=n,
                        label_noise=cfg.label_noise, seed=cfg.seed, folder=tmp_path)
    labels = read_preferences(out["synthetic"])
    assert out["pairs"] == len(labels) == n
    flips = sum(p.chosen == "the the the the the" for p in labels) / n
    tolerance = 4 * math.sqrt(noise * (1 - noise) / n)  # 4 sigma of a binomial proportion
    assert abs(flips - noise) < tolerance, (flips, tolerance)


def test_spg_refinement_with_no_synthetic_pairs_warns_and_trains_on_d(tmp_path):
    """A pool where SPG keeps nothing (all confidences below γ) must not stop the pipeline."""
    import pytest

    from rlp_align.data.writers import write_preferences
    from rlp_align.pipeline.stages_impl import refine_rm

    write_preferences(tmp_path / "d.jsonl", marker_prefs(24))
    (tmp_path / "empty.jsonl").write_text("")
    cfg = PipelineConfig(model="tiny")
    cfg.reward.optim = OptimConfig(learning_rate=1e-3, max_steps=2, batch_size=8)
    with pytest.warns(RuntimeWarning, match="synthetic set D̂ is empty"):
        out = refine_rm(refine_section(cfg), "spg", "tiny", {"model": str(tiny_reward_model(tmp_path / "step2-rm"))},
                        {"train": str(tmp_path / "d.jsonl"), "heldout": None}, {"samples": None},
                        {"synthetic": str(tmp_path / "empty.jsonl"), "pairs": 0}, seed=0, folder=tmp_path / "rm")
    assert (tmp_path / "rm" / "model" / "model.safetensors").exists() and out["model"].endswith("model")
