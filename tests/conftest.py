"""Suite-wide settings: one intra-op thread and a private data cache for every test; a private
torch.compile cache per test process (``make test`` runs the files in two pytest-xdist workers)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def _load_bench(name: str):
    """``bench/<name>.py`` as a module (registered in sys.modules, as dataclasses need), without
    keeping the src/-first ``sys.path`` its script header sets."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


@pytest.fixture(scope="session")
def load_bench():
    """A loader of benchmark scripts: ``load_bench("synth_fair")`` -> the module."""
    return _load_bench


@pytest.fixture(scope="session", autouse=True)
def private_compile_cache(tmp_path_factory):
    """Two workers compiling at once into the shared /tmp/torchinductor_<user> can load each
    other's half-written kernels (seen here: ``ImportError: ... .so: file too short``)."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "inductor")
    yield
    if previous is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


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
