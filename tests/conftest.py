"""Suite-wide settings: one intra-op thread and a private data cache for every test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread_and_private_cache(tmp_path_factory, monkeypatch):
    """Tiny networks gain nothing from intra-op threads, and OpenMP barriers stall badly when
    the 2 CI cores are shared (measured: a 0.05 s forward took ~3 s with 2 threads under load).
    Procedural/KiTS19 caches go to the session's temporary folder, never to ~/.cache."""
    monkeypatch.setenv("LAWORDER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
