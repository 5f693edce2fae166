"""Fixtures shared by the core and reliability tests."""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:  # worker processes import `_helpers` by name
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture
def snap_path(tmp_path: Path) -> Path:
    return tmp_path / "model.snap"


@pytest.fixture
def sample_state() -> dict[str, torch.Tensor]:
    """A small state dict with several dtypes, a 0-d tensor, an empty one and a tied pair."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(16, 8, generator=g)
    return {
        "embed.weight": emb,
        "layer.weight": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        "layer.bias": torch.arange(8, dtype=torch.int64),
        "scale": torch.tensor(0.5, dtype=torch.float16),
        "empty": torch.empty(0, 4),
        "mask": torch.tensor([True, False, True]),
        "lm_head.weight": emb,
    }


@pytest.fixture(scope="session")
def mp_context() -> Iterator[multiprocessing.context.BaseContext]:
    """Worker processes for the multi-process tests. A forkserver imports torch and snapload once
    (importing torch costs seconds on a 2-core machine), then forks each worker from that clean,
    single-threaded server: fresh processes that share nothing with this one, started cheaply."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "snapload", "snapload._restore", "snapload._write", "_helpers"])
    yield ctx
