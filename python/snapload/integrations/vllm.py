"""vLLM integration: ``--load-format snapload`` and snapshots of each rank's processed weights.

Installed through the ``vllm.general_plugins`` entry point (``pip install snapload[vllm]``), which vLLM
calls in every process it starts (engine and workers); ``register()`` adds the load format there.

Two kinds of snapshot load:

* **Checkpoint snapshot** (``snapload convert FOLDER FOLDER/model.snap``): restored on the CPU as
  views of one read-only-shared mapping (no byte copied, no second host copy of the model) and fed to
  the model's own ``load_weights``, so vLLM's name mapping, fused projections, tensor-parallel slicing
  and dtype casts apply unchanged.
* **Processed snapshot** (``save_processed(llm, folder)``, loaded with
  ``model_loader_extra_config={"processed": folder}``): one file per rank holding that rank's final
  parameters and buffers. Loading builds the model on the meta device and registers the restored
  tensors as its parameters (views of the mapping on the CPU, of one device arena on CUDA): no weight
  loader runs. The metadata keys what the tensors depend on; a mismatch raises
  :class:`ProcessedSnapshotMismatchError` naming the key.

This module imports vLLM and torch; ``import snapload`` never imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import torch
from torch import nn

import snapload
from snapload import SnapshotError, StateDictMismatchError

__all__ = [
    "LOAD_FORMAT",
    "ProcessedSnapshotMismatchError",
    "SnaploadModelLoader",
    "processed_file_name",
    "register",
    "save_processed",
]

LOAD_FORMAT = "snapload"
# model_loader_extra_config keys this loader understands.
EXTRA_KEYS = ("snapshot", "processed", "restore_device", "verify", "populate", "freeze_gc")
# Stages a processed snapshot can hold (metadata key "stage"):
#   "processed": the tensors after process_weights_after_loading; loading skips that step
#                (run under vLLM's weights_already_processed, as its ipc_cache loader does).
#   "loaded":    the tensors after load_weights (mapped, fused, sliced, cast), before
#                process_weights_after_loading; loading runs that step. Used where the processed
#                form is not made of tensors: vLLM's CPU backend packs linear weights into oneDNN
#                handles and leaves an empty weight behind, which no file can hold.
STAGES = ("processed", "loaded")
# Metadata keys a processed snapshot must match exactly to be loaded (in the order they are checked).
CHECKED_KEYS = (
    "vllm_version",
    "architecture",
    "hf_config_sha256",
    "dtype",
    "quantization",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "tensor_parallel_rank",
    "pipeline_parallel_rank",
)
_WORKER_METHOD = "snapload_save_processed"
_registered = False


class ProcessedSnapshotMismatchError(SnapshotError):
    """A processed snapshot was made for another engine configuration (vLLM version, model, dtype,
    quantisation, parallel sizes or rank) than the one loading it."""


def _log() -> logging.Logger:
    # vLLM configures the "vllm" logger tree (vllm.logger, imported with vLLM); a name under it
    # shows up with vLLM's own lines. Plain logging, so the helpers log without vLLM too (tests).
    return logging.getLogger("vllm.snapload")


def processed_file_name(tp_rank: int, pp_rank: int) -> str:
    return f"processed-pp{pp_rank}-tp{tp_rank}.snap"


# --------------------------------------------------------------------------------------------------
# Plugin entry point


def register() -> None:
    """Register ``--load-format snapload`` with vLLM (idempotent: vLLM calls every general plugin in
    every process, possibly more than once), and the worker method ``save_processed`` calls."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.model_loader import register_model_loader
    from vllm.v1.worker.worker_base import WorkerBase

    register_model_loader(LOAD_FORMAT)(loader_cls())
    # A named worker method lets save_processed use collective_rpc without pickling a function
    # (which vLLM only allows with VLLM_ALLOW_INSECURE_SERIALIZATION=1), as save_sharded_state does.
    if not hasattr(WorkerBase, _WORKER_METHOD):
        setattr(WorkerBase, _WORKER_METHOD, _save_processed_on_worker)
    _registered = True


# --------------------------------------------------------------------------------------------------
# The loader


def _default_loader_cls() -> type[Any]:
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    cls: type[Any] = DefaultModelLoader
    return cls


