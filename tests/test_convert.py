"""snapload.convert(): safetensors files, torch checkpoints, Hugging Face folders; hostile inputs."""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import snapload
from snapload import _convert as convert_module


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical: same dtype, same shape, same bytes (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def assert_restores(snap: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    restored = snapload.restore(snap, verify=True)
    assert sorted(restored) == sorted(expected)
    for name, t in expected.items():
        assert same_bytes(restored[name], t), name
    return restored


# --------------------------------------------------------------------------------------------
# safetensors files


def test_safetensors_file_all_dtypes_bit_identical(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(7, 5, generator=g),
        "f16": torch.randn(3, 9, generator=g).half(),
        "bf16": torch.randn(33, generator=g).bfloat16(),
        "f64": torch.tensor([float("nan"), -0.0, float("inf")], dtype=torch.float64),
        "f8": torch.randn(16, generator=g).to(torch.float8_e4m3fn),
        "i64": torch.arange(-5, 5),
        "i8": torch.arange(-8, 8, dtype=torch.int8),
        "u8": torch.arange(0, 255, dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    src = tmp_path / "m.safetensors"
    save_file(tensors, src, metadata={"format": "pt", "note": "hello"})
    info = snapload.convert(src, tmp_path / "m.snap")
    assert info.metadata["safetensors.format"] == "pt"
    assert info.metadata["safetensors.note"] == "hello"
    assert info.metadata["snapload.source_format"] == "safetensors"
    assert {t.name: t.dtype for t in info.tensors}["f8"] == "float8_e4m3fn"
    assert all(t.offset % 4096 == 0 for t in info.tensors)
    assert_restores(tmp_path / "m.snap", load_file(src))


def test_progress_reports_every_byte(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(1000), "b": torch.ones(10, dtype=torch.int32)}, src)
    calls: list[tuple[int, int]] = []
    info = snapload.convert(src, tmp_path / "m.snap", progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, info.data_bytes)
    assert calls[-1] == (info.data_bytes, info.data_bytes) == (4040, 4040)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_cast_to_bfloat16_casts_floats_only(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = {
        "w32": torch.randn(4, 4, generator=g),
        "w64": torch.randn(3, generator=g, dtype=torch.float64),
        "w16": torch.randn(5, generator=g).half(),
        "wbf": torch.randn(5, generator=g).bfloat16(),
        "ids": torch.arange(6, dtype=torch.int32),
        "mask": torch.tensor([True, False]),
        "f8": torch.ones(4).to(torch.float8_e5m2),
    }
    src = tmp_path / "m.safetensors"
    save_file(tensors, src)
    info = snapload.convert(src, tmp_path / "m.snap", dtype="bfloat16")
    dtypes = {t.name: t.dtype for t in info.tensors}
    assert dtypes == {
        "w32": "bfloat16", "w64": "bfloat16", "w16": "bfloat16", "wbf": "bfloat16",
        "ids": "int32", "mask": "bool", "f8": "float8_e5m2",
    }
    assert info.metadata["snapload.cast"] == "bfloat16"
    expected = {k: v.to(torch.bfloat16) if k.startswith("w") else v for k, v in tensors.items()}
    assert_restores(tmp_path / "m.snap", expected)


def test_cast_rejects_other_dtypes(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2)}, src)
    with pytest.raises(ValueError, match="dtype"):
        snapload.convert(src, tmp_path / "m.snap", dtype="int8")


def write_raw_safetensors(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


HOSTILE = {
    "shorter than the length": (b"", None, 0, "fewer than the 8-byte"),
    "length past EOF": (b'{"a":{}}', None, 1 << 40, "does not fit"),
    "zero length": (b"", None, 0, "does not fit"),
    "not JSON": (b"\xff\xfe not json", None, None, "not valid JSON"),
    "JSON array": (b"[1, 2]", None, None, "not an object"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, None, None, "not valid JSON"),
    "duplicate key": (
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
        b"x", None, "appears twice",
    ),
    "offsets past EOF": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "'w'.*outside"),
    "length != shape": ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16, None, "'w'.*needs 12"),
    "reversed offsets": ({"w": {"dtype": "U8", "shape": [0], "data_offsets": [8, 0]}}, b"\0" * 8, None, "'w'.*outside"),
    "unknown dtype": ({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "'w'.*unsupported dtype"),
    "negative dim": ({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, b"\0", None, "'w'.*non-negative"),
    "float dim": ({"w": {"dtype": "U8", "shape": [1.0], "data_offsets": [0, 1]}}, b"\0", None, "'w'.*non-negative"),
    "bool offsets": ({"w": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}}, b"\0", None, "'w'.*data_offsets"),
    "huge empty shape": ({"w": {"dtype": "F32", "shape": [0, 1 << 62, 1 << 62], "data_offsets": [0, 0]}}, b"", None, "'w'.*too large"),
    "entry not an object": ({"w": [1, 2]}, b"", None, "'w'.*not an object"),
    "metadata not strings": ({"__metadata__": {"k": 1}}, b"", None, "__metadata__"),
    "empty name": ({"": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None, "non-empty"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_safetensors_raise_conversion_error(tmp_path: Path, case: str) -> None:
    header, data, length, message = HOSTILE[case]
    src = write_raw_safetensors(tmp_path / "bad.safetensors", header, data or b"", length=length)
    if case == "shorter than the length":
        src.write_bytes(b"\x01\x02")
    with pytest.raises(snapload.ConversionError, match=message) as err:
        snapload.convert(src, tmp_path / "out.snap")
    assert str(src) in str(err.value)
    assert not (tmp_path / "out.snap").exists()
    assert os.listdir(tmp_path) == ["bad.safetensors"]  # no temporary file left behind


# --------------------------------------------------------------------------------------------
# torch checkpoints


def test_torch_save_tied_weights_become_aliases(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(16, 8, generator=g)
    sd = {
        "embed.weight": emb,
        "lm_head.weight": emb,  # tied: the same tensor
        "proj.weight": torch.randn(8, 4, generator=g).t(),  # non-contiguous
        "tail": emb[8:],  # a partial view: written separately, not an alias
        "ids": torch.arange(5),
    }
    src = tmp_path / "ckpt.pt"
    torch.save(sd, src)
    info = snapload.convert(src, tmp_path / "ckpt.snap")
    aliases = {t.name: t.alias_of for t in info.tensors}
    assert aliases == {"embed.weight": None, "lm_head.weight": "embed.weight", "proj.weight": None, "tail": None, "ids": None}
    assert info.metadata["snapload.source_format"] == "torch"
    restored = assert_restores(tmp_path / "ckpt.snap", sd)
    assert restored["embed.weight"] is restored["lm_head.weight"]


def test_torch_cast_keeps_aliases(tmp_path: Path) -> None:
    w = torch.randn(4, 4)
    torch.save({"a": w, "b": w, "n": torch.arange(3)}, tmp_path / "c.pt")
    info = snapload.convert(tmp_path / "c.pt", tmp_path / "c.snap", dtype="float16")
    assert [(t.name, t.dtype, t.alias_of) for t in info.tensors] == [
        ("a", "float16", None), ("b", "float16", "a"), ("n", "int64", None),
    ]
    restored = assert_restores(tmp_path / "c.snap", {"a": w.half(), "b": w.half(), "n": torch.arange(3)})
    assert restored["a"] is restored["b"]


def test_legacy_torch_save(tmp_path: Path) -> None:
    sd = {"w": torch.randn(3, 5), "b": torch.zeros(5, dtype=torch.bfloat16)}
    src = tmp_path / "legacy.bin"
    torch.save(sd, src, _use_new_zipfile_serialization=False)
    snapload.convert(src, tmp_path / "legacy.snap")
    assert_restores(tmp_path / "legacy.snap", sd)


def test_nested_training_checkpoint_skips_non_tensors(tmp_path: Path) -> None:
    sd: dict[str, Any] = {"w": torch.randn(2, 2), "step": 7, "extra": {"lr": 0.1}}
    torch.save({"state_dict": sd, "epoch": 3, "optimizer": {"lr": 1e-3}}, tmp_path / "train.pt")
    with pytest.warns(UserWarning) as record:
        snapload.convert(tmp_path / "train.pt", tmp_path / "train.snap")
    text = " ".join(str(w.message) for w in record)
    assert "'state_dict'" in text and "step (int)" in text and "extra (dict)" in text
    assert_restores(tmp_path / "train.snap", {"w": sd["w"]})


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 0", "pickle protocol 2", "pickle default"])
def test_malicious_pickle_is_refused(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "MARKER"
    src = tmp_path / "evil.pt"
    payload = {"w": torch.ones(2), "x": Evil(marker)}
    if how == "torch.save":
        torch.save(payload, src)
    else:
        with open(src, "wb") as f:
            protocol = int(how[-1]) if how[-1].isdigit() else pickle.DEFAULT_PROTOCOL
            pickle.dump({"x": Evil(marker)}, f, protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the pickle protocol it reads
        with pytest.raises(snapload.UnsafeCheckpointError, match="refused") as err:
            snapload.convert(src, tmp_path / "evil.snap")
    assert str(src) in str(err.value)
    assert not marker.exists()
    assert not (tmp_path / "evil.snap").exists()


def test_torch_file_without_tensors(tmp_path: Path) -> None:
    torch.save({"step": 1, "name": "run-3"}, tmp_path / "meta.pt")
    with pytest.raises(snapload.ConversionError, match="meta.pt: no tensors found, only step"):
        snapload.convert(tmp_path / "meta.pt", tmp_path / "o.snap")


def test_corrupt_torch_zip_raises_conversion_error(tmp_path: Path) -> None:
    src = tmp_path / "broken.pt"
    torch.save({"w": torch.ones(100)}, src)
    src.write_bytes(src.read_bytes()[:200])
    with pytest.raises(snapload.ConversionError, match="broken.pt"):
        snapload.convert(src, tmp_path / "o.snap")


def test_unrecognised_and_missing_sources(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello world")
    with pytest.raises(snapload.ConversionError, match="notes.txt"):
        snapload.convert(tmp_path / "notes.txt", tmp_path / "o.snap")
    with pytest.raises(FileNotFoundError):
        snapload.convert(tmp_path / "absent.safetensors", tmp_path / "o.snap")
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(snapload.ConversionError, match="no weights found"):
        snapload.convert(tmp_path / "empty_model", tmp_path / "o.snap")


# --------------------------------------------------------------------------------------------
# Hugging Face folders


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[str, Path]]:
    """A tiny Llama saved every way a folder can hold it (transformers 5 writes safetensors only,
    so the pytorch_model.bin layouts are written as older transformers wrote them)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    root = tmp_path_factory.mktemp("hf")
    folders = {name: root / name for name in ("single", "sharded", "bin", "bin_sharded")}
    model.save_pretrained(folders["single"])
    model.save_pretrained(folders["sharded"], max_shard_size="100KB")
    sd = model.state_dict()
    for name in ("bin", "bin_sharded"):
        model.config.save_pretrained(folders[name])
        model.generation_config.save_pretrained(folders[name])
    torch.save(sd, folders["bin"] / "pytorch_model.bin")
    keys = list(sd)
    halves = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :]}
    weight_map = {}
    for file, names in halves.items():
        torch.save({k: sd[k] for k in names}, folders["bin_sharded"] / file)
        weight_map.update(dict.fromkeys(names, file))
    (folders["bin_sharded"] / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return model, folders


def source_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.iterdir()):
        if f.suffix == ".safetensors":
            out.update(load_file(f))
        elif f.suffix == ".bin":
            out.update(torch.load(f, weights_only=True))
    return out


@pytest.mark.parametrize("layout", ["single", "sharded", "bin", "bin_sharded"])
def test_hf_folder(tmp_path: Path, llama: tuple[object, dict[str, Path]], layout: str) -> None:
    _, folders = llama
    folder = folders[layout]
    if layout == "sharded":
        assert len(list(folder.glob("*.safetensors"))) > 2
    info = snapload.convert(folder, tmp_path / "m.snap")
    config = json.loads(info.metadata["hf.config"])
    assert config["model_type"] == "llama" and config["hidden_size"] == 64
    assert "hf.generation_config" in info.metadata
    json.loads(info.metadata["hf.generation_config"])
    expected = source_tensors(folder)
    assert len(expected) > 10
    assert_restores(tmp_path / "m.snap", expected)


def test_hf_sharded_reads_one_shard_at_a_time(
    tmp_path: Path, llama: tuple[object, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = convert_module._SafetensorsShard.open

    def spy(self: convert_module._SafetensorsShard) -> object:
        opened.append(Path(self.path).name)
        return real_open(self)

    monkeypatch.setattr(convert_module._SafetensorsShard, "open", spy)
    snapload.convert(llama[1]["sharded"], tmp_path / "m.snap")
    assert len(opened) > 2 and opened == sorted(set(opened))  # each shard once, in order


def test_model_rebuilt_from_snapshot_alone(tmp_path: Path, llama: tuple[object, dict[str, Path]]) -> None:
    import transformers

    model, folders = llama
    snapload.convert(folders["sharded"], tmp_path / "m.snap")
    info = snapload.open(tmp_path / "m.snap")
    cfg = transformers.LlamaConfig.from_dict(json.loads(info.metadata["hf.config"]))
    with snapload.init_empty_weights():
        rebuilt = transformers.LlamaForCausalLM(cfg).eval()  # type: ignore[no-untyped-call]
    snapload.restore_module(rebuilt, tmp_path / "m.snap")
    ids = torch.tensor([[1, 5, 7, 42]])
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, model(ids).logits)  # type: ignore[operator]


def write_index(folder: Path, weight_map: dict[str, str]) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_duplicate_names_across_shards(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, tmp_path / "s1.safetensors")
    save_file({"a": torch.zeros(2)}, tmp_path / "s2.safetensors")
    write_index(tmp_path, {"a": "s1.safetensors", "b": "s2.safetensors"})
    with pytest.raises(snapload.ConversionError, match="'a' appears in both .*s1.safetensors and .*s2.safetensors"):
        snapload.convert(tmp_path, tmp_path / "o.snap")


def test_index_errors(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, tmp_path / "s1.safetensors")
    write_index(tmp_path, {"a": "../s1.safetensors"})
    with pytest.raises(snapload.ConversionError, match="not a file name"):
        snapload.convert(tmp_path, tmp_path / "o.snap")
    write_index(tmp_path, {"a": "s1.safetensors", "ghost": "s1.safetensors"})
    with pytest.raises(snapload.ConversionError, match="ghost"):
        snapload.convert(tmp_path, tmp_path / "o.snap")
    write_index(tmp_path, {"a": "missing.safetensors"})
    with pytest.raises(snapload.ConversionError, match="does not exist"):
        snapload.convert(tmp_path, tmp_path / "o.snap")
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(snapload.ConversionError, match="not valid JSON"):
        snapload.convert(tmp_path, tmp_path / "o.snap")


def test_convert_is_the_function_even_after_the_module_is_imported() -> None:
    # The implementation lives in snapload._convert: a submodule named `convert` would replace
    # the package attribute with itself once imported (`from snapload.convert import ...`).
    import snapload._convert

    assert snapload.convert is snapload._convert.convert
