"""snapload.hf.load_model on the three families of transformers models (encoder, causal LM,
seq2seq), and the Hugging Face conventions restore_module follows: tied weights written once, and
checkpoint keys a model declares ignorable. Every model is built tiny from a config: nothing is
downloaded."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import save_file

import snapload
import snapload.hf
from snapload import StateDictMismatchError

IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 64]])


def _bert() -> Any:
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=128,
        max_position_embeddings=64,
    )
    return transformers.BertModel(config)


def _llama() -> Any:
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config)


def _t5() -> Any:
    config = transformers.T5Config(
        d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=128, decoder_start_token_id=0,
    )
    return transformers.T5ForConditionalGeneration(config)


def _bart() -> Any:
    config = transformers.BartConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128, max_position_embeddings=64,
    )
    return transformers.BartForConditionalGeneration(config)


MODELS: dict[str, Callable[[], Any]] = {"bert": _bert, "llama": _llama, "t5": _t5, "bart": _bart}


def _outputs(model: Any) -> torch.Tensor:
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            out = model(input_ids=IDS, decoder_input_ids=IDS[:, :4])
        else:
            out = model(input_ids=IDS)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _same_state(a: Any, b: Any) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _build(kind: str) -> Any:
    torch.manual_seed(0)
    return MODELS[kind]().eval()


def _converted(tmp_path: Path, model: Any, *, drop_architectures: bool = False) -> Path:
    """``model`` saved with save_pretrained and converted; without ``architectures`` in its config
    when asked (what older or hand-written configs lack), so the class must be found by keys."""
    model.save_pretrained(tmp_path / "hf")
    if drop_architectures:
        config_file = tmp_path / "hf" / "config.json"
        config = json.loads(config_file.read_text())
        del config["architectures"]
        config_file.write_text(json.dumps(config))
    snapload.convert(tmp_path / "hf", tmp_path / "m.snap")
    return tmp_path / "m.snap"


@pytest.mark.parametrize("kind", list(MODELS))
def test_load_model_rebuilds_the_class_a_converted_folder_names(tmp_path: Path, kind: str) -> None:
    original = _build(kind)
    original.save_pretrained(tmp_path / "hf")
    snapload.convert(tmp_path / "hf", tmp_path / "m.snap")

    loaded = snapload.hf.load_model(tmp_path / "m.snap")

    assert type(loaded) is type(original)
    _same_state(original, loaded)
    assert torch.equal(_outputs(loaded), _outputs(original))


@pytest.mark.parametrize(("kind", "expected"), [("bert", "BertModel"), ("llama", "LlamaForCausalLM"), ("t5", "T5ForConditionalGeneration")])
def test_without_architectures_the_auto_class_whose_keys_match_is_chosen(tmp_path: Path, kind: str, expected: str) -> None:
    original = _build(kind)
    loaded = snapload.hf.load_model(_converted(tmp_path, original, drop_architectures=True))

    assert type(loaded).__name__ == expected
    assert torch.equal(_outputs(loaded), _outputs(original))


@pytest.mark.parametrize("drop_architectures", [False, True])
def test_model_class_of_is_the_class_load_model_builds(tmp_path: Path, drop_architectures: bool) -> None:
    path = _converted(tmp_path, _build("t5"), drop_architectures=drop_architectures)

    cls = snapload.hf.model_class_of(path)

    assert cls is type(snapload.hf.load_model(path)) is transformers.T5ForConditionalGeneration


def test_model_class_of_imports_the_model_module_and_reads_no_weights(tmp_path: Path) -> None:
    """What the templates call it for: transformers' lazy import of the model's module happens
    here (while a prefetch can go on reading), not later inside load_model."""
    # 8 MB of weights: far more than the kernel's readahead around the header.
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=16384,
    )
    path = _converted(tmp_path, transformers.LlamaForCausalLM(config))
    child = """
