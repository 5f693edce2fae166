"""``snapload.cuda`` against the fake driver (tests/fake_cuda.py) on a machine without a GPU:
the real restore code runs end to end (ring pinning, copy engine, drive loop, arena views) with
"device" memory in a CPU tensor. Used by the remote stream-through and cancellation tests, in
process (``install`` with pytest's monkeypatch) or in a child process (``install_for_good``)."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable
from typing import Any

import torch

from fake_cuda import FakeDriver

POISON = 0xAB  # the arena starts with this in every byte: a byte never copied shows


def _patches(make_driver: Callable[[], FakeDriver]) -> list[tuple[Any, str, Any]]:
    import snapload.cuda as cuda

    def arena(nbytes: int, device: torch.device, path: object) -> torch.Tensor:
        return torch.full((nbytes,), POISON, dtype=torch.uint8)

    return [
        (cuda, "load_driver", make_driver),
        (cuda, "_resolve", lambda device: torch.device("cpu")),
        (cuda, "_allocate_arena", arena),
        (torch.cuda, "device", lambda device: contextlib.nullcontext()),
        # Any handle will do: the fake driver records an event on it and streams wait on that.
        (torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=10_000)),
    ]


def install(monkeypatch: Any, make_driver: Callable[[], FakeDriver] = FakeDriver) -> None:
    for target, name, value in _patches(make_driver):
        monkeypatch.setattr(target, name, value)


def install_for_good(make_driver: Callable[[], FakeDriver] = FakeDriver) -> None:
    """For a child process that exits afterwards."""
    for target, name, value in _patches(make_driver):
        setattr(target, name, value)
