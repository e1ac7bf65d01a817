import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
