"""Reliability: damaged files never crash or return wrong data, a writer killed at any moment
never leaves a partial snapshot, readers and writers run concurrently, and long native calls
let other Python threads run."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import snapload
from _helpers import (
    PREAMBLE_LEN,
    assert_state_equal,
    check_version_state,
    read_raw,
    restore_loop_worker,
    rewrite_header,
    version_state,
    write_sparse_snapshot,
    write_version_worker,
    write_versions_worker,
)
from snapload import SnapshotError
from snapload.dtypes import TORCH_BY_NAME

# --- (a) Mutated files: a SnapshotError or correct data, nothing else ---------------------------
#
# Runs in this process: a crash (segfault, abort, Rust panic) fails the run loudly, and pytest's
# faulthandler prints where. A Rust panic surfaces as pyo3's PanicException, a BaseException that
# is not a SnapshotError, so it fails the property too.


def fuzz_state() -> dict[str, torch.Tensor]:
    a = torch.arange(1500, dtype=torch.float32)
    return {"a": a, "b": torch.arange(24, dtype=torch.int16).reshape(2, 3, 4), "tied": a, "z": torch.empty(0, 2)}


class Original:
    """The bytes of a good snapshot and the offsets where its regions begin and end (a short
    repr, so that hypothesis reports stay readable)."""

    def __init__(self, path: Path) -> None:
        raw = read_raw(path)
        self.data = path.read_bytes()
        self.header_end = PREAMBLE_LEN + raw.header_len
        bounds = {0, 8, 12, 16, 24, 28, PREAMBLE_LEN, self.header_end, raw.data_start, len(self.data)}
        for t in raw.header["tensors"]:
            if "offset" in t:
                bounds |= {t["offset"], t["offset"] + t["length"]}
        self.boundaries = sorted(bounds)

    def __repr__(self) -> str:
        return f"Original({len(self.data)} bytes, boundaries={self.boundaries})"


@pytest.fixture(scope="module")
def fuzz_original(tmp_path_factory: pytest.TempPathFactory) -> Original:
    path = tmp_path_factory.mktemp("fuzz") / "orig.snap"
    snapload.snapshot(fuzz_state(), path, metadata={"m": "x"})
    return Original(path)


_counter = itertools.count()


def check_mutated(directory: Path, data: bytes, *, header_edited: bool) -> None:
    """Open and restore(verify=True) a mutated file. Either a SnapshotError subclass is raised,
    or what comes back is right: for raw damage, exactly the original tensors; for a header
    rewritten with a valid CRC, tensors that match the header and the file's bytes."""
    path = directory / f"m{next(_counter)}.snap"
    path.write_bytes(data)
    try:
        try:
            info = snapload.open(path)
            restored = snapload.restore(path, verify=True)
        except SnapshotError as e:
            assert str(path) in str(e), f"error does not name the file: {e}"
            event(type(e).__name__)
            return
        event("restored")
        assert [t.name for t in info.tensors] == list(restored)
        for t in info.tensors:
            got = restored[t.name]
            assert got.dtype == TORCH_BY_NAME[t.dtype] and tuple(got.shape) == t.shape
            raw = got.contiguous().reshape(-1)
            raw = raw.as_strided((raw.numel(),), (1,)).view(torch.uint8)
            assert raw.numpy().tobytes() == data[t.offset : t.offset + t.length], t.name
        if not header_edited:
            assert_state_equal(restored, fuzz_state())
    finally:
        path.unlink()


