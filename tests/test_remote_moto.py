"""A second S3 implementation: moto's standalone server (``moto[server]``), so that the S3 path is
not tuned to SeaweedFS's answers alone. The same checks as tests/test_remote.py's S3 ones that
moto can answer: bit-exact restores (mapped and through the ring), ranged reads pinned to the
first ETag (an overwrite is detected), a missing object, and the stream-through cache.

moto accepts any credentials, so "denied" is tested against SeaweedFS only (tests/test_remote.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import snapload
from snapload import _native
from _remote_servers import LOOPBACK, S3_BUCKET, S3Server, free_port, stop_server, wait_for_port
from _remote_fixtures import assert_restored, local_snapshot, remote_env  # noqa: F401 - fixtures
from _require import missing
from test_remote import s3_env, upload


@contextlib.contextmanager
def moto_server(timeout: float = 60.0) -> Iterator[S3Server]:
    """``python -m moto.server`` on loopback and a free port, in its own session; always stopped."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = S3Server(f"http://{LOOPBACK}:{port}", S3_BUCKET, proc)
    try:
        wait_for_port(port, timeout, proc)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        stop_server(proc)
        log.close()


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Server]:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        missing("moto's server is not installed: pip install -r scripts/requirements-dev.txt")
    with moto_server() as server:
        yield server


def test_moto_restore_cpu_is_bit_exact(moto: S3Server, local_snapshot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    path, data, state = local_snapshot
    s3_env(monkeypatch, moto)
    url = upload(moto, "exact/model.snap", data)
    restored = snapload.restore(url)
    assert_restored(restored, state)
    local = snapload.restore(path)
    assert all(torch.equal(restored[k], local[k]) for k in state)


def test_moto_overwrite_during_restore_is_detected(moto: S3Server, local_snapshot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, data, _ = local_snapshot
    s3_env(monkeypatch, moto)
    url = upload(moto, "overwrite/model.snap", data)
    snap = _native.Snapshot(url)  # pins the ETag
    upload(moto, "overwrite/model.snap", data[:-1] + bytes([data[-1] ^ 0xFF]))
    arena = torch.empty(snap.file_size, dtype=torch.uint8)
    with pytest.raises(snapload.SnapshotError, match="changed while it was being read"):
        snap.fetch_into(arena.numpy())


def test_moto_missing_object_is_file_not_found(moto: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_env(monkeypatch, moto)
    url = f"s3://{moto.bucket}/no/such.snap"
    with pytest.raises(FileNotFoundError) as e:
        snapload.open(url)
    assert e.value.filename == url
    url = f"s3://no-such-bucket-{os.getpid()}/model.snap"
    with pytest.raises(FileNotFoundError) as e:
        snapload.restore(url)
    assert e.value.filename == url


def test_moto_cache_round_trip(moto: S3Server, local_snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, data, state = local_snapshot
    s3_env(monkeypatch, moto)
    url = upload(moto, "cached/model.snap", data)
    restored = snapload.restore(url, cache_dir=tmp_path)
    assert_restored(restored, state)
    snapload.wait_for_cache()  # published in the background
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size == len(data)]
    assert len(files) == 1 and files[0].read_bytes() == data, "one published copy, byte-identical to the object"
