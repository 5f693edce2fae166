"""Instrumentation for benches/handlers_bench.py, loaded into every Python process of a template run
(the bench puts this folder on PYTHONPATH; BentoML restores in a worker process of its own, so a
wrapper around the parent would not see it). Does nothing unless SNAPLOAD_BENCH_MARKS is set.

The templates stay untouched: when ``snapload`` / ``snapload.hf`` are first imported, their
``prefetch`` / ``model_class_of`` / ``load_model`` are wrapped to append timestamps (``time.monotonic_ns``, system-wide
on Linux) to the marks file, and for the baseline variants replaced by the same template loading
with ``from_pretrained`` or safetensors ``load_file`` + ``load_state_dict(assign=True)``, reading
the ``model.safetensors`` beside the snapshot, or (``no_weights``, the floor) by the model with
untouched, uninitialised parameters and nothing read. Only light modules are imported here.
"""

import importlib.abc
import importlib.util
import json
import os
import sys
import time

MARKS = os.environ.get("SNAPLOAD_BENCH_MARKS")
VARIANT = os.environ.get("SNAPLOAD_BENCH_VARIANT", "snapload")
# The ablation: the template as it was before model_class_of, waiting for the prefetch first and
# importing the model's module after (the wait is moved in front of the class import here).
WAIT_FIRST = VARIANT == "snapload_wait_first"
SNAPLOAD_VARIANTS = ("snapload", "snapload_wait_first", "snapload_memory")
_prefetches: list["_Waited"] = []


def mark(name: str) -> None:
    with open(MARKS, "a") as f:  # type: ignore[arg-type]
        f.write(json.dumps({"mark": name, "ns": time.monotonic_ns(), "pid": os.getpid()}) + "\n")


class _Waited:
    """The prefetch handle, with its wait() timed (restore starts when the template waits)."""

    def __init__(self, handle: object) -> None:
        self._handle = handle

    def wait(self) -> object:
        mark("wait_start")
        return self._handle.wait()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)


def _patch_snapload(module: object) -> None:
    real = module.prefetch  # type: ignore[attr-defined]

    def prefetch(path: object, **kw: object) -> object:
        if VARIANT not in SNAPLOAD_VARIANTS:
            return None  # the baselines read the safetensors file, not the snapshot
        _prefetches.append(_Waited(real(path, **kw)))
        return _prefetches[-1]

    module.prefetch = prefetch  # type: ignore[attr-defined]


def _download(url: str) -> str:
    """The baselines' way to a model in a bucket: download its files with boto3's transfer manager
    (what ``aws s3 cp`` does), then load from local disk. The snapshot's prefix holds the
    safetensors folder's files too."""
    import tempfile

    import boto3

    bucket, key = url.removeprefix("s3://").split("/", 1)
    prefix = key.rsplit("/", 1)[0]
    folder = tempfile.mkdtemp(prefix="handlers-baseline-")
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        client.download_file(bucket, f"{prefix}/{name}", os.path.join(folder, name))
    return folder


def _baseline_load(path: str, device: object, **_: object) -> object:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if "://" not in path:
        folder = os.path.dirname(os.path.abspath(path))
    elif VARIANT == "no_weights":
        folder = os.environ["SNAPLOAD_TOKENIZER"]  # reads no weights: the config is all it needs
    else:
        folder = _download(path)
    if VARIANT == "from_pretrained":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")  # builds and loads in one call
    elif VARIANT == "st_assign":
        import safetensors.torch

        import snapload

        config = AutoConfig.from_pretrained(folder)
        with snapload.init_empty_weights():  # parameters on meta, like accelerate's
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, str(config.dtype).removeprefix("torch.")))
        mark("build_end")
        model.load_state_dict(safetensors.torch.load_file(os.path.join(folder, "model.safetensors")), assign=True)
    elif VARIANT == "no_weights":
        # The floor for every loader: the same model built the same way, its parameters given fresh
        # memory that nothing writes (torch.empty: a large allocation is an untouched anonymous
        # mapping) and nothing read from any file. Its answer is meaningless; its time is what the
        # start would cost if loading the weights were free but for the page faults of first
        # touching the memory in the forward pass (a lazy loader pays those too). torch.zeros
        # would be no floor: filling 1.55 GB costs 0.4-0.6 s here, more than snapload's restore.
        import snapload

        config = AutoConfig.from_pretrained(folder)
        with snapload.init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, str(config.dtype).removeprefix("torch.")))
        mark("build_end")
        for sub in model.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and p.is_meta:
                    sub._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=False)
    else:
        raise SystemExit(f"unknown SNAPLOAD_BENCH_VARIANT {VARIANT!r}")
    return model.to(device).eval()


def _patch_hf(module: object) -> None:
    real_load, real_restore = module.load_model, module.restore_module  # type: ignore[attr-defined]

    def restore_module(*a: object, **kw: object) -> object:
        mark("build_end")  # load_model built the model on meta; restore starts now
        return real_restore(*a, **kw)

    real_class_of = module.model_class_of  # type: ignore[attr-defined]

    def model_class_of(path: str) -> object:
        # The templates resolve the model's class (transformers imports its module lazily) before
        # they wait for the prefetch; the baselines run the same template, so they do it too.
        if WAIT_FIRST and _prefetches:
            _prefetches[-1].wait()  # the template's own wait() then returns at once
        mark("class_start")
        cls = real_class_of(path)
        mark("class_imported")
        return cls

    def load_model(path: str, device: object = "cpu", **kw: object) -> object:
        mark("load_start")
        model = real_load(path, device, **kw) if VARIANT in SNAPLOAD_VARIANTS else _baseline_load(path, device, **kw)
        mark("load_end")
        return model

    module.restore_module = restore_module  # type: ignore[attr-defined]
    module.load_model = load_model  # type: ignore[attr-defined]
    module.model_class_of = model_class_of  # type: ignore[attr-defined]


PATCHES = {"snapload": _patch_snapload, "snapload.hf": _patch_hf}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs PATCHES[name] on a module right after it executes (no import happens early)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module: object) -> None:
            loader_exec(module)  # type: ignore[arg-type]
            PATCHES[name](module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if MARKS:
    mark("interpreter_start")
    sys.meta_path.insert(0, _PatchAfterImport())