def find_checkpoint_snapshot(folder: str) -> str:
    """FOLDER/model.snap, else the one ``*.snap`` in FOLDER that is not a processed snapshot."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            2,
            "--load-format snapload needs a local model folder holding the snapshot "
            "(or model_loader_extra_config {'snapshot': PATH}); not a folder",
            folder,
        )
    preferred = os.path.join(folder, "model.snap")
    if os.path.isfile(preferred):
        return preferred
    found = sorted(
        p for p in glob.glob(os.path.join(folder, "*.snap")) if not os.path.basename(p).startswith("processed-")
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            2,
            "no snapshot in the model folder: expected model.snap (snapload convert FOLDER FOLDER/model.snap) "
            "or model_loader_extra_config {'snapshot': PATH}",
            folder,
        )
    raise ValueError(
        f"{folder}: several snapshots {[os.path.basename(p) for p in found]} and no model.snap; "
        "name one with model_loader_extra_config {'snapshot': PATH}"
    )


def _make_loader_cls() -> type[Any]:
    DefaultModelLoader = _default_loader_cls()

    class _SnaploadModelLoader(DefaultModelLoader):  # type: ignore[misc, valid-type]
        """``load_format="snapload"``: checkpoint snapshots through the model's own ``load_weights``
        (DefaultModelLoader's bookkeeping, strict weight tracking included), or processed snapshots
        assigned straight to the parameters."""

        def __init__(self, load_config: Any) -> None:
            extra = dict(load_config.model_loader_extra_config or {})
            unknown = sorted(set(extra) - set(EXTRA_KEYS))
            if unknown:
                raise ValueError(
                    f"Unexpected model_loader_extra_config keys for load format {LOAD_FORMAT!r}: {unknown}; "
                    f"known: {list(EXTRA_KEYS)}"
                )
            if "snapshot" in extra and "processed" in extra:
                raise ValueError("model_loader_extra_config: give 'snapshot' or 'processed', not both")
            self.snapshot_path: str | None = extra.get("snapshot")
            self.processed_folder: str | None = extra.get("processed")
            self.restore_device: str = str(extra.get("restore_device", "cpu"))
            self.verify: bool = bool(extra.get("verify", False))
            # snapload.restore's CPU populate mode (see its docstring); CUDA restores ignore it.
            self.populate: str = str(extra.get("populate", "auto"))
            # See _startup_heap_frozen: skip the scan of the startup heap in load_model's gc passes.
            self.freeze_gc: bool = bool(extra.get("freeze_gc", True))
            # DefaultModelLoader validates its format and extra keys: hand it a format it knows. Only
            # its bookkeeping is used; every weight comes from get_all_weights below.
            super().__init__(dataclasses.replace(load_config, load_format="safetensors", model_loader_extra_config={}))
            self.snapload_load_config = load_config

        # -- checkpoint snapshots ------------------------------------------------------------------
        def _checkpoint_path(self, model_config: Any) -> str:
            if self.snapshot_path is not None:
                if not os.path.isfile(self.snapshot_path):
                    raise FileNotFoundError(2, "snapshot named in model_loader_extra_config not found", self.snapshot_path)
                return self.snapshot_path
            return find_checkpoint_snapshot(model_config.model_weights or model_config.model)

        def download_model(self, model_config: Any) -> None:
            if self.processed_folder is None:
                self._checkpoint_path(model_config)

        def get_all_weights(self, model_config: Any, model: nn.Module) -> Generator[tuple[str, torch.Tensor], None, None]:
            path = self._checkpoint_path(model_config)
            # DefaultModelLoader's "Loading weights took" line measures from here.
            if getattr(self, "counter_before_loading_weights", 0.0) == 0.0:
                self.counter_before_loading_weights = time.perf_counter()
            # CPU: views of one private mapping, nothing copied; the weight loaders read from it
            # straight into the parameters (with populate="none" a rank touches only the pages of
            # its slices; the default populates the whole mapping, from one shared page cache).
            # restore_device="cuda": one device arena via the pinned ring (needs room for a second
            # copy of the checkpoint on the device; fastest for a single rank).
            device: str | torch.device = self.restore_device
            if torch.device(device).type == "cuda" and torch.device(device).index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            _log().info("snapload: restoring checkpoint snapshot %s on %s", path, device)
            if torch.device(device).type == "cpu":
                tensors = snapload.restore(path, device, verify=self.verify, populate=self.populate)
            else:
                tensors = snapload.restore(path, device, verify=self.verify)
            try:
                # Each name once, in file order (the order the data lies on disk: reads stay sequential).
                yield from tensors.items()
            finally:
                tensors.clear()
            for source in getattr(model, "secondary_weights", ()):
                yield from self._get_weights_iterator(source)

        # -- processed snapshots -------------------------------------------------------------------
        def load_model(self, vllm_config: Any, model_config: Any, prefix: str = "") -> nn.Module:
            if self.processed_folder is None:
                with _startup_heap_frozen(self.freeze_gc):
                    model: nn.Module = super().load_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
                return model
            return _load_processed(self, vllm_config, model_config, prefix, self.processed_folder, self.verify)

    _SnaploadModelLoader.__name__ = _SnaploadModelLoader.__qualname__ = "SnaploadModelLoader"
    return _SnaploadModelLoader


@contextlib.contextmanager
def _startup_heap_frozen(enabled: bool) -> Iterator[None]:
    """Keep the objects that exist before loading out of the garbage collector's passes while the
    model loads, then hand them back.

    vLLM's BaseModelLoader.load_model runs two full ``gc.collect()`` passes (after load_weights and
    after processing) to free the transient tensors of the load. Each pass walks every tracked
    object of the process: after ``import vllm`` that is ~660k objects, 0.3-0.6 s a pass on this
    2-core machine, more than reading the whole checkpoint from a warm page cache. The transients
    those passes are for are all made during the load, so they are still collected; what is
    skipped is the scan of the startup heap, which vLLM itself freezes the same way once the
    engine is up (``freeze_gc_heap`` in EngineCore). Garbage cycles made before loading are
    collected by the first full pass after it. Where something is frozen already (an engine
    reloading weights after startup), its passes skip that heap anyway: nothing is done, so
    nobody else's freeze is undone."""
    if not enabled or gc.get_freeze_count() > 0:
        yield
        return
    gc.freeze()
    _log().info("snapload: %d objects of the startup heap kept out of load_model's gc passes", gc.get_freeze_count())
    try:
        yield
    finally:
        gc.unfreeze()