@st.composite
def raw_mutations(draw: st.DrawFn, original: Original) -> bytes:
    """1-3 kinds of damage. Positions are drawn region by region (each preamble field, the header,
    the padding, each tensor), so that every region is hit, not just the file's first bytes."""
    data = bytearray(original.data)
    bounds = original.boundaries
    regions = list(zip(bounds, bounds[1:]))
    head_regions = [r for r in regions if r[1] <= original.header_end]

    def position(choices: list[tuple[int, int]]) -> int:
        start, end = draw(st.sampled_from(choices))
        return draw(st.integers(start, end - 1))

    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip_head", "flip_any", "truncate", "extend", "overwrite"]))
        if kind in ("flip_head", "flip_any"):
            at = position(head_regions if kind == "flip_head" else regions)
            if at < len(data):
                data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            cut = draw(st.sampled_from(bounds)) + draw(st.integers(-2, 2))
            del data[max(0, min(cut, len(data) - 1)) :]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        else:
            at = position(regions)
            data[at : at + 8] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_raw_mutations(tmp_path: Path, fuzz_original: Original, data: st.DataObject) -> None:
    mutated = data.draw(raw_mutations(fuzz_original), label="mutated")
    check_mutated(tmp_path, mutated, header_edited=False)


INTERESTING_INTS = [-1, 0, 1, 2, 3, 7, 4095, 4096, 4097, 8192, 12288, 2**31, 2**32, 2**53, 2**63 - 1, 2**64 - 1, 2**64]


@st.composite
def header_edits(draw: st.DrawFn) -> Callable[[dict[str, Any]], None]:
    """A change to one header field: values of the right and wrong types, small and huge."""
    value = draw(
        st.one_of(
            st.sampled_from(INTERESTING_INTS),
            st.integers(-(2**70), 2**70),
            st.sampled_from(sorted(TORCH_BY_NAME) + ["float128", "", "a"]),
            st.lists(st.sampled_from(INTERESTING_INTS), max_size=4),
            st.none(),
        )
    )
    target = draw(st.sampled_from(["top", "a", "b", "tied", "z"]))
    top_fields = ["alignment", "file_size", "checksum", "metadata", "tensors"]
    fields = ["name", "dtype", "shape", "offset", "length", "crc32c", "alias_of"]
    field = draw(st.sampled_from(top_fields if target == "top" else fields))
    drop = draw(st.booleans()) and draw(st.integers(0, 3)) == 0

    def apply(h: dict[str, Any]) -> None:
        if target == "top":
            obj = h
        else:  # an earlier edit may have broken the table or renamed the target: then no-op
            tensors = h.get("tensors")
            found = [t for t in tensors if isinstance(t, dict) and t.get("name") == target] if isinstance(tensors, list) else []
            if not found:
                return
            obj = found[0]
        if drop:
            obj.pop(field, None)
        else:
            obj[field] = value

    apply.__qualname__ = f"{'drop' if drop else 'set'}({target}.{field}{'' if drop else f'={value!r}'})"
    return apply


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(header_edits(), min_size=1, max_size=3))
def test_header_edits_with_valid_crc(
    tmp_path: Path, fuzz_original: Original, edits: list[Callable[[dict[str, Any]], None]]
) -> None:
    """Structure-aware damage: the header stays valid JSON with a correct CRC, so only the
    validation of its meaning stands between it and the mapping."""
    path = tmp_path / "edit.snap"
    path.write_bytes(fuzz_original.data)

    def apply_all(h: dict[str, Any]) -> None:
        for e in edits:
            e(h)

    rewrite_header(path, apply_all)
    check_mutated(tmp_path, path.read_bytes(), header_edited=True)


# --- (b) A writer killed at any moment leaves the old snapshot or the new one -----------------

CRASH_BYTES = 128 << 20


def tmp_leftovers(path: Path, pid: int | None = None) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.snapload-tmp-{'' if pid is None else f'{pid}-'}*"))


def stored_version(path: Path) -> int:
    """The version at ``path``, after checking it is complete and consistent."""
    info = snapload.open(path)
    restored = snapload.restore(path, verify=True)
    version = check_version_state(restored, CRASH_BYTES)
    assert info.metadata["version"] == str(version)
    return version


