"""The thread rule (issue #29): one intra-op thread for models under 10M parameters, every core above,
RLP_NUM_THREADS overriding, one log line naming the rule."""

import logging

import pytest
import torch

from rlp_align.core import threads
from rlp_align.core.errors import UserError


def big_model() -> torch.nn.Module:
    """4,000 x 4,000 + 4,000 = 16.0M parameters, on the meta device (no memory)."""
    return torch.nn.Linear(4000, 4000, device="meta")


@pytest.fixture
def fresh(monkeypatch):
    """A process that has loaded no model yet, with 4 cores and no RLP_NUM_THREADS; torch's count restored."""
    monkeypatch.setattr(threads, "_largest", 0)
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.setattr(threads, "_ALL_CORES", 4)
    monkeypatch.delenv("RLP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_the_rule_as_a_pure_function():
    assert threads.choose_threads(600_000, None, 8)[0] == 1
    assert threads.choose_threads(9_999_999, None, 8)[0] == 1
    assert threads.choose_threads(10_000_000, None, 8)[0] == 8
    assert threads.choose_threads(134_515_008, None, 8)[0] == 8  # SmolLM2-135M keeps every core
    assert threads.choose_threads(600_000, 3, 8) == (3, "set by RLP_NUM_THREADS")
    assert threads.choose_threads(134_515_008, 1, 8)[0] == 1


def test_a_tiny_model_loaded_without_the_variable_runs_one_thread_and_says_why(fresh, caplog):
    from rlp_align.models import TINY_MODEL, load_policy

    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="rlp_align.core.threads"):
        model = load_policy(TINY_MODEL)
    n = sum(p.numel() for p in model.parameters())
    assert n < threads.SMALL_MODEL_PARAMETERS
    assert torch.get_num_threads() == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "rlp_align.core.threads"]
    assert lines == [f"torch threads: 1 (model of {n / 1e6:.1f}M parameters < 10M: one thread; "
                     "RLP_NUM_THREADS overrides)"]


def test_a_large_model_gets_every_core_and_a_small_one_after_it_does_not_take_them_away(fresh, caplog):
    with caplog.at_level(logging.INFO, logger="rlp_align.core.threads"):
        assert threads.fit_threads(torch.nn.Linear(8, 8)) == 1
        assert threads.fit_threads(big_model()) == 4
        assert threads.fit_threads(torch.nn.Linear(8, 8)) == 4  # a tiny RM beside a large policy
    assert torch.get_num_threads() == 4
    assert [r.getMessage() for r in caplog.records] == [
        "torch threads: 1 (model of 0.0M parameters < 10M: one thread; RLP_NUM_THREADS overrides)",
        "torch threads: 4 (model of 16.0M parameters >= 10M: every core; RLP_NUM_THREADS overrides)"]


def test_the_variable_wins_over_the_size(fresh, monkeypatch):
    monkeypatch.setenv("RLP_NUM_THREADS", "2")
    assert threads.fit_threads(torch.nn.Linear(8, 8)) == 2
    assert threads.fit_threads(big_model()) == 2
    assert torch.get_num_threads() == 2


def test_without_a_model_or_the_variable_nothing_changes(fresh):
    torch.set_num_threads(3)
    assert threads.fit_threads() == 3
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("bad", ["abc", "-3", "1e3"])
def test_a_bad_variable_is_a_user_error(fresh, monkeypatch, bad):
    monkeypatch.setenv("RLP_NUM_THREADS", bad)
    with pytest.raises(UserError, match="RLP_NUM_THREADS must be a whole number"):
        threads.fit_threads()
