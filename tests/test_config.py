from dataclasses import dataclass, field
from typing import Literal

import pytest

from rlp_align.core.config import build_config, config_hash, load_config, parse_overrides, read_yaml
from rlp_align.core.errors import UserError


@dataclass
class Inner:
    kl_coef: float = 0.1
    steps: int = 3


@dataclass
class Outer:
    model: str = "tiny"
    method: Literal["uml", "spg"] = "uml"
    refine: list[str] = field(default_factory=lambda: ["uml"])
    seed: int | None = None
    ppo: Inner = field(default_factory=Inner)


def test_yaml_plus_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\nppo:\n  steps: 5\n")
    cfg = load_config(Outer, path, parse_overrides(["--ppo.kl_coef", "0.05", "--refine=[uml, spg]", "--seed", "3"]))
    assert (cfg.model, cfg.ppo.steps, cfg.ppo.kl_coef, cfg.refine, cfg.seed) == ("m", 5, 0.05, ["uml", "spg"], 3)
    assert parse_overrides(["--flag"]) == {"flag": True}


@pytest.mark.parametrize("values,message", [
    ({"modle": "x"}, "unknown config key 'modle' (did you mean 'model'?)"),
    ({"ppo": {"kl": 1}}, "unknown config key 'ppo.kl'"),
    ({"ppo": {"steps": "many"}}, "ppo.steps: expected an integer"),
    ({"method": "dpo"}, "method: 'dpo' is not one of"),
    ({"ppo": 3}, "ppo: expected a mapping"),
])
def test_unknown_keys_and_wrong_types_are_named(values, message):
    with pytest.raises(UserError) as err:
        build_config(Outer, values)
    assert message in str(err.value)


def test_bad_yaml_and_hash_stability(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(Outer, path)
    with pytest.raises(UserError, match="unexpected argument"):
        parse_overrides(["positional"])
    assert config_hash(Outer()) == config_hash(Outer()) != config_hash(Outer(model="x"))


def test_a_key_given_twice_in_yaml_is_an_error_at_any_depth(tmp_path):
    """PyYAML keeps the last of two equal keys; the first section would be dropped without a word."""
    path = tmp_path / "twice.yaml"
    path.write_text("ppo:\n  steps: 1\n  steps: 2\n")
    with pytest.raises(UserError, match=r"the key 'steps' appears twice in one mapping \(lines 2 and 3\)"):
        load_config(Outer, path)
    path.write_text("ppo:\n  steps: 1\nlist: [{a: 1}, {a: 2}]\n")  # equal keys in different mappings are fine
    assert read_yaml(path) == {"ppo": {"steps": 1}, "list": [{"a": 1}, {"a": 2}]}


# --------------------------------------------------------------------------------------------------
# The shared `optim` / `lora` sections and the deprecated flat keys


def test_flat_keys_move_to_their_section_with_one_message_per_key(tmp_path, capsys):
    from rlp_align.core import config as config_module
    from rlp_align.train.sft import SFTConfig

    config_module._warned.clear()
    path = tmp_path / "old.yaml"
    path.write_text("learning_rate: 1.0e-3\nlora: true\nlora_r: 4\nsave_every: 2\n")
    cfg = load_config(SFTConfig, path, parse_overrides(["--learning_rate", "5e-4", "--optim.batch_size", "2"]))
    assert (cfg.optim.learning_rate, cfg.optim.batch_size, cfg.optim.save_every) == (5e-4, 2, 2)
    assert (cfg.lora.enabled, cfg.lora.r) == (True, 4)
    assert cfg.optim.epochs == 3  # a section given in part keeps SFT's own defaults for the rest
    err = capsys.readouterr().err
    assert "config key 'learning_rate' is deprecated; use 'optim.learning_rate'" in err
    assert "config key 'lora' is deprecated; use 'lora.enabled'" in err
    assert "config key 'lora_r' is deprecated; use 'lora.r'" in err
    assert err.count("'learning_rate' is deprecated") == 1  # once per key, though given in YAML and CLI


def test_command_line_wins_whichever_spelling_each_side_uses(tmp_path):
    from rlp_align.train.reward import RewardConfig

    path = tmp_path / "new.yaml"
    path.write_text("optim: {learning_rate: 1.0e-3}\n")
    assert load_config(RewardConfig, path, {"learning_rate": 2e-3}).optim.learning_rate == 2e-3
    path.write_text("learning_rate: 1.0e-3\n")
    assert load_config(RewardConfig, path, parse_overrides(["--optim.learning_rate", "3e-3"])).optim.learning_rate \
        == 3e-3


def test_a_misspelt_flat_key_suggests_the_dotted_one():
    from rlp_align.train.reward import RewardConfig

    with pytest.raises(UserError, match="did you mean 'optim.learning_rate'"):
        build_config(RewardConfig, {"learnig_rate": 1.0})


def test_refine_inherits_reward_training_settings_key_by_key():
    from rlp_align.pipeline.run import PipelineConfig, refine_section

    base = {"reward": {"max_length": 96, "optim": {"learning_rate": 1e-3, "batch_size": 4}}}
    inherited = refine_section(build_config(PipelineConfig, base))
    assert inherited.optim["learning_rate"] == 1e-3 and inherited.optim["batch_size"] == 4
    assert inherited.max_length == 96
    overridden = refine_section(build_config(PipelineConfig, {**base, "refine": {"optim": {"learning_rate": 5e-5},
                                                                                   "max_length": 64}}))
    assert overridden.optim["learning_rate"] == 5e-5 and overridden.optim["batch_size"] == 4  # per key
    assert overridden.max_length == 64
    old = refine_section(build_config(PipelineConfig, {**base, "refine": {"learning_rate": 7e-5}}))
    assert old.optim["learning_rate"] == 7e-5 and old.optim["batch_size"] == 4
    with pytest.raises(UserError, match="refine.optim.learnig_rate"):
        refine_section(build_config(PipelineConfig, {"refine": {"optim": {"learnig_rate": 1.0}}}))
