"""Restoring straight into an ``nn.Module`` built without memory for its weights."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from snapload._restore import restore
from snapload.errors import MetaTensorError, StateDictMismatchError


class RestoreResult(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


@contextlib.contextmanager
def init_empty_weights() -> Iterator[None]:
    """Build modules with their parameters on the meta device and their buffers real.

    Parameters cost nothing (their initialisation runs on meta), while buffers that no
    checkpoint holds (rotary ``inv_freq``, position ids, causal masks) keep the values the
    constructor computed. Same contract as accelerate's ``init_empty_weights(include_buffers=False)``.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            assert p is not None
            extra = dict(p.__dict__)
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad, **extra)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _slots(module: nn.Module) -> dict[str, tuple[nn.Module, str, bool]]:
    """Every persistent state-dict slot: name -> (owning submodule, attribute, is_parameter)."""
    slots: dict[str, tuple[nn.Module, str, bool]] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in sub._parameters.items():
            if p is not None:
                slots[dot + name] = (sub, name, True)
        for name, b in sub._buffers.items():
            if b is not None and name not in sub._non_persistent_buffers_set:
                slots[dot + name] = (sub, name, False)
    return slots


def restore_module(
    module: nn.Module,
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    strict: bool = True,
    verify: bool = False,
    threads: int = 0,
    **options: Any,
) -> RestoreResult:
    """Restore a snapshot into ``module``'s parameters and buffers by assignment: the module's
    tensors become the restored ones (views of the mapping or of the device arena), with no second
    allocation. Tied parameters stay tied. Keys are checked like ``load_state_dict``; with
    ``strict`` any mismatch raises before the module is touched. Afterwards, anything still on
    the meta device raises ``MetaTensorError``."""
    tensors = restore(path, device, verify=verify, threads=threads, **options)
    slots = _slots(module)
    missing = [k for k in slots if k not in tensors]
    unexpected = [k for k in tensors if k not in slots]
    if strict and (missing or unexpected):
        raise StateDictMismatchError(
            f"{os.fspath(path)}: snapshot does not match {type(module).__name__}: "
            f"missing keys {missing[:20]}{'...' if len(missing) > 20 else ''}, "
            f"unexpected keys {unexpected[:20]}{'...' if len(unexpected) > 20 else ''}"
        )
    for key, (sub, attr, _) in slots.items():
        current = getattr(sub, attr)
        if key in tensors and tuple(current.shape) != tuple(tensors[key].shape):
            raise StateDictMismatchError(
                f"{os.fspath(path)}: tensor {key!r} has shape {tuple(tensors[key].shape)} in the snapshot "
                f"but {tuple(current.shape)} in the module"
            )
    params: dict[int, nn.Parameter] = {}  # one Parameter per restored tensor keeps ties tied
    for key, (sub, attr, is_param) in slots.items():
        if key not in tensors:
            continue
        t = tensors[key]
        if is_param:
            old = sub._parameters[attr]
            assert old is not None
            if id(t) not in params:
                params[id(t)] = nn.Parameter(t, requires_grad=old.requires_grad and t.is_floating_point())
            sub._parameters[attr] = params[id(t)]
        else:
            sub._buffers[attr] = t
    target = torch.device(device)
    _move_unrestored_buffers(module, target, tensors)
    _check_nothing_on_meta(module, path)
    return RestoreResult(missing, unexpected)


def _move_unrestored_buffers(module: nn.Module, device: torch.device, restored: dict[str, torch.Tensor]) -> None:
    """Non-persistent buffers were built by the constructor on the host; bring them along."""
    restored_ids = {id(t) for t in restored.values()}
    for sub in module.modules():
        for name, b in sub._buffers.items():
            if b is not None and id(b) not in restored_ids and b.device.type != "meta" and b.device != device:
                sub._buffers[name] = b.to(device)


def _check_nothing_on_meta(module: nn.Module, path: str | os.PathLike[str]) -> None:
    on_meta = [n for n, p in module.named_parameters(remove_duplicate=False) if p.device.type == "meta"]
    on_meta += [n for n, b in module.named_buffers(remove_duplicate=False) if b.device.type == "meta"]
    if on_meta:
        raise MetaTensorError(
            f"{os.fspath(path)}: after restore, {len(on_meta)} tensor(s) of {type(module).__name__} are still on "
            f"the meta device and would compute garbage: {on_meta[:20]}. Restore a snapshot that holds them, or "
            "build the module under snapload.init_empty_weights() so that buffers stay real."
        )
