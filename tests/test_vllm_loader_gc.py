"""The vLLM loader's garbage-collector policy during a checkpoint load (_startup_heap_frozen).

Runs in the main venv: snapload.integrations.vllm imports torch but imports vLLM only when a
loader is made, and this context manager needs neither.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from snapload.integrations.vllm import _startup_heap_frozen


class Node:
    """A weak-referenceable object that can sit in a reference cycle."""

    other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object cycle nothing else refers to: only a gc pass frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def nothing_frozen() -> Iterator[None]:
    # Another test (or plugin) could have frozen the heap; these tests need to start from none.
    # Automatic collections off: one between making a cycle and freezing would free it early.
    was_enabled = gc.isenabled()
    gc.disable()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def test_the_startup_heap_is_frozen_during_the_load_and_handed_back(nothing_frozen: None) -> None:
    before = cycle()
    with _startup_heap_frozen(True):
        assert gc.get_freeze_count() > 0
        during = cycle()
        gc.collect()
        # The load's own transients are still collected by load_model's gc passes...
        assert during() is None
        # ...while the startup heap (older cycles included) is not scanned.
        assert before() is not None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert before() is None


def test_disabled_leaves_the_collector_alone(nothing_frozen: None) -> None:
    before = cycle()
    with _startup_heap_frozen(False):
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert before() is None


def test_a_heap_frozen_by_someone_else_stays_frozen(nothing_frozen: None) -> None:
    """An engine reloading weights after startup has its heap frozen by vLLM (freeze_gc_heap);
    the loader must not unfreeze it on the way out."""
    gc.freeze()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    with _startup_heap_frozen(True):
        pass
    assert gc.get_freeze_count() == frozen


def test_the_heap_is_handed_back_when_the_load_fails(nothing_frozen: None) -> None:
    with pytest.raises(RuntimeError, match="load failed"):
        with _startup_heap_frozen(True):
            raise RuntimeError("load failed")
    assert gc.get_freeze_count() == 0
