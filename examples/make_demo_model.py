"""Make a small random LLaMA-style model folder to try the templates with, no hub access needed.

    python examples/make_demo_model.py /models/demo            # tiny (~2 MB), seconds
    python examples/make_demo_model.py /models/demo --large    # ~1.5 GB of fp32, for benchmarks

Writes a Hugging Face folder (``config.json``, ``model.safetensors``, the tokenizer files) and
then runs ``snapload convert FOLDER FOLDER/model.snap``, so the snapshot sits beside its
tokenizer, which is the layout every template expects::

    /models/demo/
      config.json  generation_config.json  model.safetensors
      tokenizer.json  tokenizer_config.json  (special_tokens_map.json)
      model.snap      <- SNAPLOAD_MODEL points here; the config is also inside it

The tokenizer is a word-level one built locally with the ``tokenizers`` library (a few sentences'
words, then filler words up to the model's vocabulary size, so every token id decodes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "snapshots restore weights at the speed of the hardware",
    "a serverless worker starts cold and must answer fast",
    "hello world this is a tiny language model",
)
SPECIALS = ("[UNK]", "[PAD]", "<s>", "</s>")

TINY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 128,
    "max_position_embeddings": 256,
}
# About 1.55 GB in fp32 (388 M parameters): 5 layers of hidden 2048 and a 32k vocabulary (head_dim
# 128). fp32 rather than a bf16 model of the same size: a forward pass costs half as much, so on a
# CPU the first answer measures loading more than arithmetic.
LARGE: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 5,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}


def make_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer with exactly ``vocab_size`` tokens, wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in SENTENCES for w in s.split()})
    tokens = [*SPECIALS, *words]
    tokens += [f"w{i}" for i in range(vocab_size - len(tokens))]
    if len(tokens) != vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(SPECIALS) + len(words)} base tokens")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>"
    )


def make_model(folder: str | Path, spec: dict[str, Any] | None = None, *, dtype: str = "float32", seed: int = 0) -> Path:
    """Write the HF folder and ``folder/model.snap``; return the snapshot's path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = dict(TINY if spec is None else spec)
    tokenizer = make_tokenizer(spec["vocab_size"])
    config = LlamaConfig(
        **spec,
        dtype=dtype,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # initialise in the target dtype: no fp32 copy
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    snap = folder / "model.snap"
    # The CLI, as a user would run it: config (and generation config) go into the snapshot.
    subprocess.run([sys.executable, "-m", "snapload.cli", "convert", str(folder), str(snap)], check=True)
    return snap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--large", action="store_true", help="~1.5 GB instead of a tiny model (both fp32)")
    args = p.parse_args()
    snap = make_model(args.folder, LARGE if args.large else TINY)
    print(f"SNAPLOAD_MODEL={snap}")


if __name__ == "__main__":
    main()