import sys, snapload, snapload.hf
from snapload.prefetch import evict, residency
path = sys.argv[1]
evict(path)
module = "transformers.models.llama.modeling_llama"
assert module not in sys.modules, "imported before the call"
cls = snapload.hf.model_class_of(path)
assert module in sys.modules and cls.__module__ == module, (cls, sorted(m for m in sys.modules if "llama" in m))
r = residency(path, validate=False)
print(cls.__name__, r.resident_bytes, r.size)
"""
    out = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    name, resident, size = out.stdout.split()
    assert name == "LlamaForCausalLM"
    # The header's pages only: the tensors (most of the file) were not read.
    assert int(resident) < int(size) // 4, (resident, size)


def test_model_class_of_a_missing_snapshot_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.snap"):
        snapload.hf.model_class_of(tmp_path / "nowhere.snap")


def test_model_class_overrides_the_recorded_one(tmp_path: Path) -> None:
    original = _build("t5")
    original.save_pretrained(tmp_path / "hf")
    snapload.convert(tmp_path / "hf", tmp_path / "m.snap")

    by_auto = snapload.hf.load_model(tmp_path / "m.snap", model_class=transformers.AutoModelForSeq2SeqLM)
    assert type(by_auto) is transformers.T5ForConditionalGeneration
    # The bare encoder-decoder: its keys are a subset, so non-strict restore reports lm_head.weight
    # only if untied; T5 ties it, so strict passes and the encoder output is the original's.
    base = snapload.hf.load_model(tmp_path / "m.snap", model_class=transformers.T5Model)
    assert type(base) is transformers.T5Model
    with torch.no_grad():
        got = base(input_ids=IDS, decoder_input_ids=IDS[:, :4]).last_hidden_state
        want = original(input_ids=IDS, decoder_input_ids=IDS[:, :4], output_hidden_states=True).decoder_hidden_states[-1]
    assert torch.equal(got, want)


def test_snapshot_of_a_transformers_model_records_its_config(tmp_path: Path) -> None:
    original = _build("llama")
    original.generation_config.max_new_tokens = 7
    snapload.snapshot(original, tmp_path / "m.snap", metadata={"owner": "test"})

    meta = snapload.open(tmp_path / "m.snap").metadata
    assert meta["owner"] == "test"
    assert json.loads(meta["hf.config"])["architectures"] == ["LlamaForCausalLM"]
    assert json.loads(meta["hf.generation_config"])["max_new_tokens"] == 7

    loaded = snapload.hf.load_model(tmp_path / "m.snap")
    assert type(loaded) is transformers.LlamaForCausalLM
    assert loaded.generation_config.max_new_tokens == 7
    _same_state(original, loaded)
    assert torch.equal(_outputs(loaded), _outputs(original))


def test_snapshot_metadata_argument_wins_over_the_recorded_config(tmp_path: Path) -> None:
    snapload.snapshot(_build("bert"), tmp_path / "m.snap", metadata={"hf.config": "{}"})
    assert snapload.open(tmp_path / "m.snap").metadata["hf.config"] == "{}"
    assert "hf.generation_config" not in snapload.open(tmp_path / "m.snap").metadata  # BERT does not generate


def test_snapshot_of_a_plain_module_records_no_hf_config(tmp_path: Path) -> None:
    snapload.snapshot(torch.nn.Linear(2, 2), tmp_path / "m.snap")
    assert not any(k.startswith("hf.") for k in snapload.open(tmp_path / "m.snap").metadata)


# ------------------------------------------------------------------------------------------------
# restore_module on Hugging Face checkpoints


def _bert_checkpoint_with_position_ids(tmp_path: Path, extra: dict[str, torch.Tensor] | None = None) -> tuple[Any, Path]:
    """A BERT folder as older transformers releases saved it: with ``embeddings.position_ids``,
    which current releases make a non-persistent buffer (and from_pretrained skips)."""
    original = _build("bert")
    original.save_pretrained(tmp_path / "hf")
    state = {k: v.contiguous() for k, v in original.state_dict().items()}
    state["embeddings.position_ids"] = original.embeddings.position_ids.clone()
    state.update(extra or {})
    save_file(state, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    snapload.convert(tmp_path / "hf", tmp_path / "m.snap")
    assert "embeddings.position_ids" in snapload.open(tmp_path / "m.snap").names
    return original, tmp_path / "m.snap"


def test_strict_restore_skips_keys_from_pretrained_ignores(tmp_path: Path) -> None:
    original, snap = _bert_checkpoint_with_position_ids(tmp_path)
    # from_pretrained accepts this checkpoint without a word ...
    reference = transformers.BertModel.from_pretrained(tmp_path / "hf")
    assert torch.equal(_outputs(reference.eval()), _outputs(original))
    # ... and so does restore_module, strict.
    with snapload.init_empty_weights():
        model = transformers.BertModel(original.config)
    result = snapload.restore_module(model, snap)
    assert result.unexpected_keys == [] and result.missing_keys == []
    assert torch.equal(model.embeddings.position_ids, original.embeddings.position_ids)
    assert torch.equal(_outputs(model.eval()), _outputs(original))
    assert torch.equal(_outputs(snapload.hf.load_model(snap)), _outputs(original))


def test_truly_unexpected_keys_are_still_reported(tmp_path: Path) -> None:
    _, snap = _bert_checkpoint_with_position_ids(tmp_path, {"pooler.extra.weight": torch.ones(2)})
    with snapload.init_empty_weights():
        model = transformers.BertModel(_build("bert").config)
    with pytest.raises(StateDictMismatchError, match=r"unexpected keys \['pooler.extra.weight'\]"):
        snapload.restore_module(model, snap)
    with snapload.init_empty_weights():
        model = transformers.BertModel(_build("bert").config)
    result = snapload.restore_module(model, snap, strict=False)
    assert result.unexpected_keys == ["pooler.extra.weight"]


def test_keys_to_ignore_on_load_unexpected_are_regexes_searched(tmp_path: Path) -> None:
    class Model(torch.nn.Module):
        _keys_to_ignore_on_load_unexpected = [r"\.old_head\."]

        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(2, 2)

    state = dict(Model().state_dict())
    state["decoder.old_head.weight"] = torch.ones(1)
    state["old_head.weight"] = torch.ones(1)  # does not match: no dot before it
    snapload.snapshot(state, tmp_path / "m.snap")
    result = snapload.restore_module(Model(), tmp_path / "m.snap", strict=False)
    assert result.unexpected_keys == ["old_head.weight"]


def test_tied_weights_written_once_fill_every_tied_slot(tmp_path: Path) -> None:
    original = _build("llama")
    original.save_pretrained(tmp_path / "hf")
    snapload.convert(tmp_path / "hf", tmp_path / "m.snap")
    assert "lm_head.weight" not in snapload.open(tmp_path / "m.snap").names  # save_pretrained wrote it once
    with snapload.init_empty_weights():
        model = transformers.LlamaForCausalLM(original.config)
    assert snapload.restore_module(model, tmp_path / "m.snap").missing_keys == []
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(_outputs(model.eval()), _outputs(original))
