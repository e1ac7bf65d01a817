import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--rlp-device", default=os.environ.get("RLP_TEST_DEVICE") or None, choices=("cpu", "cuda"),
                     help="run the device-marked tiny-model tests on this device (default: $RLP_TEST_DEVICE, "
                          "else the package's own rule: a GPU when one is visible, else the CPU)")
    parser.addoption("--long", action="store_true", default=False,
                     help="tests/test_fuzz.py: fuzz with fresh random examples for an hour (RLP_FUZZ_SECONDS)")


def pytest_configure(config):
    """``--rlp-device`` / ``RLP_TEST_DEVICE`` becomes ``RLP_DEVICE``: the package's one device rule
    (`rlp_align.core.device.default_device`) then puts every trainer's, sampler's and scorer's model there."""
    wanted = config.getoption("--rlp-device")
    if wanted:
        os.environ["RLP_DEVICE"] = wanted


@pytest.fixture(scope="session")
def device():
    """Where device-marked tests put the tensors and models they build themselves."""
    from rlp_align.core.device import default_device

    return default_device()


@pytest.fixture
def shared_data() -> Path:
    """The real data folder `../shared/data`; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real data lives beside the repo, not in it)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_thread(request, monkeypatch):
    """Tiny-model tests run fastest on one thread (and do not fight other jobs for the 2 cores);
    tests on the built-in SmolLM2 (marked slow) use two."""
    import torch

    threads = 2 if request.node.get_closest_marker("slow") else 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    monkeypatch.setenv("RLP_NUM_THREADS", str(threads))
    yield
    torch.set_num_threads(previous)
