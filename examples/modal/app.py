"""Modal class that restores a snapload snapshot once per container and generates text.

    modal deploy app.py        # on Modal (needs an account; see README.md for the image and volume)
    SNAPLOAD_MODEL=/models/demo/model.snap python app.py "hello world" 16    # locally, no cloud

Locally, ``Generator().generate.local(...)`` runs the ``@modal.enter()`` hook and the method in
this process (Modal's own local execution; no account needed). The tokenizer is loaded from the
snapshot's folder, or SNAPLOAD_TOKENIZER for an s3:// or https:// snapshot (see README.md).
"""

import os
import sys

import snapload  # light: does not import torch

SNAPLOAD_MODEL = os.environ.get("SNAPLOAD_MODEL", "/models/model.snap")
# The tokenizer's folder: beside a local snapshot; for an s3:// or https:// one, the folder the
# image ships it in (it is small; the weights are what is worth keeping in object storage).
TOKENIZER = os.environ.get("SNAPLOAD_TOKENIZER") or ("" if "://" in SNAPLOAD_MODEL else os.path.dirname(os.path.abspath(SNAPLOAD_MODEL)))
MAX_NEW_TOKENS = int(os.environ.get("SNAPLOAD_MAX_NEW_TOKENS", "512"))

# Start pulling the snapshot into the page cache now (the container imports this module before
# running the enter hook); `import modal` and the hook's `import torch` overlap the reads. The
# machine that runs `modal deploy` imports this file too, without the snapshot: not an error there.
try:
    pending = snapload.prefetch(SNAPLOAD_MODEL)
except (OSError, snapload.SnapshotError):  # the enter hook reports it (load_model raises the same)
    pending = None

import modal  # noqa: E402

app = modal.App("snapload-generator")
image = modal.Image.debian_slim(python_version="3.11").pip_install("snapload", "transformers", "torch")
models = modal.Volume.from_name("snapload-models", create_if_missing=True)


def _no_tokenizer() -> str:
    raise ValueError("SNAPLOAD_MODEL is a URL: set SNAPLOAD_TOKENIZER to the tokenizer's folder")


@app.cls(image=image, gpu="A10G", volumes={"/models": models}, env={"SNAPLOAD_MODEL": SNAPLOAD_MODEL})
class Generator:
    @modal.enter()
    def restore(self) -> None:
        # Torch is imported here, not at the top: the deploying machine need not have it.
        import snapload.hf
        import torch
        from transformers import AutoTokenizer

        # The model's class first: transformers imports its module lazily (seconds), and the
        # prefetch goes on reading meanwhile, as it does while the tokenizer loads. Then wait for the
        # prefetch, and restore.
        model_class = snapload.hf.model_class_of(SNAPLOAD_MODEL)
        self.tokenizer = AutoTokenizer.from_pretrained(TOKENIZER or _no_tokenizer())
        if pending is not None:
            pending.wait()
        self.torch = torch
        self.device = os.environ.get("SNAPLOAD_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        verify = os.environ.get("SNAPLOAD_VERIFY") == "1"  # check every CRC32C (reads the whole file)
        # A missing or damaged snapshot raises here (FileNotFoundError, snapload.SnapshotError):
        # Modal then fails the container's startup and the call reports the exception.
        self.model = snapload.hf.load_model(SNAPLOAD_MODEL, self.device, model_class=model_class, verify=verify)

    @modal.method()
    def generate(self, prompt: str, max_new_tokens: int = 16) -> dict:
        """Greedy continuation of ``prompt``: {"text": str, "token_ids": [int]}."""
        if not prompt or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"prompt must be non-empty and max_new_tokens in 1..{MAX_NEW_TOKENS}")
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        return {"text": self.tokenizer.decode(new, skip_special_tokens=True), "token_ids": new}


if __name__ == "__main__":  # local run: prints the JSON result (exit 1 with the reason on failure)
    import json

    prompt, n = (sys.argv[1], int(sys.argv[2])) if len(sys.argv) > 2 else ("hello world", 16)
    print(json.dumps(Generator().generate.local(prompt, n)))
