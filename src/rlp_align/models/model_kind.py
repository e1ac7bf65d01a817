"""Is this folder a reward model? Checked wherever a trained RM is expected (scoring, PPO's reward, ensembles,
`eval rm-accuracy`, the RM annotator, ``refine.previous_rm``).

A causal-LM folder loads as a sequence classifier too, but with a new zero-initialised head, so every
response gets reward 0 and every accuracy is 0.0 without a warning. Only reward training (which starts
from the SFT policy) and value models (initialised from an RM or the policy) may take a new head.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlp_align.core.errors import UserError


def _make_one(folder: Path) -> str:
    return (f"Train a reward model from it first: `rlp reward --model {folder} --train_file PREFERENCES "
            "--output_dir RM_DIR`, then pass RM_DIR/model as the reward model.")


def check_reward_model_folder(folder: str | Path) -> None:
    """Refuse a model folder whose config is not a sequence classifier (a causal LM, an encoder, ...)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: cannot read config.json ({e})") from None
    architectures = config.get("architectures") or []
    if not any("ForSequenceClassification" in a for a in architectures):
        kind = ", ".join(architectures) or "a model with no architectures entry"
        raise UserError(f"{folder} is not a reward model: its config.json names {kind}, not a sequence classifier "
                        f"with one output (num_labels=1), so its new head would give every response reward 0. "
                        + _make_one(folder))


def check_policy_folder(folder: str | Path) -> None:
    """Refuse a reward model (a sequence classifier) where a policy is expected: loaded as a causal LM its score
    head is dropped and a language-model head it never trained is used instead, so it samples noise."""
    folder = Path(folder)
    try:
        architectures = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # the loader names what is wrong with the folder
    if any("ForSequenceClassification" in a for a in architectures):
        raise UserError(f"{folder} is a reward model ({', '.join(architectures)}), not a policy: loaded as a "
                        "language model its score head would be dropped and its samples would come from a head "
                        "it never trained. Pass a policy (a causal LM: the SFT or PPO model/ folder) instead.")


def check_trained_head(folder: str | Path, missing_head_keys: list[str]) -> None:
    """Refuse a classifier folder whose weights lack the head (transformers would initialise it at random)."""
    if missing_head_keys:
        raise UserError(f"{folder} is a sequence classifier without trained head weights "
                        f"({', '.join(missing_head_keys)} missing from its weights), so its rewards would be "
                        "random. " + _make_one(Path(folder)))
