"""Rebuilding a Hugging Face transformers model from a snapshot alone.

``snapload convert`` records the model's ``config.json`` in the snapshot metadata (key
``hf.config``); ``load_model`` builds the model from it with parameters on the meta device (no
memory, no random init) and restores the weights into it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from snapload._info import open as open_snapshot
from snapload.errors import SnapshotError
from snapload.module import init_empty_weights, restore_module

CONFIG_KEY = "hf.config"


def config_of(path: str | os.PathLike[str]) -> dict[str, Any]:
    meta = open_snapshot(path).metadata
    if CONFIG_KEY not in meta:
        raise SnapshotError(f"{os.fspath(path)}: no {CONFIG_KEY!r} in the metadata (convert from a model folder, or pass metadata)")
    config: dict[str, Any] = json.loads(meta[CONFIG_KEY])
    return config


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu", **restore_options: Any) -> Any:
    """Build the transformers model recorded in the snapshot and restore its weights."""
    import transformers

    config = transformers.AutoConfig.for_model(**config_of(path))
    with init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    restore_module(model, path, device, **restore_options)
    return model.eval()