def allocated(path: Path) -> int | None:
    """Bytes allocated to ``path`` (its blocks grow as a writer's pieces land; a temporary is
    sparse until then), or None when it is gone."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return None


def stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every one of its threads has stopped: a thread inside a
    system call (a pwrite, an fsync) finishes that call first, so only then does nothing change."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
        if all(st in "TtZX" for st in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"writer {pid} did not stop")


@dataclass(frozen=True)
class Landing:
    """Where a writer was when it was stopped (and then killed)."""

    tmp_bytes: int | None  # its temporary's allocated bytes; None: no temporary (yet, or any more)
    published: bool  # the destination is no longer the file it was when the writer started
    exited: bool  # the writer had finished before it could be stopped

    def describe(self, nbytes: int) -> str:
        if self.exited:
            return "after the writer exited"
        if self.published:
            return "after publish (rename)"
        if self.tmp_bytes is None:
            return "before the temporary existed"
        if self.tmp_bytes >= nbytes:
            return "all data written, before publish"
        return f"{self.tmp_bytes / nbytes:.0%} of the data written"


def stop_and_observe(path: Path, proc: Any, dest_ino: int) -> Landing:
    """Stop the writer, then look at its temporary and at the destination: nothing moves until
    the SIGKILL that follows, so this is exactly where the kill lands."""
    try:
        stop(proc.pid)
    except (ProcessLookupError, FileNotFoundError):
        return Landing(None, True, True)
    if not proc.is_alive():
        return Landing(None, True, True)
    tmps = tmp_leftovers(path, proc.pid)
    return Landing(allocated(tmps[0]) if tmps else None, os.stat(path).st_ino != dest_ino, False)


def wait_for_progress(path: Path, proc: Any, fraction: float, nbytes: int) -> None:
    """Return once writer ``proc`` has put ``fraction`` of ``nbytes`` into its temporary file, or
    once it has renamed it (the caller's observation then says so)."""
    seen_tmp = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tmps = tmp_leftovers(path, proc.pid)
        if not tmps:
            if seen_tmp or not proc.is_alive():
                return
            time.sleep(0.0005)
            continue
        seen_tmp = True
        written = allocated(tmps[0])
        if written is None or written >= fraction * nbytes:
            return
        time.sleep(0.0005)
    raise AssertionError("the writer made no progress")


@pytest.mark.slow
def test_writer_killed_at_random_points(tmp_path: Path, mp_context: Any) -> None:
    """SIGKILL a writer (a separate process) at six points spread over a whole write: as soon as
    its temporary exists, at three random fractions of the data written, once all data is written
    (header, fsync, rename still to come), and at a random time. For the first five the writer is
    stopped first and its temporary and the destination are inspected, so the test asserts where
    each kill landed; the sixth is a bare SIGKILL (it may land inside a system call) whose landing
    is read from what it left. The outcome must follow from the landing: killed before publish,
    the destination holds the previous snapshot and the temporary stays behind as it was; after
    publish, the new one. Never a mix, and the next write cleans the leftovers."""
    seed = int(os.environ.get("SNAPLOAD_TEST_SEED", "20240601"))
    rng = random.Random(seed)
    path = tmp_path / "model.snap"
    snapload.snapshot(version_state(0, CRASH_BYTES), path, metadata={"version": "0"})

    def start_writer(version: int) -> Any:
        """Start a writer; return once its state dict is built and it is about to write."""
        started = mp_context.Event()
        proc = mp_context.Process(target=write_version_worker, args=(str(path), version, CRASH_BYTES, started))
        proc.start()
        assert started.wait(60), "writer did not start"
        return proc

    # One uninterrupted write tells how long a write takes here.
    proc = start_writer(1)
    t0 = time.monotonic()
    proc.join(60)
    full = time.monotonic() - t0
    assert proc.exitcode == 0 and stored_version(path) == 1

    def at_fraction(f: float) -> Callable[[Any], None]:
        return lambda proc: wait_for_progress(path, proc, f, CRASH_BYTES)

    def at_time(delay: float) -> Callable[[Any], None]:
        return lambda proc: time.sleep(delay)

    fractions = [0.0, *sorted(rng.uniform(0.05, 0.95) for _ in range(3)), 1.0]
    # (what to wait for, the least fraction of the data the temporary must hold when the kill
    # lands, or None for a bare kill at a random time that may land anywhere)
    kills: list[tuple[Callable[[Any], None], float | None]] = [(at_fraction(f), f) for f in fractions]
    kills.append((at_time(rng.uniform(0, full)), None))
    assert len(kills) == 6, "docs/reliability.md says six kill points"
    leftovers: list[Path] = []
    for version, (wait, least) in enumerate(kills, start=2):
        before = stored_version(path)
        dest_ino = os.stat(path).st_ino
        proc = start_writer(version)
        wait(proc)
        observed = stop_and_observe(path, proc, dest_ino) if least is not None else None
        proc.kill()
        proc.join(60)
        mine = tmp_leftovers(path, proc.pid)
        # The bare kill's landing, read from what it left behind.
        landing = observed or Landing(
            allocated(mine[0]) if mine else None, os.stat(path).st_ino != dest_ino, proc.exitcode == 0
        )
        after = stored_version(path)
        context = f"seed {seed}, kill {version - 1} landed {landing.describe(CRASH_BYTES)}"
        if least is not None:
            # The designed points land mid-write: the temporary exists, holds at least the
            # fraction waited for, and nothing has been published.
            assert landing.tmp_bytes is not None and not landing.published, context
            assert landing.tmp_bytes >= least * CRASH_BYTES, context
        if landing.published:
            assert after == version and mine == [], context
        else:
            assert after == before, f"{context}: destination changed to version {after}"
            if landing.tmp_bytes is None:
                assert mine == [], context
            else:
                assert len(mine) == 1 and allocated(mine[0]) == landing.tmp_bytes, f"{context}: temporary changed after the kill"
                leftovers += mine
        print(f"{context}: {'new' if after == version else 'old'} version")

    assert leftovers, "a writer killed mid-write leaves its temporary file behind"
    # The next write removes temporaries whose writer process is gone.
    snapload.snapshot(version_state(100, CRASH_BYTES), path, metadata={"version": "100"})
    assert tmp_leftovers(path) == []
    assert stored_version(path) == 100


def test_live_writer_temporary_is_kept(tmp_path: Path) -> None:
    """A temporary whose writer is still alive (this process) is not someone's leftover."""
    path = tmp_path / "model.snap"
    live = tmp_path / f".model.snap.snapload-tmp-{os.getpid()}-deadbeef0000"
    dead = tmp_path / ".model.snap.snapload-tmp-999999999-deadbeef0000"  # above pid_max
    other = tmp_path / ".other.snap.snapload-tmp-999999999-deadbeef0000"
    for p in (live, dead, other):
        p.write_bytes(b"partial")
    snapload.snapshot({"x": torch.ones(3)}, path)
    assert live.exists(), "a live writer's temporary must not be deleted"
    assert not dead.exists()
    assert other.exists(), "only temporaries of the same destination are cleaned"


def test_failed_write_leaves_destination_alone(tmp_path: Path) -> None:
    path = tmp_path / "model.snap"
    snapload.snapshot({"x": torch.ones(3)}, path)
    before = path.read_bytes()

    class Boom(Exception):
        pass

    def bad_loader() -> torch.Tensor:
        raise Boom

    from snapload._write import PlannedTensor, write_planned

    planned = [PlannedTensor("y", "float32", (4,), None, load=bad_loader)]
    with pytest.raises(Boom):
        write_planned(path, planned)
    assert path.read_bytes() == before
    assert tmp_leftovers(path) == []


# --- (c) Concurrent readers and a writer ---------------------------------------------------------

CONCURRENT_BYTES = 8 << 20


@pytest.mark.slow
def test_readers_in_many_processes_while_a_writer_replaces(tmp_path: Path, mp_context: Any) -> None:
    path = tmp_path / "shared.snap"
    snapload.snapshot(version_state(1, CONCURRENT_BYTES), path)
    n_readers = 8
    ready = mp_context.Barrier(n_readers + 1)
    stop = mp_context.Event()
    results = mp_context.Queue()
    readers = [
        mp_context.Process(target=restore_loop_worker, args=(str(path), ready, stop, results)) for _ in range(n_readers)
    ]
    for r in readers:
        r.start()
    ready.wait(60)
    versions = list(range(2, 14))
    writer = mp_context.Process(target=write_versions_worker, args=(str(path), versions, CONCURRENT_BYTES))
    writer.start()
    writer.join(120)
    stop.set()
    reports = [results.get(timeout=120) for _ in readers]
    for r in readers:
        r.join(60)
    assert writer.exitcode == 0
    errors = [err for _, _, err in reports if err]
    assert not errors, errors[0]
    seen = [v for _, vs, _ in reports for v in vs]
    assert all(len(vs) >= 1 for _, vs, _ in reports)
    assert set(seen) <= {1, *versions}
    assert len(set(seen)) >= 2, f"readers never overlapped a write (saw only {set(seen)})"
    assert check_version_state(snapload.restore(path, verify=True)) == versions[-1]


def test_threads_restore_at_once(tmp_path: Path) -> None:
    """Many threads of one process restore (and verify) the same file while another thread
    replaces it; each restore sees one complete version."""
    path = tmp_path / "threads.snap"
    snapload.snapshot(version_state(1, 1 << 20), path)
    stop = threading.Event()

    def writer() -> None:
        for v in itertools.count(2):
            if stop.is_set():
                return
            snapload.snapshot(version_state(v, 1 << 20), path)

    def reader(_: int) -> list[int]:
        return [check_version_state(snapload.restore(path, verify=True), 1 << 20) for _ in range(10)]

    w = threading.Thread(target=writer)
    w.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            seen = [v for vs in pool.map(reader, range(8)) for v in vs]
    finally:
        stop.set()
        w.join()
    assert len(seen) == 80


# --- (d) The GIL is released during long native calls: tests/test_gil.py -------------------------


# --- (e) Replacing a snapshot while its tensors are in use ---------------------------------------


def test_replace_by_rename_keeps_old_tensors(tmp_path: Path) -> None:
    path = tmp_path / "model.snap"
    snapload.snapshot(version_state(1, 1 << 20), path)
    old = snapload.restore(path, verify=True)
    staged = tmp_path / "staged.snap"
    snapload.snapshot(version_state(2, 2 << 20), staged)
    os.replace(staged, path)
    # The old tensors still read (and compute on) the old file's bytes.
    assert check_version_state(old, 1 << 20) == 1
    assert int(old["tail"].sum()) == 1000
    assert check_version_state(snapload.restore(path, verify=True), 2 << 20) == 2
    # Even with the path gone altogether.
    path.unlink()
    assert check_version_state(old, 1 << 20) == 1
    old["data"].fill_(7)  # private pages: writable, and nobody else sees it
    assert bool(torch.all(old["data"] == 7))


def test_copy_then_replace(tmp_path: Path) -> None:
    """A deploy step that copies a snapshot in and renames it over the live one."""
    path = tmp_path / "model.snap"
    snapload.snapshot(version_state(3, 1 << 20), path)
    old = snapload.restore(path)
    src = tmp_path / "other.snap"
    snapload.snapshot(version_state(4, 1 << 20), src)
    shutil.copyfile(src, tmp_path / "incoming.snap")
    os.replace(tmp_path / "incoming.snap", path)
    assert check_version_state(old) == 3
    assert check_version_state(snapload.restore(path, verify=True)) == 4
