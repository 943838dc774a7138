"""Shared fixtures: the real model files (fetched when missing) and the llama.cpp reference folder.

Tests that use a model fixture should carry ``@pytest.mark.model``. A model that cannot be had
makes the test fail with the reason (never skip): a missing model is a broken environment.
"""
from __future__ import annotations

import os

# Set before numpy loads: OpenBLAS threads fight the engine and each other on small machines.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _model_path(name: str) -> Path:
    from tova import models

    try:
        return models.resolve(name)
    except Exception as e:  # report every failure the same way: which model, and why
        pytest.fail(f"model {name!r} could not be resolved or fetched: {type(e).__name__}: {e}",
                    pytrace=False)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (llama architecture, GPT-2 style BPE)."""
    return _model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma 3 270M Q4_K_M (gemma3 architecture, SentencePiece tokenizer)."""
    return _model_path("gemma-3-270m")


@pytest.fixture(scope="session")
def qwen05_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2 architecture)."""
    return _model_path("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def qwen15_path() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M (qwen2 architecture, 1.1 GB)."""
    return _model_path("qwen2.5-coder-1.5b-instruct")


@pytest.fixture(scope="session")
def gguf_reader():
    """``open(path)``: the gguf package's reader of a real model file, opened once per session (it
    parses every vocabulary string in Python: 11 s for Gemma 3's 262k tokens)."""
    import gguf

    readers: dict[Path, gguf.GGUFReader] = {}

    def open_reader(path: Path) -> gguf.GGUFReader:
        key = Path(path).resolve()
        if key not in readers:
            readers[key] = gguf.GGUFReader(str(key))
        return readers[key]

    return open_reader


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """llama.cpp reference outputs: ``$TOVA_SHARED/reference`` when TOVA_SHARED is set, else
    ``shared/reference`` beside the repository checkout."""
    env = os.environ.get("TOVA_SHARED")
    path = (Path(env).expanduser() if env else REPO_ROOT.parent / "shared") / "reference"
    if not (path / "models.json").is_file():
        how = "TOVA_SHARED" if env else "the shared/ folder beside the checkout"
        pytest.fail(f"reference folder not found at {path} (from {how}); "
                    "set TOVA_SHARED to the shared/ folder", pytrace=False)
    return path


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``TOVA_TEST_SHARD=k/n`` keeps every n-th selected test from the k-th (k from 0): n
    processes, one for each k, run the selection once between them. tests/cuda_sim.sh runs the
    simulated CUDA tests so, in parallel, when TOVA_SIM_SHARDS is above 1."""
    spec = os.environ.get("TOVA_TEST_SHARD")
    if not spec:
        return
    try:
        k, n = (int(v) for v in spec.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"TOVA_TEST_SHARD={spec!r}: expected k/n with 0 <= k < n") from None
    kept = items[k::n]
    kept_ids = {id(item) for item in kept}
    config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept_ids])
    items[:] = kept
