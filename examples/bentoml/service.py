"""BentoML service that restores a snapload snapshot and generates text.

    SNAPLOAD_MODEL=/models/demo/model.snap bentoml serve service:Generator --host 127.0.0.1 --port 3000
    curl -X POST 127.0.0.1:3000/generate -H 'content-type: application/json' \
         -d '{"prompt": "hello world", "max_new_tokens": 16}'
    curl 127.0.0.1:3000/readyz        # 200 once restored; 503 if the snapshot could not be loaded

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
# (BentoML imports this module in each worker process, so each worker starts its own prefetch; see
# below for the serving process.)
try:
    pending = snapload.prefetch(SNAPLOAD_MODEL)
except (OSError, snapload.SnapshotError):  # missing, unreadable, not a snapshot: __init__ reports it
    pending = None

import bentoml  # noqa: E402

if pending is not None and "://" in SNAPLOAD_MODEL and not os.environ.get("SNAPLOAD_CACHE_DIR") and bentoml.server_context.worker_index is None:
    # `bentoml serve` imports this module in its own process too, before it starts the workers. A
    # URL prefetched into this process's memory is of no use to them (a file or a cache directory
    # is: they share the page cache and the cache entry), so stop that download here.
    pending.cancel()

import snapload.hf  # noqa: E402  (imports torch and transformers)
import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

DEVICE = os.environ.get("SNAPLOAD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def _no_tokenizer() -> str:
    raise ValueError("SNAPLOAD_MODEL is a URL: set SNAPLOAD_TOKENIZER to the tokenizer's folder")


@bentoml.service(workers=1, traffic={"timeout": 300})
class Generator:
    def __init__(self) -> None:
        # A failure is kept, not raised: raising here makes BentoML restart the worker forever
        # (the server never answers); kept, /readyz says 503 and every request gets the reason.
        self.error: str | None = None
        try:
            # The model's class first: transformers imports its module lazily (seconds), and the
            # prefetch goes on reading meanwhile, as it does while the tokenizer loads. Then wait for the
            # prefetch, and restore.
            model_class = snapload.hf.model_class_of(SNAPLOAD_MODEL)
            self.tokenizer = AutoTokenizer.from_pretrained(TOKENIZER or _no_tokenizer())
            if pending is not None:
                pending.wait()
            verify = os.environ.get("SNAPLOAD_VERIFY") == "1"  # check every CRC32C (reads the whole file)
            self.model = snapload.hf.load_model(SNAPLOAD_MODEL, DEVICE, model_class=model_class, verify=verify)
        except Exception as e:  # noqa: BLE001 - any failure: the service answers every request with it
            self.error = f"cannot load {SNAPLOAD_MODEL}: {type(e).__name__}: {e}"
            print(self.error, file=sys.stderr, flush=True)

    def __is_ready__(self) -> bool:  # BentoML's /readyz hook
        return self.error is None

    @bentoml.api
    def generate(self, prompt: str, max_new_tokens: int = 16) -> dict:
        """Greedy continuation of ``prompt``: {"text": str, "token_ids": [int]}."""
        if self.error is not None:
            raise bentoml.exceptions.ServiceUnavailable(self.error)
        if not prompt or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise bentoml.exceptions.InvalidArgument(
                f"prompt must be non-empty and max_new_tokens in 1..{MAX_NEW_TOKENS}"
            )
        inputs = self.tokenizer(prompt, return_tensors="pt").to(DEVICE)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        return {"text": self.tokenizer.decode(new, skip_special_tokens=True), "token_ids": new}
