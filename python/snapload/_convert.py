"""``convert()``: turn a safetensors file, a torch checkpoint or a Hugging Face model folder into a
snapshot, with memory bounded by one tensor (plus one shard's file mapping).

The whole tensor table is computed first (safetensors headers; mmap'ed, lazy ``torch.load``), then
tensors are written one at a time through ``write_planned`` with loaders. Source files are
untrusted: safetensors headers are validated before any byte is read, and torch files are loaded
with ``weights_only=True`` only, never by running their pickle code.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import struct
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from snapload import _native
from snapload._hf_metadata import FOLDER_FILES as HF_FOLDER_FILES
from snapload._restore import SnapshotInfo
from snapload._info import open as open_snapshot
from snapload._write import DEFAULT_ALIGNMENT, PlannedTensor, plan_tensors, write_planned
from snapload.dtypes import to_torch
from snapload.errors import ConversionError, UnsafeCheckpointError, UnsupportedDtypeError

# safetensors dtype code -> (snapload dtype name, bytes per element).
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
    "I8": ("int8", 1),
    "I16": ("int16", 2),
    "I32": ("int32", 4),
    "I64": ("int64", 8),
    "U8": ("uint8", 1),
    "U16": ("uint16", 2),
    "U32": ("uint32", 4),
    "U64": ("uint64", 8),
    "BOOL": ("bool", 1),
    "C64": ("complex64", 8),
}
_ITEMSIZE = dict(SAFETENSORS_DTYPES.values())
# The safetensors library's own limit on header size; anything larger is hostile.
_MAX_SAFETENSORS_HEADER = 100_000_000
# Same limit as the snapshot format (MAX_RANK in rust/core/src/header.rs).
_MAX_RANK = 64
# Floating-point dtypes that `dtype=` casts; everything else (ints, bools, fp8) is copied as is.
_CASTABLE = frozenset({"float64", "float32", "float16", "bfloat16"})
_CAST_TARGETS = ("bfloat16", "float16")

# Hugging Face folder layouts, in the order transformers prefers them.
_HF_SAFETENSORS = "model.safetensors"
_HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
_HF_TORCH = "pytorch_model.bin"
_HF_TORCH_INDEX = "pytorch_model.bin.index.json"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Entry:
    """One tensor of the source, as found in its shard (before any cast)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    alias_of: str | None
    shard: int
    # Where the bytes are inside the shard: (begin, end) of a safetensors data section, or the
    # state-dict key of a torch checkpoint.
    locator: Any


# --------------------------------------------------------------------------------------------
# safetensors