_loader_cls: type[Any] | None = None


def loader_cls() -> type[Any]:
    """The loader class (it subclasses vLLM's DefaultModelLoader, so it is made on first use)."""
    global _loader_cls
    if _loader_cls is None:
        _loader_cls = _make_loader_cls()
    return _loader_cls


def __getattr__(name: str) -> Any:
    if name == "SnaploadModelLoader":
        return loader_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------
# Processed snapshots: metadata


def _parallel_ranks() -> dict[str, str]:
    from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    pp = get_pp_group()
    return {
        "tensor_parallel_size": str(get_tensor_model_parallel_world_size()),
        "pipeline_parallel_size": str(pp.world_size),
        "tensor_parallel_rank": str(get_tensor_model_parallel_rank()),
        "pipeline_parallel_rank": str(pp.rank_in_group),
    }


def _hf_config_sha256(model_config: Any) -> str:
    cfg = model_config.hf_config.to_dict()
    # Where the folder lives and which transformers wrote it do not change the weights.
    for key in ("_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()


def expected_metadata(model_config: Any) -> dict[str, str]:
    """What a processed snapshot for this rank of this engine must carry (CHECKED_KEYS), plus the
    model path for the reader."""
    import vllm

    meta = {
        "vllm_version": str(vllm.__version__),
        "architecture": ",".join(model_config.architectures or []),
        "hf_config_sha256": _hf_config_sha256(model_config),
        "dtype": str(model_config.dtype).removeprefix("torch."),
        "quantization": str(model_config.quantization),
    }
    meta.update(_parallel_ranks())
    return meta


def check_metadata(path: str, found: Mapping[str, str], expected: Mapping[str, str]) -> None:
    if found.get("snapload.vllm") != "processed":
        raise ProcessedSnapshotMismatchError(f"{path}: not a processed snapshot written by save_processed")
    for key in CHECKED_KEYS:
        if found.get(key) != expected[key]:
            raise ProcessedSnapshotMismatchError(
                f"{path}: processed snapshot made for {key}={found.get(key)!r}, "
                f"but this engine has {key}={expected[key]!r}; save it again with this configuration "
                f"(or load the checkpoint)"
            )
    if found.get("stage") not in STAGES:
        raise ProcessedSnapshotMismatchError(f"{path}: unknown stage {found.get('stage')!r}, expected one of {STAGES}")


# --------------------------------------------------------------------------------------------------
# Processed snapshots: save (in each worker)


def save_processed(llm: Any, folder: str | os.PathLike[str], *, stage: str = "auto") -> list[str]:
    """Write one snapshot per rank of ``llm``'s weights into ``folder`` (through ``collective_rpc``,
    as vLLM's ``save_sharded_state`` does) and return the paths.

    ``stage="auto"`` saves the tensors after ``process_weights_after_loading`` where that form is
    made of tensors every quantisation method can take back (GPU), and the tensors as loaded
    (mapped, fused, sliced, cast) otherwise (the CPU backend packs weights into oneDNN objects).
    Load them with ``model_loader_extra_config={"processed": folder}`` and the same model, dtype,
    quantisation and parallel sizes.
    """
    if stage not in ("auto", *STAGES):
        raise ValueError(f"stage={stage!r} must be 'auto' or one of {STAGES}")
    os.makedirs(folder, exist_ok=True)
    paths: list[str] = llm.collective_rpc(_WORKER_METHOD, args=(os.fspath(folder), stage))
    return paths


def _choose_stage(model: nn.Module, stage: str) -> str:
    if stage != "auto":
        return stage
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "loaded"
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, QuantizeMethodBase) and not method.supports_pre_processed_weights:
            return "loaded"
    return "processed"


