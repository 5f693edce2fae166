"""The Hugging Face metadata a snapshot carries so that ``snapload.hf.load_model`` can rebuild the
model from the snapshot alone: ``config.json`` under ``hf.config`` and ``generation_config.json``
under ``hf.generation_config``, as JSON text. ``convert`` copies the files of a model folder;
``snapshot`` of a live transformers model writes what ``save_pretrained`` would write.

Does not import transformers: a transformers model can only exist once transformers is imported.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

CONFIG_KEY = "hf.config"
GENERATION_CONFIG_KEY = "hf.generation_config"
# Files of a Hugging Face model folder -> the metadata key each is stored under.
FOLDER_FILES = {"config.json": CONFIG_KEY, "generation_config.json": GENERATION_CONFIG_KEY}


def is_transformers_model(obj: object) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(obj, transformers.PreTrainedModel)


def model_metadata(model: Any) -> dict[str, str]:
    """``hf.config`` (and ``hf.generation_config`` for a model that generates) of a transformers
    model, as ``save_pretrained`` writes them: the config's non-default values, with
    ``architectures`` naming the model's class. Empty for anything else."""
    if not is_transformers_model(model):
        return {}
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    out = {CONFIG_KEY: config.to_json_string(use_diff=True)}
    generation = getattr(model, "generation_config", None)
    if generation is not None and model.can_generate():
        out[GENERATION_CONFIG_KEY] = generation.to_json_string(use_diff=True)
    return out
