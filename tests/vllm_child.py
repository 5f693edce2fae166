"""Runs inside the vLLM venv (see scripts/setup_vllm.sh), started by tests/test_vllm.py and
benches/vllm_bench.py: one engine per process, as users run vLLM.

    python vllm_child.py make-model FOLDER            tiny random Llama (head_dim 64), safetensors
    python vllm_child.py engine SPEC_JSON OUT_JSON    start an engine, generate, optionally save
    python vllm_child.py unit FOLDER OUT_JSON          the plugin against vLLM's modules, no engine

SPEC_JSON: {"model": folder, "load_format": ..., "extra": {...}, "dtype": ..., "tp": 1,
            "prompts": [[ids]], "max_tokens": n, "save_processed": folder|null}
OUT_JSON gets {"tokens": [[ids]], "ready_s": ..., "error": null|"Type: message", ...}.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

T0 = time.perf_counter()


def make_model(folder: str, size: str = "tiny") -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # head_dim 64 (the CPU attention backend needs >= 32); head counts even (two TP ranks).
    # "tiny": 1.8 MB, for tests; "bench": ~0.7 GB float32, for benches/vllm_bench.py.
    dims = {
        "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
        "bench": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16),
    }[size]
    config = LlamaConfig(
        **dims,
        num_key_value_heads=dims["num_attention_heads"],
        max_position_embeddings=256,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    # Larger-than-init weights: greedy tokens then differ between prompts, so a wrong weight shows.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(folder, safe_serialization=True)


def _time_model_loading(result: dict) -> None:
    """Time the CPU model runner's get_model (build the model, load and process the weights), the
    same span for every load format. Only seen when the worker runs in this process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    import vllm.v1.worker.cpu_model_runner as runner

    inner = runner.get_model

    def timed(*args, **kwargs):
        t = time.perf_counter()
        model = inner(*args, **kwargs)
        result["load_s"] = time.perf_counter() - t
        return model

    runner.get_model = timed


def _time_phases(result: dict) -> None:
    """Time the parts of BaseModelLoader.load_model (benches/vllm_bench.py): building the model,
    load_weights (reading and copying the weights), its gc.collect() passes, and
    process_weights_after_loading. Seconds, summed over calls, in result["phases"]."""
    import gc

    import vllm.model_executor.model_loader.base_loader as base_loader

    phases: dict = result.setdefault("phases", {})

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    import vllm.model_executor.model_loader  # noqa: F401 - imports every built-in loader class

    loader = base_loader.BaseModelLoader
    loader.create_model = timed("create_model", loader.create_model)
    # Each loader class defines its own load_weights (snapload's inherits DefaultModelLoader's).
    pending = [loader]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "load_weights" in vars(cls):
            cls.load_weights = timed("load_weights", vars(cls)["load_weights"])
    import vllm.model_executor.model_loader.utils as loader_utils

    # base_loader holds its own reference; snapload's processed path imports it from utils.
    base_loader.process_weights_after_loading = timed("process_weights", base_loader.process_weights_after_loading)
    loader_utils.process_weights_after_loading = timed("process_weights", loader_utils.process_weights_after_loading)

    class TimedGc:
        """base_loader's `gc`, with collect timed."""

        collect = staticmethod(timed("gc_collect", gc.collect))

        def __getattr__(self, name):
            return getattr(gc, name)

    base_loader.gc = TimedGc()


def engine(spec: dict, out_path: str) -> None:
    result: dict = {"error": None, "tokens": None}
    llm = None
    try:
        t_import = time.perf_counter()
        from vllm import LLM, SamplingParams

        result["import_s"] = time.perf_counter() - t_import
        _time_model_loading(result)
        if spec.get("phases"):
            _time_phases(result)
        t_start = time.perf_counter()
        kwargs = dict(
            model=spec["model"],
            load_format=spec["load_format"],
            enforce_eager=True,
            skip_tokenizer_init=True,
            gpu_memory_utilization=0.1,
            dtype=spec.get("dtype", "float32"),
            tensor_parallel_size=spec.get("tp", 1),
            max_model_len=256,
            seed=0,
        )
        # An explicit KV cache size: vLLM's CPU default sizes it from gpu_memory_utilization x total
        # memory minus this process's RSS, which fails on a busy shared machine.
        kwargs["kv_cache_memory_bytes"] = spec.get("kv_cache_memory_bytes", 64 << 20)
        if spec.get("extra"):
            kwargs["model_loader_extra_config"] = spec["extra"]
        llm = LLM(**kwargs)
        result["ready_s"] = time.perf_counter() - t_start
        result["process_to_ready_s"] = time.perf_counter() - T0
        if spec.get("prompts"):
            params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 8), ignore_eos=True)
            outs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], params, use_tqdm=False)
            result["tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        if spec.get("save_processed"):
            from snapload.integrations.vllm import save_processed

            t_save = time.perf_counter()
            result["saved"] = save_processed(llm, spec["save_processed"])
            result["save_s"] = time.perf_counter() - t_save
    except Exception as e:  # reported to the parent, which asserts on it
        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
    with open(out_path, "w") as f:
        json.dump(result, f)
    if llm is not None:
        # Stop the engine core and worker processes: the process ends with os._exit below, which
        # would otherwise leave them running (they are not killed with their parent).
        llm.llm_engine.engine_core.shutdown(timeout=30)


def unit(folder: str, out_path: str) -> None:
    """Checks that need vLLM's modules but no engine; each records the error text it produced."""
    import logging

    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    from snapload.integrations import vllm as plugin

    result: dict = {}
    # Registering twice (vLLM calls plugins in every process, sometimes more than once) is silent.
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("vllm").addHandler(handler)
    plugin.register()
    plugin.register()
    result["register_warnings"] = [w for w in warnings if "already registered" in w]
    loader = get_model_loader(LoadConfig(load_format="snapload"))
    result["loader_class"] = type(loader).__name__

    def error_of(fn) -> str | None:
        try:
            fn()
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    result["unknown_key"] = error_of(
        lambda: get_model_loader(LoadConfig(load_format="snapload", model_loader_extra_config={"bogus": 1}))
    )
    result["freeze_gc"] = [
        get_model_loader(LoadConfig(load_format="snapload", model_loader_extra_config=extra)).freeze_gc
        for extra in ({}, {"freeze_gc": False})
    ]
    empty = os.path.join(folder, "empty")
    os.makedirs(empty, exist_ok=True)
    result["no_snapshot"] = error_of(lambda: plugin.find_checkpoint_snapshot(empty))
    result["not_a_folder"] = error_of(lambda: plugin.find_checkpoint_snapshot(os.path.join(folder, "nope")))
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":  # vLLM spawns workers: everything runs under this guard
    cmd = sys.argv[1]
    if cmd == "make-model":
        make_model(sys.argv[2], *sys.argv[3:4])
    elif cmd == "engine":
        with open(sys.argv[2]) as f:
            engine(json.load(f), sys.argv[3])
    elif cmd == "unit":
        unit(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    # Engines leave worker processes and threads behind; a prompt exit keeps runs short.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