def _rank_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by every name it has (tied names included: snapload writes the
    data once and restores the names as one tensor)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = p.detach()
    for name, b in model.named_buffers(remove_duplicate=False):
        out[name] = b.detach()
    return out


def _loaded_state(worker: Any) -> dict[str, torch.Tensor]:
    """This rank's tensors as load_weights leaves them: a second model is built and loaded with the
    engine's own load config, without process_weights_after_loading. Attention layers register by
    name in the compilation config; a fresh registry keeps the live engine's intact."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.utils.torch_utils import set_default_torch_dtype

    vllm_config = worker.vllm_config
    model_config = vllm_config.model_config
    load_config = vllm_config.load_config
    if load_config.load_format == LOAD_FORMAT and (load_config.model_loader_extra_config or {}).get("processed"):
        raise ValueError(
            "save_processed(stage='loaded') re-reads the checkpoint: start the engine from the checkpoint "
            "(not from a processed snapshot) to save one"
        )
    loader = get_model_loader(load_config)
    device = torch.device(load_config.device or vllm_config.device_config.device)
    compilation = vllm_config.compilation_config
    registry = compilation.static_forward_context
    compilation.static_forward_context = {}
    try:
        with set_current_vllm_config(vllm_config), set_default_torch_dtype(model_config.dtype):
            with device:
                model = loader.create_model(vllm_config=vllm_config, model_config=model_config)
            loader.load_weights(model, model_config)
    finally:
        compilation.static_forward_context = registry
    return _rank_tensors(model)


def _save_processed_on_worker(worker: Any, folder: str, stage: str) -> str:
    from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank

    live = worker.get_model()
    model_config = worker.vllm_config.model_config
    chosen = _choose_stage(live, stage)
    tensors = _rank_tensors(live) if chosen == "processed" else _loaded_state(worker)
    meta = expected_metadata(model_config)
    buffers = sorted(name for name, _ in live.named_buffers(remove_duplicate=False))
    meta.update(
        {"snapload.vllm": "processed", "stage": chosen, "model": str(model_config.model), "buffers": json.dumps(buffers)}
    )
    path = os.path.join(folder, processed_file_name(get_tensor_model_parallel_rank(), get_pp_group().rank_in_group))
    snapload.snapshot(tensors, path, metadata=meta)
    return path


# --------------------------------------------------------------------------------------------------
# Processed snapshots: load


def _load_processed(
    loader: Any, vllm_config: Any, model_config: Any, prefix: str, folder: str, verify: bool
) -> nn.Module:
    from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank
    from vllm.model_executor.model_loader.utils import initialize_model, process_weights_after_loading
    from vllm.model_executor.utils import weights_already_processed
    from vllm.utils.torch_utils import set_default_torch_dtype

    path = os.path.join(folder, processed_file_name(get_tensor_model_parallel_rank(), get_pp_group().rank_in_group))
    if not os.path.isfile(path):
        present = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "processed-*.snap")))
        raise FileNotFoundError(2, f"no processed snapshot for this rank (folder holds {present})", path)
    info = snapload.open(path)
    check_metadata(path, info.metadata, expected_metadata(model_config))

    load_device = loader.snapload_load_config.device or vllm_config.device_config.device
    target = torch.device(load_device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    started = time.perf_counter()
    with set_default_torch_dtype(model_config.dtype):
        with torch.device("meta"):
            model: nn.Module = initialize_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
        tensors = snapload.restore(path, target, verify=verify)
        _assign(
            model,
            tensors,
            path,
            buffers=set(json.loads(info.metadata.get("buffers", "[]"))),
            strict=info.metadata["stage"] == "loaded",
            device=target,
        )
        if info.metadata["stage"] == "processed":
            with weights_already_processed():
                process_weights_after_loading(model, model_config, target)
        else:
            process_weights_after_loading(model, model_config, target)
    _log().info(
        "snapload: restored %d tensors from %s (stage %s) in %.3f s",
        len(tensors),
        path,
        info.metadata["stage"],
        time.perf_counter() - started,
    )
    model.eval()
    return model


def _assign(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    path: str,
    *,
    buffers: set[str],
    strict: bool,
    device: torch.device,
) -> None:
    """Register each restored tensor as the model's parameter or buffer of that name (no copy).
    Names that restore as one tensor (tied weights) become one Parameter object, so the tie holds.

    ``strict`` (stage "loaded"): the names must be exactly the model's. Otherwise (stage
    "processed", as vLLM's ipc_cache loader allows) processing may have added tensors (registered
    by kind) or dropped some (allocated empty: nothing reads them)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    slots: dict[str, tuple[nn.Module, str, bool]] = {}
    for mod_name, module in modules.items():
        # None entries (bias=None) are declared but hold nothing.
        for leaf, p in module._parameters.items():
            if p is not None:
                slots[f"{mod_name}.{leaf}" if mod_name else leaf] = (module, leaf, True)
        for leaf, b in module._buffers.items():
            if b is not None:
                slots[f"{mod_name}.{leaf}" if mod_name else leaf] = (module, leaf, False)
    missing = sorted(n for n in slots if n not in tensors)
    unexpected = sorted(n for n in tensors if n not in slots)
    if strict and (missing or unexpected):
        raise StateDictMismatchError(
            f"{path}: processed snapshot does not fit the model: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    for name in unexpected:
        mod_name, _, leaf = name.rpartition(".")
        if mod_name not in modules:
            raise StateDictMismatchError(f"{path}: tensor {name!r} belongs to no module of the model")
        slots[name] = (modules[mod_name], leaf, name not in buffers)
    made: dict[int, nn.Parameter] = {}
    for name, tensor in tensors.items():
        module, leaf, is_param = slots[name]
        current = module._parameters.get(leaf) if is_param else module._buffers.get(leaf)
        if strict and current is not None and tuple(current.shape) != tuple(tensor.shape):
            raise StateDictMismatchError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, the model expects {tuple(current.shape)}"
            )
        if is_param:
            param = made.get(id(tensor))
            if param is None:
                param = made[id(tensor)] = nn.Parameter(tensor, requires_grad=False)
            module._parameters[leaf] = param
        else:
            module._buffers[leaf] = tensor
    for name in missing:
        module, leaf, is_param = slots[name]
        if is_param:
            stale = module._parameters[leaf]
            if stale is not None and stale.device.type == "meta":
                module._parameters[leaf] = nn.Parameter(torch.empty_like(stale, device=device), requires_grad=False)
        else:
            stale_buffer = module._buffers[leaf]
            if stale_buffer is not None and stale_buffer.device.type == "meta":
                module._buffers[leaf] = torch.empty_like(stale_buffer, device=device)
