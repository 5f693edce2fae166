"""Restoring from object storage: real servers on 127.0.0.1 (SeaweedFS for S3, a stdlib HTTP
server with Range support, a fault-injecting proxy), started and stopped here.

Every case ends in tensors bit-identical to the local file's, or in a clear error: never in
wrong data."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import snapload
from snapload import _native
from snapload._pipeline import restore_to_host
from _remote_fixtures import assert_restored, http_server, local_snapshot, remote_env, s3  # noqa: F401 - fixtures
from _remote_servers import FAULTS, S3Server, FaultProxy, RangeServer


def s3_env(monkeypatch: pytest.MonkeyPatch, s3: S3Server, secret: str | None = None) -> None:
    from _remote_servers import S3_ACCESS_KEY, S3_SECRET_KEY

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret or S3_SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def upload(s3: S3Server, key: str, data: bytes) -> str:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)
    return f"s3://{s3.bucket}/{key}"


# --- bit-exact restores ---------------------------------------------------------------------


def test_http_restore_cpu_is_bit_exact(http_server: RangeServer, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    path, data, state = local_snapshot
    url = http_server.put("/exact/model.snap", data)
    restored = snapload.restore(url)
    assert_restored(restored, state)
    local = snapload.restore(path)
    assert all(torch.equal(restored[k], local[k]) for k in state)


def test_s3_restore_cpu_is_bit_exact(s3: S3Server, local_snapshot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    s3_env(monkeypatch, s3)
    url = upload(s3, "exact/model.snap", data)
    assert_restored(snapload.restore(url), state)


@pytest.mark.parametrize("server", ["http", "s3"])
def test_pipeline_streams_a_url_through_the_ring(server: str, request: pytest.FixtureRequest, local_snapshot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The CUDA byte path with a host sink: reader threads do ranged GETs into the ring slots."""
    _, data, state = local_snapshot
    if server == "http":
        url = request.getfixturevalue("http_server").put("/ring/model.snap", data)
    else:
        s3 = request.getfixturevalue("s3")
        s3_env(monkeypatch, s3)
        url = upload(s3, "ring/model.snap", data)
    restored, stats = restore_to_host(url, chunk_bytes=1 << 20, slots=4, threads=2, lag=2)
    assert_restored(restored, state)
    assert stats.bytes > 0 and stats.read_paths == {"remote": stats.bytes}, "every byte came from the object store"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (torch.cuda.is_available() is False)")
