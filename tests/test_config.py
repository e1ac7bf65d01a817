from dataclasses import dataclass, field
from typing import Literal

import pytest

from rlp_align.config import build_config, config_hash, load_config, parse_overrides
from rlp_align.errors import UserError


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
