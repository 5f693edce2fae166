"""Restoring straight into an ``nn.Module`` built without memory for its weights."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
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


def _non_persistent_buffer_names(module: nn.Module) -> set[str]:
    names: set[str] = set()
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        names.update(dot + name for name in sub._non_persistent_buffers_set)
    return names


def _ignorable_unexpected(module: nn.Module) -> re.Pattern[str] | None:
    """The unexpected keys transformers' ``from_pretrained`` drops without a word, as one regex
    (``PreTrainedModel._adjust_missing_and_unexpected_keys``): the model's
    ``_keys_to_ignore_on_load_unexpected`` patterns (searched, not matched), old per-layer
    ``rotary_emb.inv_freq`` keys when the model has such a buffer, and ``position_ids`` when the
    model has such a buffer (persistent in older releases, so old checkpoints carry it). Plain
    modules declare none of these and get ``load_state_dict``'s strictness."""
    patterns = set(getattr(module, "_keys_to_ignore_on_load_unexpected", None) or ())
    buffers = [name for name, _ in module.named_buffers()]
    if any(b.endswith("rotary_emb.inv_freq") for b in buffers):
        patterns.add(r"rotary_emb\.inv_freq")
    if any(b.endswith("position_ids") for b in buffers):
        patterns.add(r"(^|\.)position_ids$")
    if not patterns:
        return None
    return re.compile("|".join(f"({p})" for p in sorted(patterns)))


def match_keys(
    module: nn.Module, names: Iterable[str], slots: dict[str, tuple[nn.Module, str, bool]] | None = None
) -> tuple[dict[str, str], list[str], list[str]]:
    """Match a module's state-dict slots with a snapshot's tensor names, as ``from_pretrained``
    does: ``(sources, missing, unexpected)``, where ``sources`` maps each slot that will be filled
    to the snapshot name it is filled from.

    A slot absent from the snapshot is filled through a tie when the module shares that very
    tensor with a slot the snapshot has (``save_pretrained`` writes tied weights once, so
    ``lm_head.weight`` or T5's ``encoder.embed_tokens.weight`` are absent); otherwise it is missing.
    Extra names the module declares ignorable (``_ignorable_unexpected``, non-persistent buffers)
    are skipped; any other is unexpected."""
    ordered = list(names)
    names = set(ordered)
    slots = _slots(module) if slots is None else slots
    by_tensor: dict[int, list[str]] = {}
    for key, (sub, attr, is_param) in slots.items():
        obj = sub._parameters[attr] if is_param else sub._buffers[attr]
        by_tensor.setdefault(id(obj), []).append(key)
    sources: dict[str, str] = {}
    missing: list[str] = []
    for group in by_tensor.values():
        present = [k for k in group if k in names]
        for key in group:
            if key in names:
                sources[key] = key
            elif present:
                sources[key] = present[0]
            else:
                missing.append(key)
    non_persistent = _non_persistent_buffer_names(module)
    ignorable = _ignorable_unexpected(module)
    unexpected = [
        k
        for k in ordered
        if k not in slots and k not in non_persistent and (ignorable is None or ignorable.search(k) is None)
    ]
    order = {k: i for i, k in enumerate(slots)}
    missing.sort(key=order.__getitem__)
    return {k: sources[k] for k in slots if k in sources}, missing, unexpected


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
    the meta device raises ``MetaTensorError``.

    Snapshot keys that ``from_pretrained`` would ignore are skipped and not reported as
    unexpected: the module's non-persistent buffers (the constructor's values are kept, as
    ``from_pretrained`` keeps them) and keys matching its ``_keys_to_ignore_on_load_unexpected``
    patterns (see ``_ignorable_unexpected``). Any other extra key is unexpected."""
    tensors = restore(path, device, verify=verify, threads=threads, **options)
    slots = _slots(module)
    sources, missing, unexpected = match_keys(module, tensors, slots)
    if strict and (missing or unexpected):
        raise StateDictMismatchError(
            f"{os.fspath(path)}: snapshot does not match {type(module).__name__}: "
            f"missing keys {missing[:20]}{'...' if len(missing) > 20 else ''}, "
            f"unexpected keys {unexpected[:20]}{'...' if len(unexpected) > 20 else ''}"
        )
    for key, source in sources.items():
        sub, attr, _ = slots[key]
        current = getattr(sub, attr)
        if tuple(current.shape) != tuple(tensors[source].shape):
            raise StateDictMismatchError(
                f"{os.fspath(path)}: tensor {source!r} has shape {tuple(tensors[source].shape)} in the snapshot "
                f"but {tuple(current.shape)} in the module" + (f" (at {key!r}, tied to it)" if key != source else "")
            )
    params: dict[int, nn.Parameter] = {}  # one Parameter per restored tensor keeps ties tied
    for key, source in sources.items():
        sub, attr, is_param = slots[key]
        t = tensors[source]
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
