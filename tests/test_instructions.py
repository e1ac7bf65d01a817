import json
from collections import Counter

import pytest

from rlp_align.data import constraints as C
from rlp_align.worlds.instructions import INCOMPATIBLE, builtin_pool, load_instruction_pool


def test_builtin_pool_is_deterministic_given_the_seed_and_changes_with_it():
    a, b, c = builtin_pool(50, seed=1), builtin_pool(50, seed=1), builtin_pool(50, seed=2)
    assert [x.text for x in a] == [x.text for x in b]
    assert [x.text for x in a] != [x.text for x in c]


def test_builtin_pool_is_varied_and_its_constraints_are_valid_compatible_and_stated():
    pool = builtin_pool(300, seed=0)
    assert len(pool) == 300 and len({x.text for x in pool}) > 290
    assert len({x.meta["topic"] for x in pool}) >= 30 and len({x.meta["task"] for x in pool}) >= 10
    kinds = Counter(c["kind"] for x in pool for c in x.constraints)
    assert set(kinds) == set(C.KINDS)  # every constraint kind occurs
    for x in pool:
        assert 1 <= len(x.constraints) <= 3 and x.reference is None
        names = [c["kind"] for c in x.constraints]
        assert len(set(names)) == len(names)
        assert not any(frozenset((p, q)) in INCOMPATIBLE for p in names for q in names if p != q)
        for c in x.constraints:
            assert C.render(C.validate(c)) in x.text  # the model is told every constraint
        assert x.prompt[-1]["role"] == "user"


def test_load_alpaca_file_with_and_without_appended_constraints(tmp_path):
    rows = [{"instruction": f"Name a colour number {i}.", "input": "" if i % 2 else "context", "output": "Blue."}
            for i in range(20)]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    plain = load_instruction_pool(path)
    assert len(plain) == 20 and plain[0].reference == "Blue." and plain[0].constraints == []
    assert plain[0].text == "Name a colour number 0.\n\ncontext"
    constrained = load_instruction_pool(path, with_constraints=True, seed=5)
    assert [x.text for x in constrained] == [x.text for x in load_instruction_pool(path, True, seed=5)]
    for p, x in zip(plain, constrained):
        assert len(x.constraints) == 1 and x.text.startswith(p.text)
        assert x.text.endswith(C.render(x.constraints[0]))
        assert x.meta["reference_satisfies_constraints"] == C.check(x.constraints[0], "Blue.")


def test_load_alpacafarm_eval_keeps_references_and_subsets(shared_data):
    pool = load_instruction_pool(shared_data / "alpacafarm_eval.json", limit=50)
    assert len(pool) == 50 and all(x.reference for x in pool)
    assert {x.meta["subset"] for x in pool} <= {"selfinstruct", "oasst", "koala", "helpful_base"}


def test_bad_arguments_are_user_errors():
    from rlp_align.core.errors import UserError

    with pytest.raises(UserError):
        builtin_pool(-1)