class _SafetensorsShard:
    """A .safetensors file: header parsed with plain reads, data read through one mmap."""

    kind = "safetensors"

    def __init__(self, path: str) -> None:
        self.path = path
        self._data_start = 0
        self._file_size = 0

    def _bad(self, reason: str) -> ConversionError:
        return ConversionError(f"{self.path}: not a valid safetensors file: {reason}")

    def scan(self, shard: int) -> tuple[list[_Entry], dict[str, str]]:
        doc = self._read_header()
        meta = doc.pop("__metadata__", None)
        metadata: dict[str, str] = {}
        if meta is not None:
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise self._bad("__metadata__ must be an object of strings")
            metadata = {f"safetensors.{k}": v for k, v in meta.items()}
        data_size = self._file_size - self._data_start
        entries = [self._entry(name, info, data_size, shard) for name, info in doc.items()]
        # The file's own order is by offset; keep it so the source is read sequentially.
        entries.sort(key=lambda e: e.locator)
        return _alias_identical_regions(entries), metadata

    def _read_header(self) -> dict[str, Any]:
        with open(self.path, "rb") as f:
            self._file_size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise self._bad(f"file has {len(head)} bytes, fewer than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > self._file_size - 8:
                raise self._bad(f"header length {n} does not fit in the file ({self._file_size} bytes)")
            if n > _MAX_SAFETENSORS_HEADER:
                raise self._bad(f"header length {n} exceeds {_MAX_SAFETENSORS_HEADER} bytes")
            raw = f.read(n)
        if len(raw) != n:
            raise self._bad(f"file ended inside the {n}-byte header")
        self._data_start = 8 + n
        try:
            doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self._bad(f"header is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise self._bad(f"header is a JSON {type(doc).__name__}, not an object")
        return doc

    def _entry(self, name: str, info: Any, data_size: int, shard: int) -> _Entry:
        def bad(reason: str) -> ConversionError:
            return self._bad(f"tensor {name!r}: {reason}")

        if not _valid_name(name):
            raise bad("tensor names must be non-empty valid UTF-8")
        if not isinstance(info, dict):
            raise bad("entry is not an object")
        code = info.get("dtype")
        if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
            raise bad(f"unsupported dtype {code!r} (supported: {', '.join(SAFETENSORS_DTYPES)})")
        dtype, itemsize = SAFETENSORS_DTYPES[code]
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise bad(f"shape {shape!r} is not a list of non-negative integers")
        if len(shape) > _MAX_RANK:
            raise bad(f"rank {len(shape)} exceeds {_MAX_RANK}")
        # No order of multiplying the dims may overflow 64 bits (the format stores u64 lengths).
        if math.prod(d for d in shape if d) * itemsize >= 1 << 63:
            raise bad(f"shape {shape} is too large")
        offsets = info.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
            raise bad(f"data_offsets {offsets!r} is not a pair of non-negative integers")
        begin, end = offsets
        if not begin <= end <= data_size:
            raise bad(f"data_offsets [{begin}, {end}] lie outside the {data_size}-byte data section")
        needed = math.prod(shape) * itemsize
        if end - begin != needed:
            raise bad(f"data_offsets [{begin}, {end}] hold {end - begin} bytes but shape {shape} of {code} needs {needed}")
        return _Entry(name, dtype, tuple(shape), None, shard, (begin, end))

    def open(self) -> _OpenSafetensors:
        return _OpenSafetensors(self)


class _OpenSafetensors:
    """One safetensors file mapped copy-on-write (torch wants a writable buffer; nothing writes).

    ``write_planned`` writes each loaded tensor before it asks for the next, so when a tensor is
    requested the previous one's pages are done with: they are dropped from this mapping (they
    refault from the file if ever touched again), keeping the resident set to about one tensor
    however large the shard is.
    """

    def __init__(self, shard: _SafetensorsShard) -> None:
        self.shard = shard
        with open(shard.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != shard._file_size:
                raise ConversionError(f"{shard.path}: file changed size while being converted")
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        _madvise(self.map, getattr(mmap, "MADV_SEQUENTIAL", None), 0, size)
        self._done: tuple[int, int] | None = None  # file range of the tensor handed out last

    def bytes_of(self, e: _Entry) -> torch.Tensor:
        """The tensor's bytes as a flat uint8 view of the mapping (no copy; any alignment)."""
        if self._done is not None:
            _madvise(self.map, getattr(mmap, "MADV_DONTNEED", None), *self._done)
        begin, end = e.locator
        start = self.shard._data_start + begin
        self._done = (start, end - begin)
        if end == begin:
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(self.map, dtype=torch.uint8, count=end - begin, offset=start)

    def tensor(self, e: _Entry) -> torch.Tensor:
        """The tensor typed and shaped (a copy: source offsets need not be aligned to the dtype)."""
        out = torch.empty(e.shape, dtype=to_torch(e.dtype, path=self.shard.path, tensor=e.name))
        out.reshape(-1).view(torch.uint8).copy_(self.bytes_of(e))
        return out


def _madvise(m: mmap.mmap, advice: int | None, start: int, length: int) -> None:
    """Advice over the whole pages inside [start, start + length); a hint, so failures are ignored.
    Pages shared with a neighbour are left alone."""
    page = mmap.PAGESIZE
    first = -(-start // page) * page
    last = (start + length) // page * page
    if advice is None or last <= first:
        return
    try:
        m.madvise(advice, first, last - first)
    except (OSError, ValueError):
        pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _is_uint(x: object) -> bool:
    return type(x) is int and x >= 0


def _valid_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return bool(name)


def _alias_identical_regions(entries: list[_Entry]) -> list[_Entry]:
    """Entries naming exactly the same bytes, dtype and shape as an earlier one become aliases of
    it (safetensors writers do not produce these, but a tied pair written that way stays tied)."""
    owner: dict[tuple[Any, ...], str] = {}
    out = []
    for e in entries:
        begin, end = e.locator
        key = (begin, end, e.dtype, e.shape)
        target = owner.setdefault(key, e.name) if end > begin else e.name
        out.append(e if target == e.name else _Entry(e.name, e.dtype, e.shape, target, e.shard, e.locator))
    return out


# --------------------------------------------------------------------------------------------
# torch checkpoints


class _TorchShard:
    """A torch.save file, loaded with weights_only=True (memory-mapped when it is a zip file)."""

    kind = "torch"

    def __init__(self, path: str) -> None:
        self.path = path

    def _load(self) -> Any:
        with open(self.path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        try:
            # Legacy (pre-1.6, non-zip) files cannot be mapped and are read into memory.
            return torch.load(self.path, map_location="cpu", mmap=is_zip, weights_only=True)
        except Exception as e:
            if isinstance(e, OSError):
                raise
            # weights_only refusals are UnpicklingErrors (older torch: RuntimeErrors saying so).
            if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
                raise UnsafeCheckpointError(
                    f"{self.path}: refused to load: the checkpoint holds pickle data that torch.load("
                    f"weights_only=True) will not accept, and loading it otherwise could run arbitrary "
                    f"code ({_weights_only_reason(e)}). If you trust the file, re-save it as safetensors."
                ) from None
            # A corrupt file fails in many ways inside torch; all of them are ours to name.
            raise ConversionError(f"{self.path}: cannot read torch checkpoint: {type(e).__name__}: {e}") from None

    def _items(self, warn: bool) -> list[tuple[str, torch.Tensor]]:
        sd = _state_dict_of(self._load(), self.path)
        items, skipped = [], []
        for key, value in sd.items():
            name = str(key)
            if isinstance(value, torch.Tensor):
                items.append((name, value))
            else:
                skipped.append(f"{name} ({type(value).__name__})")
        if skipped and not items:
            raise ConversionError(f"{self.path}: no tensors found, only {', '.join(skipped[:10])}")
        if skipped and warn:
            shown = ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else "")
            warnings.warn(f"{self.path}: skipped {len(skipped)} non-tensor entries: {shown}", stacklevel=2)
        return items

    def scan(self, shard: int) -> tuple[list[_Entry], dict[str, str]]:
        items = self._items(warn=True)
        for name, t in items:
            if not _valid_name(name):
                raise ConversionError(f"{self.path}: tensor {name!r}: names must be non-empty valid UTF-8")
            if t.layout != torch.strided or t.is_quantized:
                raise ConversionError(f"{self.path}: tensor {name!r}: {t.layout} / {t.dtype} tensors are not supported")
        try:
            # The one place that decides what is a tied weight (same view of the same storage).
            planned = plan_tensors(items)
        except (UnsupportedDtypeError, ValueError, TypeError) as e:
            raise ConversionError(f"{self.path}: {e}") from None
        entries = [_Entry(p.name, p.dtype, p.shape, p.alias_of, shard, p.name) for p in planned]
        return entries, {}

    def open(self) -> _OpenTorch:
        return _OpenTorch(self.path, dict(self._items(warn=False)))


class _OpenTorch:
    def __init__(self, path: str, tensors: dict[str, torch.Tensor]) -> None:
        self.path = path
        self.tensors = tensors

    def tensor(self, e: _Entry) -> torch.Tensor:
        t = self.tensors.get(e.locator)
        if t is None or tuple(t.shape) != e.shape:
            raise ConversionError(f"{self.path}: tensor {e.name!r} changed while being converted")
        return t.detach()

    bytes_of = tensor  # write_planned takes the tensor itself; it makes it contiguous if needed


def _state_dict_of(obj: Any, path: str) -> Mapping[Any, Any]:
    """A plain state dict, or the one nested under "state_dict"/"model" (training checkpoints)."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            others = [str(k) for k in obj if k != key]
            if others:
                warnings.warn(f"{path}: converting the tensors under {key!r}; skipped {others[:10]}", stacklevel=2)
            return inner
    return obj


def _weights_only_reason(e: Exception) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or "not an allowed" in ln:
            return ln
    return lines[-1] if lines else type(e).__name__


# --------------------------------------------------------------------------------------------
# Sources: a file, or a Hugging Face folder


@dataclass
class _Source:
    shards: list[_SafetensorsShard | _TorchShard]
    metadata: dict[str, str]
    # HF index: tensor name -> shard file name, checked against what the shards hold.
    weight_map: dict[str, str] | None = None


def _file_shard(path: str) -> _SafetensorsShard | _TorchShard:
    if path.endswith(".safetensors"):
        return _SafetensorsShard(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # zip (torch >= 1.6) or a pickle
        return _TorchShard(path)
    if len(head) == 9 and head[8:9] == b"{":  # u64 length, then the JSON header
        return _SafetensorsShard(path)
    if path.endswith(_TORCH_SUFFIXES):  # let torch (weights_only) judge what it is
        return _TorchShard(path)
    raise ConversionError(f"{path}: not a safetensors file, a torch checkpoint or a model folder")


def _open_source(src: str) -> _Source:
    if not os.path.exists(src):
        raise FileNotFoundError(2, "no such file or directory", src)
    if not os.path.isdir(src):
        return _Source([_file_shard(src)], {})
    metadata = _hf_metadata(src)
    for index_name, single, cls in (
        (_HF_SAFETENSORS_INDEX, _HF_SAFETENSORS, _SafetensorsShard),
        (_HF_TORCH_INDEX, _HF_TORCH, _TorchShard),
    ):
        if os.path.isfile(os.path.join(src, index_name)):
            weight_map = _read_index(os.path.join(src, index_name))
            files = sorted(set(weight_map.values()))
            return _Source([cls(os.path.join(src, f)) for f in files], metadata, weight_map)
        if os.path.isfile(os.path.join(src, single)):
            return _Source([cls(os.path.join(src, single))], metadata)
    candidates = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    if len(candidates) == 1:
        return _Source([_SafetensorsShard(os.path.join(src, candidates[0]))], metadata)
    raise ConversionError(
        f"{src}: no weights found: expected {_HF_SAFETENSORS}, {_HF_SAFETENSORS_INDEX}, {_HF_TORCH} "
        f"or {_HF_TORCH_INDEX} (or a single *.safetensors file)"
    )


def _read_index(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConversionError(f"{path}: not valid JSON: {e}") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ConversionError(f"{path}: 'weight_map' must be an object mapping tensor names to file names")
    for name, file in weight_map.items():
        # Shards are files next to the index; a path elsewhere is refused, not followed.
        if not file or os.path.basename(file) != file or file in (".", ".."):
            raise ConversionError(f"{path}: tensor {name!r}: shard {file!r} is not a file name in the folder")
        if not os.path.isfile(os.path.join(os.path.dirname(path), file)):
            raise ConversionError(f"{path}: tensor {name!r}: shard file {file!r} does not exist")
    return weight_map


def _hf_metadata(folder: str) -> dict[str, str]:
    """config.json and generation_config.json, verbatim, so the model can be rebuilt from the
    snapshot alone."""
    out = {}
    for file, key in HF_FOLDER_FILES.items():
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ConversionError(f"{path}: not valid JSON: {e}") from None
        out[key] = text
    return out


def _scan(source: _Source) -> tuple[list[_Entry], dict[str, str]]:
    """The whole tensor table, shard by shard; names must be unique across shards."""
    entries: list[_Entry] = []
    metadata: dict[str, str] = {}
    where: dict[str, str] = {}
    for i, shard in enumerate(source.shards):
        found, meta = shard.scan(i)
        for k, v in meta.items():
            metadata.setdefault(k, v)
        for e in found:
            if e.name in where:
                raise ConversionError(f"tensor {e.name!r} appears in both {where[e.name]} and {shard.path}")
            where[e.name] = shard.path
            if source.weight_map is not None and e.name in source.weight_map:
                listed = source.weight_map[e.name]
                if listed != os.path.basename(shard.path):
                    raise ConversionError(f"{shard.path}: tensor {e.name!r} is listed in the index under {listed!r}")
        entries.extend(found)
    if source.weight_map is not None:
        missing = [n for n in source.weight_map if n not in where]
        if missing:
            raise ConversionError(
                f"{len(missing)} tensor(s) listed in the index are in no shard: {missing[:10]} "
                f"(expected in {source.weight_map[missing[0]]!r})"
            )
    metadata["snapload.source_format"] = source.shards[0].kind if source.shards else "none"
    return entries, metadata


# --------------------------------------------------------------------------------------------
# Writing


class _OneShardOpen:
    """Keeps exactly one shard open; opening the next releases the previous one's mapping."""

    def __init__(self, shards: list[_SafetensorsShard | _TorchShard]) -> None:
        self._shards = shards
        self._index = -1
        self._open: _OpenSafetensors | _OpenTorch | None = None

    def get(self, index: int) -> _OpenSafetensors | _OpenTorch:
        if index != self._index:
            self._open = None  # drop our reference first, so two mappings never pile up here
            self._open = self._shards[index].open()
            self._index = index
        assert self._open is not None
        return self._open

    def close(self) -> None:
        self._open = None
        self._index = -1


def _target_dtype(dtype: str | torch.dtype | None) -> str | None:
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in _CAST_TARGETS:
        raise ValueError(f"dtype must be one of {_CAST_TARGETS} or None, not {dtype!r}")
    return name


def _loader(shards: _OneShardOpen, e: _Entry, cast_to: str | None) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        handle = shards.get(e.shard)
        if cast_to is None:
            return handle.bytes_of(e)
        return handle.tensor(e).to(to_torch(cast_to))

    return load


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
    progress: Progress | None = None,
) -> SnapshotInfo:
    """Convert a checkpoint into a snapshot at ``dst`` and return the snapshot's table.

    ``src`` is a ``.safetensors`` file, a torch ``.pt``/``.bin`` file (loaded with
    ``weights_only=True``; anything that needs arbitrary pickle code raises
    ``UnsafeCheckpointError``), or a Hugging Face model folder (single or sharded safetensors or
    ``pytorch_model.bin``; ``config.json`` and ``generation_config.json`` are stored in the
    metadata as ``hf.config`` and ``hf.generation_config``). Tensor names are kept. Tied weights of
    torch files become aliases. ``dtype="bfloat16"``/``"float16"`` casts floating-point tensors
    (float64/32/16, bfloat16) on the fly and leaves the rest alone. ``progress(done, total)`` is
    called with bytes written so far. Memory use is bounded by one tensor (plus the mapping of the
    shard being read); an unreadable or hostile source raises ``ConversionError``.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    cast_to = _target_dtype(dtype)
    _native.check_destination(dst)  # before reading the source: a bad DST fails in milliseconds
    source = _open_source(src)
    entries, metadata = _scan(source)
    metadata.update(source.metadata)
    if cast_to is not None:
        metadata["snapload.cast"] = cast_to
    shards = _OneShardOpen(source.shards)
    planned = []
    for e in entries:
        out_dtype = cast_to if cast_to is not None and e.dtype in _CASTABLE else e.dtype
        load = None if e.alias_of is not None else _loader(shards, e, cast_to if out_dtype != e.dtype else None)
        planned.append(PlannedTensor(e.name, out_dtype, e.shape, e.alias_of, load=load))
    total = sum(_nbytes(p) for p in planned if p.alias_of is None)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    try:
        write_planned(dst, planned, metadata=metadata, alignment=alignment, progress=advance)
    finally:
        shards.close()
    return open_snapshot(dst)


def _nbytes(p: PlannedTensor) -> int:
    # Known without torch having the dtype (safetensors sources are copied as raw bytes).
    itemsize = _ITEMSIZE.get(p.dtype) or to_torch(p.dtype, tensor=p.name).itemsize
    return math.prod(p.shape) * itemsize
