"""Rebuilding a Hugging Face transformers model from a snapshot alone.

``snapload convert`` of a model folder, and ``snapload.snapshot`` of a transformers model, record
the model's config in the snapshot metadata (key ``hf.config``, plus ``hf.generation_config``);
``load_model`` builds the model from it with parameters on the meta device (no memory, no random
init) and restores the weights into it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from snapload._hf_metadata import CONFIG_KEY, GENERATION_CONFIG_KEY
from snapload._info import open as open_snapshot
from snapload.errors import SnapshotError
from snapload.module import init_empty_weights, match_keys, restore_module

__all__ = ["CONFIG_KEY", "GENERATION_CONFIG_KEY", "FALLBACK_AUTO_CLASSES", "config_of", "load_model", "model_class_for", "model_class_of"]

# Tried in this order when the config names no class transformers has: the first whose model
# has exactly the snapshot's keys wins, else the one with the fewest mismatched keys.
FALLBACK_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel")


def config_of(path: str | os.PathLike[str]) -> dict[str, Any]:
    return _config_dict(path, open_snapshot(path).metadata)


def _config_dict(path: str | os.PathLike[str], meta: dict[str, str]) -> dict[str, Any]:
    if CONFIG_KEY not in meta:
        raise SnapshotError(
            f"{os.fspath(path)}: no {CONFIG_KEY!r} in the metadata (convert from a model folder, snapshot a "
            "transformers model, or pass metadata)"
        )
    config: dict[str, Any] = json.loads(meta[CONFIG_KEY])
    return config


def _mismatch(model_class: Any, config: Any, names: set[str]) -> int:
    """How many keys would be missing or unexpected if the snapshot were restored into a
    ``model_class``, ties and ignorable keys counted as ``restore_module`` counts them. The model
    is built on the meta device: nothing is allocated or initialised for real."""
    with torch.device("meta"):
        model = model_class(config)
    _, missing, unexpected = match_keys(model, names)
    return len(missing) + len(unexpected)


def model_class_for(config: Any, tensor_names: set[str] | None = None) -> Any:
    """The transformers class to build for ``config``: the first of ``config.architectures`` that
    transformers has (what ``save_pretrained`` records); else, among the classes the
    ``FALLBACK_AUTO_CLASSES`` map the config's model type to, the one whose keys match
    ``tensor_names`` best (the first, when no names are given)."""
    import transformers

    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    candidates: list[Any] = []
    for auto_name in FALLBACK_AUTO_CLASSES:
        mapping = getattr(transformers, auto_name)._model_mapping
        try:
            cls = mapping[type(config)]
        except KeyError:
            continue
        if cls not in candidates:
            candidates.append(cls)
    if not candidates:
        raise SnapshotError(
            f"transformers has no model class for model type {config.model_type!r}: pass model_class="
        )
    if tensor_names is None or len(candidates) == 1:
        return candidates[0]
    scores = []
    for cls in candidates:
        score = _mismatch(cls, config, tensor_names)
        if score == 0:
            return cls
        scores.append(score)
    return candidates[scores.index(min(scores))]


def _config(path: str | os.PathLike[str], info: Any) -> Any:
    """The transformers config recorded in ``info`` (an opened snapshot: for a URL, opening costs
    requests, so it is done once per call)."""
    import transformers

    return transformers.AutoConfig.for_model(**_config_dict(path, info.metadata))


def model_class_of(path: str | os.PathLike[str]) -> Any:
    """The class ``load_model(path)`` builds when no ``model_class`` is given, with its module
    imported. transformers imports a model's module lazily, on first use, and that takes seconds
    (2-5 s for Llama on a 2-core machine): a handler calls this while its ``prefetch`` is still
    reading, then waits, then passes the class to ``load_model``, so the two overlap. Reads only
    the snapshot's header."""
    info = open_snapshot(path)
    return model_class_for(_config(path, info), set(info.names))


def _build(model_class: Any, config: Any) -> Any:
    """An Auto class builds through ``from_config``; a model class is called with the config."""
    if hasattr(model_class, "from_config"):
        return model_class.from_config(config)
    return model_class(config)


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    model_class: Any = None,
    **restore_options: Any,
) -> Any:
    """Build the transformers model recorded in the snapshot and restore its weights into it.

    The class is ``model_class`` when given (a model class such as ``BertModel``, or an Auto
    class such as ``transformers.AutoModelForSeq2SeqLM``), else ``model_class_for``: the class the
    config's ``architectures`` names, falling back to the Auto class whose model matches the
    snapshot's keys. ``hf.generation_config``, when recorded, becomes ``model.generation_config``.
    ``restore_options`` go to ``restore_module`` (``strict``, ``verify``, ...). Returns the model
    in eval mode."""
    import transformers

    info = open_snapshot(path)
    config = _config(path, info)
    if model_class is None:
        model_class = model_class_for(config, set(info.names))
    with init_empty_weights():
        model = _build(model_class, config)
    restore_module(model, path, device, **restore_options)
    generation = info.metadata.get(GENERATION_CONFIG_KEY)
    if generation is not None and getattr(model, "generation_config", None) is not None:
        model.generation_config = transformers.GenerationConfig.from_dict(json.loads(generation))
    return model.eval()
