"""The loaders under test, each called the way its documentation says to load onto the CPU.

Each entry: the checkpoint format it reads (a key of ``checkpoints.FORMATS``), an ``imports()``
run before timing (a handler imports its libraries before it loads), and ``load(path)`` returning
``(tensors, keepalive)``: a dict of CPU tensors, and whatever must outlive them (a deserializer
that owns their memory). Nothing here is imported by the orchestrator, only by the worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Tensors = dict[str, Any]


@dataclass(frozen=True)
class Loader:
    name: str
    fmt: str
    label: str
    imports: Callable[[], None]
    load: Callable[[str], tuple[Tensors, Any]]
    # True when "usable" returns before the bytes are read (pages fault in on first touch).
    lazy: bool = False


def _no_imports() -> None:
    pass


# snapload ------------------------------------------------------------------------------------


def _snapload_imports() -> None:
    import snapload._restore  # noqa: F401 - torch and the restore module


def _snapload(path: str) -> tuple[Tensors, Any]:
    import snapload

    return snapload.restore(path, populate="none"), None


def _snapload_verify(path: str) -> tuple[Tensors, Any]:
    """Every CRC32C checked (parallel, through the mapping) before the tensors are returned."""
    import snapload

    return snapload.restore(path, verify=True), None


def _snapload_populate_background(path: str) -> tuple[Tensors, Any]:
    import snapload

    return snapload.restore(path, populate="background"), None


def _snapload_populate_sync(path: str) -> tuple[Tensors, Any]:
    import snapload

    return snapload.restore(path, populate="sync"), None


def _snapload_prefetch(path: str) -> tuple[Tensors, Any]:
    """The documented cold-start use: start background readahead, then restore; the touch that
    follows finds pages already read (or being read) by the prefetch threads."""
    import snapload

    handle = snapload.prefetch(path)  # dropping the handle would cancel it: keep it alive
    return snapload.restore(path, populate="none"), handle  # as measured: prefetch alone


def _snapload_eager_imports() -> None:
    import snapload._pipeline  # noqa: F401
    import snapload._restore  # noqa: F401


def _snapload_eager(path: str) -> tuple[Tensors, Any]:
    from snapload._pipeline import restore_to_host

    tensors, stats = restore_to_host(path, read_mode="auto")
    return tensors, stats


# safetensors ---------------------------------------------------------------------------------


def _safetensors_imports() -> None:
    import safetensors.torch  # noqa: F401


def _safetensors(path: str) -> tuple[Tensors, Any]:
    import safetensors.torch

    return safetensors.torch.load_file(path), None


# torch.load ----------------------------------------------------------------------------------


def _torch_imports() -> None:
    import torch  # noqa: F401


def _torch_mmap(path: str) -> tuple[Tensors, Any]:
    import torch

    return torch.load(path, mmap=True, weights_only=True), None


def _torch_plain(path: str) -> tuple[Tensors, Any]:
    import torch

    return torch.load(path, weights_only=True), None


# tensorizer ----------------------------------------------------------------------------------


def _tensorizer_imports() -> None:
    import tensorizer  # noqa: F401


def _tensorizer(path: str) -> tuple[Tensors, Any]:
    from tensorizer import TensorDeserializer

    d = TensorDeserializer(path, device="cpu")  # eager (lazy_load=False), the default
    return dict(d.items()), d


# Run:ai Model Streamer -----------------------------------------------------------------------


def _runai_imports() -> None:
    os.environ.setdefault("RUNAI_STREAMER_LOG_LEVEL", "WARNING")  # its INFO line goes to stdout
    import runai_model_streamer  # noqa: F401


def _runai(path: str) -> tuple[Tensors, Any]:
    from runai_model_streamer import SafetensorsStreamer

    out: Tensors = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(path, device="cpu")  # owned=True: tensors outlive the streamer
        for name, tensor in streamer.get_tensors():
            out[name] = tensor
    return out, None


LOADERS: dict[str, Loader] = {
    ld.name: ld
    for ld in (
        Loader("snapload", "snapload", "snapload restore(populate='none') (mmap, lazy)", _snapload_imports, _snapload, lazy=True),
        Loader("snapload_verify", "snapload", "snapload restore(verify=True)", _snapload_imports, _snapload_verify),
        Loader(
            "snapload_populate_bg",
            "snapload",
            "snapload restore(populate='background')",
            _snapload_imports,
            _snapload_populate_background,
            lazy=True,
        ),
        Loader(
            "snapload_populate_sync",
            "snapload",
            "snapload restore(populate='sync')",
            _snapload_imports,
            _snapload_populate_sync,
        ),
        Loader(
            "snapload_prefetch", "snapload", "snapload prefetch() + restore", _snapload_imports, _snapload_prefetch, lazy=True
        ),
        Loader("snapload_eager", "snapload", "snapload eager (pipeline, host sink)", _snapload_eager_imports, _snapload_eager),
        Loader("safetensors", "safetensors", "safetensors load_file", _safetensors_imports, _safetensors),
        Loader("torch_mmap", "torch", "torch.load(mmap=True)", _torch_imports, _torch_mmap, lazy=True),
        Loader("torch", "torch", "torch.load", _torch_imports, _torch_plain),
        Loader("tensorizer", "tensorizer", "tensorizer TensorDeserializer", _tensorizer_imports, _tensorizer),
        Loader("runai", "safetensors", "Run:ai SafetensorsStreamer", _runai_imports, _runai),
    )
}
