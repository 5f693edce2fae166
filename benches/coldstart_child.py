"""One serverless-handler cold start, timed phase by phase: ``python benches/coldstart_child.py VARIANT DIR``.

The parent passes its spawn time (``time.monotonic_ns()``, a system-wide clock on Linux) in
SNAPLOAD_COLDSTART_SPAWN_NS, so interpreter start-up is measured too. Variants:

- ``st_load_state_dict``: ``from_config`` (real, randomly initialised weights) then
  ``load_state_dict(safetensors.torch.load_file(...))``: what most handlers do.
- ``st_assign``: the model built without weight memory (``snapload.init_empty_weights``, the same
  contract as accelerate's), then ``load_state_dict(load_file(...), assign=True)``: safetensors at
  its best, so the comparison with snapload is about the weights alone.
- ``from_pretrained``: ``AutoModelForCausalLM.from_pretrained(DIR, dtype=bfloat16)``.
- ``snapload``: ``init_empty_weights`` + ``snapload.restore_module``.
- ``snapload_populate``: the same with ``restore_module(..., populate="background")``: threads
  fill the mapping while the handler goes on to its first forward pass.
- ``snapload_prefetch_wait`` / ``snapload_prefetch_nowait``: ``snapload.prefetch`` started before
  ``import torch``, then waited for (or not) before ``restore_module``.
- ``st_assign_prefetch``: ``st_assign`` with ``snapload.prefetch(..., validate=False)`` of the
  safetensors file started before ``import torch`` and waited for before ``load_file``: prefetch
  works on any file, so safetensors gets the same overlap as snapload.
- ``snapload_hf_prefetch``: the README's handler as written, on the CPU: ``prefetch`` first, then
  ``import torch, snapload.hf``, ``wait()``, ``snapload.hf.load_model(path, "cpu")`` (the model
  rebuilt from the config recorded in the snapshot).

Each ends with one forward pass on 8 tokens; a lazy restore pays its page faults there, so the
total is what compares.
"""

import time

T_FIRST_LINE = time.monotonic_ns()

import os  # noqa: E402
import sys  # noqa: E402

VARIANT, DIR = sys.argv[1], sys.argv[2]
SNAP = os.path.join(DIR, "model.snap")
ST_PATH = os.path.join(DIR, "model.safetensors")
PREFETCHED = {"snapload_prefetch_wait": SNAP, "snapload_prefetch_nowait": SNAP, "snapload_hf_prefetch": SNAP}
PREFETCHED["st_assign_prefetch"] = ST_PATH
prefetch_handle = None
if VARIANT in PREFETCHED:
    import snapload  # light: no torch

    # validate=False: prefetch any file, as for a snapshot (validation checks the snapshot header).
    prefetch_handle = snapload.prefetch(PREFETCHED[VARIANT], validate=PREFETCHED[VARIANT] == SNAP)
T_PREFETCH_STARTED = time.monotonic_ns()


def main() -> None:
    marks = {"spawn": int(os.environ.get("SNAPLOAD_COLDSTART_SPAWN_NS", T_FIRST_LINE)), "first_line": T_FIRST_LINE}
    marks["prefetch_started"] = T_PREFETCH_STARTED

    import torch

    marks["import_torch"] = time.monotonic_ns()
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    LlamaForCausalLM  # noqa: B018 - transformers imports lazily: pull the model's module in now
    marks["import_transformers"] = time.monotonic_ns()
    prefetched_at_imports = prefetch_handle.bytes_done / prefetch_handle.total if prefetch_handle else None

    import snapload
    import snapload.bench

    st_path = ST_PATH
    dtype = torch.bfloat16
    if VARIANT == "from_pretrained":
        marks["construct"] = time.monotonic_ns()  # from_pretrained builds and loads in one call
        model = AutoModelForCausalLM.from_pretrained(DIR, dtype=dtype)
    elif VARIANT == "snapload_hf_prefetch":
        import snapload.hf

        marks["construct"] = time.monotonic_ns()  # load_model builds and loads in one call
        assert prefetch_handle is not None
        prefetch_handle.wait()
        model = snapload.hf.load_model(SNAP, "cpu")
    else:
        config = AutoConfig.from_pretrained(DIR)
        if VARIANT == "st_load_state_dict":
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            with snapload.init_empty_weights():
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        marks["construct"] = time.monotonic_ns()
        if VARIANT == "st_load_state_dict":
            import safetensors.torch

            model.load_state_dict(safetensors.torch.load_file(st_path))
        elif VARIANT in ("st_assign", "st_assign_prefetch"):
            import safetensors.torch

            if prefetch_handle is not None:
                prefetch_handle.wait()
            model.load_state_dict(safetensors.torch.load_file(st_path), assign=True)
        elif VARIANT.startswith("snapload"):
            if VARIANT == "snapload_prefetch_wait":
                assert prefetch_handle is not None
                prefetch_handle.wait()
            populate = "background" if VARIANT == "snapload_populate" else "none"
            snapload.restore_module(model, SNAP, populate=populate)
        else:
            raise SystemExit(f"unknown variant {VARIANT!r}")
    marks["load_weights"] = time.monotonic_ns()
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    model.eval()
    ids = torch.tensor([[1, 306, 4658, 278, 6593, 310, 2834, 338]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    marks["first_forward"] = time.monotonic_ns()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    snapload.bench.emit(
        {
            "variant": VARIANT,
            "marks_ns": marks,
            "logits_probe": float(logits[0, -1, :16].float().sum()),
            "torch_threads": torch.get_num_threads(),
            "forward": snapload.bench.rusage_delta(ru0, ru1),
            "prefetch_bytes_done": getattr(prefetch_handle, "bytes_done", None),
            "prefetched_at_imports": prefetched_at_imports,
            **snapload.bench.proc_memory(),
        }
    )
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: a handler would keep serving


main()
