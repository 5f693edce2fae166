"""RunPod serverless worker that restores a snapload snapshot and generates text.

    SNAPLOAD_MODEL=/models/demo/model.snap python handler.py                # on RunPod
    SNAPLOAD_MODEL=... python handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
    curl -X POST 127.0.0.1:8000/runsync -H 'content-type: application/json' \
         -d '{"input": {"prompt": "hello world", "max_new_tokens": 16}}'

The tokenizer is loaded from the snapshot's folder, or SNAPLOAD_TOKENIZER for an s3:// or https://
snapshot (see README.md for the layout and the environment).
"""

import os
import sys

import snapload  # light: does not import torch

SNAPLOAD_MODEL = os.environ.get("SNAPLOAD_MODEL", "/models/model.snap")
# The tokenizer's folder: beside a local snapshot; for an s3:// or https:// one, the folder the
# image ships it in (it is small; the weights are what is worth keeping in object storage).
TOKENIZER = os.environ.get("SNAPLOAD_TOKENIZER") or ("" if "://" in SNAPLOAD_MODEL else os.path.dirname(os.path.abspath(SNAPLOAD_MODEL)))
MAX_NEW_TOKENS = int(os.environ.get("SNAPLOAD_MAX_NEW_TOKENS", "512"))

# Start pulling the snapshot into the page cache now (its header is checked first); `import torch` below overlaps the reads.
try:
    pending = snapload.prefetch(SNAPLOAD_MODEL)
except (OSError, snapload.SnapshotError):  # missing, unreadable, not a snapshot: init reports it
    pending = None

import runpod  # noqa: E402
import snapload.hf  # noqa: E402  (imports torch and transformers)
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

DEVICE = os.environ.get("SNAPLOAD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def _no_tokenizer() -> str:
    raise ValueError("SNAPLOAD_MODEL is a URL: set SNAPLOAD_TOKENIZER to the tokenizer's folder")


def init() -> tuple[object, object, str | None]:
    """Restore model and tokenizer once per worker; return (model, tokenizer, error message)."""
    try:
        # The model's class first: transformers imports its module lazily (seconds), and the
        # prefetch goes on reading meanwhile, as it does while the tokenizer loads. Then wait for the
        # prefetch, and restore.
        model_class = snapload.hf.model_class_of(SNAPLOAD_MODEL)
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER or _no_tokenizer())
        if pending is not None:
            pending.wait()
        verify = os.environ.get("SNAPLOAD_VERIFY") == "1"  # check every CRC32C (reads the whole file)
        model = snapload.hf.load_model(SNAPLOAD_MODEL, DEVICE, model_class=model_class, verify=verify)
        return model, tokenizer, None
    except Exception as e:  # noqa: BLE001 - any failure: the worker answers every job with it
        message = f"cannot load {SNAPLOAD_MODEL}: {type(e).__name__}: {e}"
        print(message, file=sys.stderr, flush=True)
        return None, None, message


model, tokenizer, init_error = init()


def handler(job: dict) -> dict:
    """{"prompt": str, "max_new_tokens": int} -> {"text": str, "token_ids": [int]}; greedy."""
    if init_error is not None:
        # RunPod marks the job FAILED; refresh_worker retires this worker so a fresh one replaces it.
        return {"error": init_error, "refresh_worker": True}
    request = job.get("input") or {}
    prompt, max_new_tokens = request.get("prompt"), request.get("max_new_tokens", 16)
    if not isinstance(prompt, str) or not prompt:
        return {"error": "input.prompt must be a non-empty string"}
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        return {"error": f"input.max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS}"}
    inputs = tokenizer(prompt, return_tensors="pt").to(DEVICE)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "token_ids": new}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
