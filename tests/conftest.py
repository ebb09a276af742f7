"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny networks gain nothing from intra-op threads, and OpenMP barriers stall badly when
    the 2 CI cores are shared (measured: a 0.05 s forward took ~3 s with 2 threads under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