def test_http_restore_cuda_is_bit_exact(http_server: RangeServer, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/cuda/model.snap", data)
    restored = snapload.restore(url, "cuda")
    assert all(t.device.type == "cuda" for t in restored.values())
    assert_restored(restored, state)


def test_open_reads_only_the_header(http_server: RangeServer, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/open/model.snap", data)
    before = http_server.served.body_bytes
    info = snapload.open(url)
    assert info.path == url and set(info.names) == set(state) and info.file_size == len(data)
    time.sleep(0.2)  # the server counts after its write returns
    assert http_server.served.body_bytes - before <= 256 << 10 < len(data)


def test_restore_module_from_a_url(http_server: RangeServer) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    import io
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.snap"
        snapload.snapshot(model, p)
        url = http_server.put("/module/m.snap", p.read_bytes())
    with snapload.init_empty_weights():
        empty = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    snapload.restore_module(empty, url)
    x = torch.randn(4, 64)
    assert torch.equal(empty(x), model(x))
    del io


# --- the stream-through cache ---------------------------------------------------------------


def test_cache_round_trip(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/cache/model.snap", data)
    cache = tmp_path / "cache"
    before = http_server.served.body_bytes
    assert_restored(snapload.restore(url, cache_dir=cache), state)
    assert snapload.wait_for_cache() == [str(next(cache.glob("*.snap")))]  # published in the background
    time.sleep(0.2)
    first = http_server.served.body_bytes - before
    assert first >= len(data)
    files = sorted(p.name for p in cache.iterdir())
    snaps = [f for f in files if f.endswith(".snap")]
    assert len(snaps) == 1 and not any(".tmp." in f for f in files), files
    assert (cache / snaps[0]).read_bytes() == data
    # Again, through the environment variable: served from the cache (a HEAD, no data).
    os.environ["SNAPLOAD_CACHE_DIR"] = str(cache)
    try:
        assert_restored(snapload.restore(url), state)
    finally:
        del os.environ["SNAPLOAD_CACHE_DIR"]
    time.sleep(0.2)
    assert http_server.served.body_bytes - before - first == 0


def test_cpu_restore_returns_before_the_cache_file_is_published(http_server: RangeServer, local_snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The fsync and rename are off the restore's path: the tensors are views of the entry's
    temporary file, and stay right when it is renamed under them."""
    from snapload import _remote

    _, data, state = local_snapshot
    url = http_server.put("/cache-later/model.snap", data)
    held: list[_native.CacheEntry] = []
    monkeypatch.setattr(_remote, "_publish_in_background", held.append)  # publish when told
    restored = snapload.restore(url, cache_dir=tmp_path)
    assert_restored(restored, state)
    names = [p.name for p in tmp_path.iterdir()]
    assert not [n for n in names if n.endswith(".snap")], names  # nothing looks complete yet
    assert len([n for n in names if ".tmp." in n]) == 1, names
    monkeypatch.undo()
    (entry,) = held
    _remote._publish_in_background(entry)
    (published,) = snapload.wait_for_cache()
    assert Path(published).read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]
    assert_restored(restored, state)  # the mapping outlives the rename
    assert snapload.wait_for_cache() == []


def test_a_forked_child_leaves_the_parents_publishing_to_the_parent(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/cache-fork/model.snap", data)
    assert_restored(snapload.restore(url, cache_dir=tmp_path), state)  # its publish is pending
    pid = os.fork()
    if pid == 0:  # the child: nothing of its own to wait for, and no thread of the parent's to join
        os._exit(0 if snapload.wait_for_cache() == [] else 1)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in wait_for_cache()")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    (published,) = snapload.wait_for_cache()
    assert Path(published).read_bytes() == data


def _child_restores(url: str, cache: Path, then: str) -> subprocess.Popen[str]:
    code = (
        "import sys, snapload\n"
        "from snapload import _remote\n"
        f"if {then!r} == 'hold':\n"
        "    held = []\n"
        "    _remote._publish_in_background = held.append  # kept, never published\n"
        f"tensors = snapload.restore({url!r}, cache_dir={str(cache)!r})\n"
        "print(len(tensors), flush=True)\n"
        f"if {then!r} == 'hold':\n"
        "    sys.stdin.read()  # until killed\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_interpreter_exit_waits_for_the_background_publish(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/cache-exit/model.snap", data)
    child = _child_restores(url, tmp_path, then="exit")
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert out.strip() == str(len(state)) and "not published" not in err, err
    snaps = list(tmp_path.glob("*.snap"))
    assert len(snaps) == 1 and snaps[0].read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]


def test_a_process_killed_before_publishing_leaves_nothing_that_looks_complete(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/cache-killed/model.snap", data)
    child = _child_restores(url, tmp_path, then="hold")
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == str(len(state))  # restored, entry not published
    finally:
        child.kill()
        child.wait(30)
    names = [p.name for p in tmp_path.iterdir()]
    assert not [n for n in names if n.endswith(".snap")] and [n for n in names if ".tmp." in n], names
    # The lock died with the process; the next restore removes the leftover and fetches again.
    assert_restored(snapload.restore(url, cache_dir=tmp_path), state)
    (published,) = snapload.wait_for_cache()
    assert Path(published).read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if ".tmp." in p.name]


def test_new_version_gets_a_new_cache_entry(http_server: RangeServer, tmp_path: Path, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = local_snapshot
    url = http_server.put("/cache2/model.snap", data)
    a, downloaded_a = _native.fetch_to_cache(url, str(tmp_path))
    other = {"x": torch.arange(10)}
    p = tmp_path / "other.snap"
    snapload.snapshot(other, p)
    http_server.put("/cache2/model.snap", p.read_bytes())
    b, downloaded_b = _native.fetch_to_cache(url, str(tmp_path))
    assert downloaded_a and downloaded_b and a != b
    assert torch.equal(snapload.restore(b)["x"], other["x"])


FETCH_SCRIPT = """
import sys, json
from snapload import _native
path, downloaded = _native.fetch_to_cache(sys.argv[1], sys.argv[2])
print(json.dumps([str(path), downloaded]))
"""


def test_eight_processes_share_one_download(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    _, data, _ = local_snapshot
    url = http_server.put("/shared/model.snap", data)
    before = http_server.served.body_bytes
    procs = [
        subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, url, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        for _ in range(8)
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        results.append(json.loads(out))
    time.sleep(0.2)
    served = http_server.served.body_bytes - before
    assert len({r[0] for r in results}) == 1
    assert sum(r[1] for r in results) == 1, "exactly one process downloaded"
    # One full download plus each process's header read (256 KiB at most).
    assert len(data) <= served <= len(data) + 8 * (256 << 10), served
    assert Path(results[0][0]).read_bytes() == data


def test_a_crashed_download_leaves_no_complete_looking_file(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    with FaultProxy(http_server.port, stall_seconds=30) as proxy:
        http_server.put("/crash/model.snap", data)
        url = f"http://127.0.0.1:{proxy.port}/crash/model.snap"
        proxy.min_offset = 256 << 10  # the header read passes, the data reads hang
        proxy.always = "stall"
        env = dict(os.environ, SNAPLOAD_REMOTE_TIMEOUT="60")
        p = subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, url, str(tmp_path)], env=env)
        try:
            deadline = time.monotonic() + 60
            while not any(".tmp." in f.name for f in tmp_path.iterdir()):
                assert time.monotonic() < deadline, "the download never started"
                assert p.poll() is None
                time.sleep(0.05)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
        names = [f.name for f in tmp_path.iterdir()]
        assert not [n for n in names if n.endswith(".snap")], names
        proxy.always = None
        restored = snapload.restore(url, cache_dir=tmp_path)
        assert_restored(restored, state)
        snapload.wait_for_cache()
        names = [f.name for f in tmp_path.iterdir()]
        assert not [n for n in names if ".tmp." in n], names


# --- a concurrent overwrite -----------------------------------------------------------------


def test_overwrite_during_http_restore_is_detected(http_server: RangeServer, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = local_snapshot
    url = http_server.put("/overwrite/model.snap", data)
    replaced = bytearray(data)
    replaced[-1] ^= 0xFF

    def overwrite_once(path: str, rng: tuple[int, int] | None) -> None:
        if path == "/overwrite/model.snap" and rng and rng[0] > 0:
            http_server.objects[path] = bytes(replaced)

    http_server.on_get = overwrite_once
    try:
        with pytest.raises(snapload.SnapshotError, match="changed while it was being read") as e:
            snapload.restore(url)
        assert type(e.value).__name__ == "ObjectChangedError"
        assert url in str(e.value)
    finally:
        http_server.on_get = None


def test_overwrite_during_s3_restore_is_detected(s3: S3Server, local_snapshot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = local_snapshot
    s3_env(monkeypatch, s3)
    url = upload(s3, "overwrite/model.snap", data)
    snap = _native.Snapshot(url)  # pins the ETag
    upload(s3, "overwrite/model.snap", data[:-1] + bytes([data[-1] ^ 0xFF]))
    arena = torch.empty(snap.file_size, dtype=torch.uint8)
    with pytest.raises(snapload.SnapshotError, match="changed while it was being read"):
        snap.fetch_into(arena.numpy())


# --- errors ---------------------------------------------------------------------------------


def test_missing_objects_are_file_not_found(http_server: RangeServer, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    url = http_server.url("/no/such.snap")
    with pytest.raises(FileNotFoundError) as e:
        snapload.restore(url)
    assert e.value.filename == url
    s3_env(monkeypatch, s3)
    url = f"s3://{s3.bucket}/no/such.snap"
    with pytest.raises(FileNotFoundError) as e:
        snapload.open(url)
    assert e.value.filename == url


def test_denied_is_permission_error_without_secrets(s3: S3Server, local_snapshot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = local_snapshot
    s3_env(monkeypatch, s3)
    url = upload(s3, "denied/model.snap", data)
    wrong = "WRONGsecretNEVERshown0123456789abcdef"
    token = "SESSIONtokenNEVERshown0123456789"
    s3_env(monkeypatch, s3, secret=wrong)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    with pytest.raises(PermissionError) as e:
        snapload.restore(url)
    text = " ".join(map(str, (e.value, *e.value.args, repr(e.value))))
    assert url in text
    assert wrong not in text and token not in text


def test_http_denied_is_permission_error(http_server: RangeServer) -> None:
    url = http_server.put("/private/model.snap", b"x" * 10)
    http_server.denied.add("/private/model.snap")
    with pytest.raises(PermissionError) as e:
        snapload.open(url)
    assert e.value.filename == url


def test_query_strings_are_refused_and_never_shown(http_server: RangeServer) -> None:
    url = http_server.url("/model.snap?X-Amz-Signature=SIGNATUREsecret")
    with pytest.raises(ValueError) as e:
        snapload.open(url)
    assert "SIGNATUREsecret" not in str(e.value) and "query string" in str(e.value)


# --- faults ---------------------------------------------------------------------------------

# What each fault must end in: "ok" (retried or resumed to the right bytes) or an exception type.
EXPECTED: dict[str, object] = {
    "status_503": "ok",
    "status_429": "ok",
    "reset_mid_body": "ok",
    "truncate_body": "ok",
    "stall": "ok",
    "wrong_content_range": "ok",  # object_store refuses the range and asks again
    "ignore_range": "ok",
    "corrupt_byte": snapload.ChecksumMismatchError,
    "status_403": PermissionError,
    "status_404": FileNotFoundError,
}


@pytest.mark.parametrize("mode", ["arena", "ring", "cache"])
@pytest.mark.parametrize("fault", FAULTS)
def test_faults_end_in_correct_tensors_or_a_clear_error(fault: str, mode: str, http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    http_server.put("/faults/model.snap", data)
    with FaultProxy(http_server.port, stall_seconds=5) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/faults/model.snap"
        proxy.min_offset = 256 << 10  # faults hit data ranges, not the header read
        proxy.plan = [None, fault]  # the second data range fails
        expected = EXPECTED[fault]

        def run() -> dict[str, torch.Tensor]:
            if mode == "arena":
                return snapload.restore(url)
            if mode == "ring":
                return restore_to_host(url, chunk_bytes=1 << 20, slots=4, threads=2)[0]
            return snapload.restore(url, cache_dir=tmp_path)

        try:
            restored = run()
        except Exception as e:  # noqa: BLE001 - checked below
            assert expected != "ok", f"{fault} should have been retried, got {e!r}"
            assert isinstance(expected, type) and isinstance(e, expected), f"{fault}: {e!r}"
            assert "/faults/model.snap" in str(e) or getattr(e, "filename", None) == url
            if mode == "cache":
                assert not [f for f in tmp_path.iterdir() if f.name.endswith(".snap") or ".tmp." in f.name]
        else:
            assert expected == "ok", f"{fault}: no error raised"
            assert_restored(restored, state)
        assert proxy.injected == [fault]


def test_a_server_that_keeps_failing_ends_in_a_clear_error(http_server: RangeServer, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = local_snapshot
    http_server.put("/down/model.snap", data)
    with FaultProxy(http_server.port) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/down/model.snap"
        proxy.min_offset = 256 << 10
        proxy.always = "status_503"
        with pytest.raises(OSError, match="503") as e:
            snapload.restore(url)
        assert e.value.filename == url
        assert len(proxy.injected) >= 4, "retried before giving up"


# --- CLI and prefetch -----------------------------------------------------------------------


def test_cli_inspect_and_verify_take_urls(http_server: RangeServer, local_snapshot, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    import json

    from snapload.cli import main

    _, data, state = local_snapshot
    url = http_server.put("/cli/model.snap", data)
    assert main(["inspect", url, "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["path"] == url and {t["name"] for t in described["tensors"]} == set(state)
    assert main(["verify", url]) == 0
    assert capsys.readouterr().out.startswith(f"OK {url}: {len(state)} tensors")
    bad = bytearray(data)
    ids = next(t for t in snapload.open(url).tensors if t.name == "ids")
    bad[ids.offset + 10] ^= 0x01  # one tensor's bytes: the header still parses
    url_bad = http_server.put("/cli/bad.snap", bytes(bad))
    assert main(["verify", url_bad]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


def test_cli_warm_fills_the_cache(http_server: RangeServer, local_snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from snapload.cli import main

    _, data, _ = local_snapshot
    url = http_server.put("/warm/model.snap", data)
    monkeypatch.setenv("SNAPLOAD_CACHE_DIR", str(tmp_path))
    assert main(["warm", url]) == 0
    out = capsys.readouterr().out
    assert "downloaded" in out and "100% resident" in out
    assert main(["warm", url]) == 0
    assert "already cached" in capsys.readouterr().out


def test_prefetch_of_a_url_downloads_into_the_cache(http_server: RangeServer, local_snapshot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/prefetch/model.snap", data)
    pending = snapload.prefetch(url, cache_dir=tmp_path)
    local = pending.wait()
    assert isinstance(local, str) and Path(local).read_bytes() == data
    before = http_server.served.body_bytes
    assert_restored(snapload.restore(url, cache_dir=tmp_path), state)
    time.sleep(0.2)
    assert http_server.served.body_bytes == before, "restored from the cache"


def test_prefetch_of_a_url_without_a_cache_fills_memory_for_the_next_restore(http_server: RangeServer, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/prefetch-memory/model.snap", data)
    before = http_server.served.body_bytes
    pending = snapload.prefetch(url)
    assert pending.wait() == url
    time.sleep(0.2)
    fetched = http_server.served.body_bytes - before
    assert fetched >= len(data)
    restored = snapload.restore(url)  # takes the prefetched memory: not one byte more
    assert_restored(restored, state)
    time.sleep(0.2)
    assert http_server.served.body_bytes - before == fetched, "restored from the prefetched memory"
    again = snapload.restore(url)  # taken once: this one fetches, and shares nothing with the first
    assert_restored(again, state)
    assert http_server.served.body_bytes - before >= fetched + len(data)
    assert again["layers.0.weight"].data_ptr() != restored["layers.0.weight"].data_ptr()
    del pending
    gc.collect()
    assert_restored(restored, state)  # the tensors keep the prefetched memory alive


def test_a_cancelled_or_failed_memory_prefetch_leaves_restore_to_fetch(http_server: RangeServer, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    _, data, state = local_snapshot
    url = http_server.put("/prefetch-cancel/model.snap", data)
    snapload.prefetch(url).cancel()
    assert_restored(snapload.restore(url), state)
    missing = http_server.url("/prefetch-cancel/nothing.snap")
    pending = snapload.prefetch(missing)
    with pytest.raises(FileNotFoundError):
        pending.wait()
    with pytest.raises(FileNotFoundError):  # the restore fetches anew and says what is wrong
        snapload.restore(missing)


# --- credentials ----------------------------------------------------------------------------


def test_credentials_from_a_profile_file(s3: S3Server, local_snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from _remote_servers import S3_ACCESS_KEY, S3_SECRET_KEY

    _, data, state = local_snapshot
    s3_env(monkeypatch, s3)
    url = upload(s3, "profile/model.snap", data)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = nope\naws_secret_access_key = nope\n\n[bench]\naws_access_key_id = {S3_ACCESS_KEY}\naws_secret_access_key = {S3_SECRET_KEY}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "bench")
    assert_restored(snapload.restore(url), state)
    monkeypatch.setenv("AWS_PROFILE", "default")  # the wrong keys: denied, and never shown
    with pytest.raises(PermissionError) as e:
        snapload.open(url)
    assert S3_SECRET_KEY not in str(e.value)


def test_anonymous_access_is_unsigned(s3: S3Server, local_snapshot, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """No keys anywhere and AWS_EC2_METADATA_DISABLED: requests go out unsigned (this server
    wants signatures, so it refuses them) instead of waiting on an instance-metadata endpoint."""
    _, data, _ = local_snapshot
    s3_env(monkeypatch, s3)
    url = upload(s3, "anonymous/model.snap", data)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    start = time.monotonic()
    with pytest.raises(PermissionError) as e:
        snapload.open(url)
    assert e.value.filename == url
    assert time.monotonic() - start < 10


def test_a_server_that_keeps_stalling_times_out(http_server: RangeServer, local_snapshot) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = local_snapshot
    http_server.put("/stalled/model.snap", data)
    with FaultProxy(http_server.port, stall_seconds=4) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/stalled/model.snap"
        proxy.min_offset = 256 << 10
        proxy.always = "stall"
        with pytest.raises(OSError) as e:
            snapload.restore(url)
        assert e.value.filename == url and "timed out" in str(e.value).lower()


def test_cli_bench_takes_a_url(http_server: RangeServer, local_snapshot, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    import json

    from snapload.cli import main

    _, data, _ = local_snapshot
    url = http_server.put("/bench/model.snap", data)
    assert main(["bench", url, "--trials", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == url and result["trials"] == 1 and result["gb_per_s"] > 0
    assert result["payload_bytes"] == snapload.open(url).data_bytes
