"""restore_module: a transformers model built without weight memory, restored by assignment,
computes exactly what the original computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import snapload
from snapload import MetaTensorError, StateDictMismatchError

transformers = pytest.importorskip("transformers", reason="restore_module tests use a tiny transformers Llama")


def tiny_config(tied: bool) -> Any:  # a LlamaConfig
    return transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        tie_word_embeddings=tied,
    )


def build(tied: bool, seed: int = 0) -> Any:  # a LlamaForCausalLM
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(tiny_config(tied)).eval()


def build_empty(tied: bool) -> Any:
    with snapload.init_empty_weights():
        return transformers.LlamaForCausalLM(tiny_config(tied)).eval()


INPUT_IDS = torch.tensor([[1, 17, 42, 255, 3, 99]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def module_state(model: torch.nn.Module) -> dict[str, tuple[int, str]]:
    """Identity and device of every parameter and buffer: equal before/after means untouched."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return {n: (id(t), str(t.device)) for n, t in named}


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def original(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = build(request.param)
    path = tmp_path_factory.mktemp("module") / "llama.snap"
    snapload.snapshot(model, path)
    return model, path


def test_restore_module_matches_original(original: tuple[Any, Path]) -> None:
    model, path = original
    tied = model.config.tie_word_embeddings
    fresh = build_empty(tied)
    assert fresh.model.embed_tokens.weight.device.type == "meta"
    assert fresh.model.rotary_emb.inv_freq.device.type == "cpu", "buffers stay real under init_empty_weights"

    result = snapload.restore_module(fresh, path, verify=True)

    assert result.missing_keys == [] and result.unexpected_keys == []
    assert isinstance(result, snapload.RestoreResult)
    on_meta = [n for n, p in fresh.named_parameters(remove_duplicate=False) if p.device.type == "meta"]
    assert on_meta == []
    assert torch.equal(logits(fresh), logits(model)), "outputs must be bit-identical"
    if tied:
        assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    else:
        assert fresh.lm_head.weight is not fresh.model.embed_tokens.weight
        assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    # Zero copy: the parameters are views of the snapshot's mapping.
    file_size = snapload.open(path).file_size
    assert fresh.model.norm.weight.untyped_storage().nbytes() == file_size
    for name, p in fresh.named_parameters():
        assert p.requires_grad == dict(model.named_parameters())[name].requires_grad, name


def test_meta_device_buffers_are_reported(original: tuple[Any, Path]) -> None:
    """Built under ``torch.device("meta")``, the rotary ``inv_freq`` (a non-persistent buffer, so
    in no snapshot) stays on meta: a model that would compute garbage must be refused."""
    model, path = original
    with torch.device("meta"):
        meta_model = transformers.LlamaForCausalLM(model.config)
    with pytest.raises(MetaTensorError) as err:
        snapload.restore_module(meta_model, path)
    message = str(err.value)
    assert "model.rotary_emb.inv_freq" in message
    assert str(path) in message


def write_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    snapload.snapshot(state, path)
    return path


@pytest.fixture(scope="module")
def untied_state() -> dict[str, torch.Tensor]:
    return dict(build(tied=False).state_dict())


def test_strict_missing_key(tmp_path: Path, untied_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in untied_state.items() if k != "model.norm.weight"}
    path = write_state(tmp_path / "missing.snap", state)
    fresh = build_empty(tied=False)
    before = module_state(fresh)
    with pytest.raises(StateDictMismatchError) as err:
        snapload.restore_module(fresh, path, strict=True)
    assert "model.norm.weight" in str(err.value)
    assert str(path) in str(err.value)
    assert module_state(fresh) == before, "a refused restore must leave the module untouched"


def test_strict_unexpected_key(tmp_path: Path, untied_state: dict[str, torch.Tensor]) -> None:
    path = write_state(tmp_path / "extra.snap", {**untied_state, "model.extra.bias": torch.ones(3)})
    fresh = build_empty(tied=False)
    before = module_state(fresh)
    with pytest.raises(StateDictMismatchError, match=r"model\.extra\.bias"):
        snapload.restore_module(fresh, path)
    assert module_state(fresh) == before


def test_non_strict_reports_keys(tmp_path: Path, untied_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in untied_state.items() if k != "model.norm.weight"}
    state["model.extra.bias"] = torch.ones(3)
    path = write_state(tmp_path / "partial.snap", state)
    model = build(tied=False, seed=1)  # real weights, so the missing one keeps its value
    norm_before = model.model.norm.weight.detach().clone()
    result = snapload.restore_module(model, path, strict=False)
    assert result.missing_keys == ["model.norm.weight"]
    assert result.unexpected_keys == ["model.extra.bias"]
    assert torch.equal(model.model.norm.weight, norm_before)
    assert torch.equal(model.lm_head.weight, untied_state["lm_head.weight"])


def test_non_strict_missing_parameter_left_on_meta(tmp_path: Path, untied_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in untied_state.items() if k != "model.norm.weight"}
    path = write_state(tmp_path / "partial.snap", state)
    with pytest.raises(MetaTensorError, match=r"model\.norm\.weight"):
        snapload.restore_module(build_empty(tied=False), path, strict=False)


def test_shape_mismatch(tmp_path: Path, untied_state: dict[str, torch.Tensor]) -> None:
    path = write_state(tmp_path / "shape.snap", {**untied_state, "model.norm.weight": torch.ones(32)})
    fresh = build_empty(tied=False)
    before = module_state(fresh)
    with pytest.raises(StateDictMismatchError) as err:
        snapload.restore_module(fresh, path, strict=False)
    assert "model.norm.weight" in str(err.value)
    assert "(32,)" in str(err.value) and "(64,)" in str(err.value)
    assert module_state(fresh) == before
