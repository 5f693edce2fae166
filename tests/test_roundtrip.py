"""Round trips: whatever goes into ``snapshot()`` comes out of ``restore()`` bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import snapload
from _helpers import assert_state_equal, bitwise_equal, tensor_bytes
from snapload.dtypes import TORCH_BY_NAME

# complex32 works for everything snapload does (bytes in, bytes out), but torch warns on creation.
pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")

DTYPE_NAMES = sorted(TORCH_BY_NAME)
LAYOUTS = ["contiguous", "transposed", "stepped", "offset"]


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], layout: str, seed: int) -> torch.Tensor:
    """Random bytes of ``dtype`` in ``shape``, laid out as asked. Random *bytes* rather than
    random values, so NaN payloads, negative zeros and every float8 bit pattern get exercised.
    Bools stay 0/1: other byte values are not valid bools."""
    if layout == "transposed" and len(shape) < 2:
        layout = "contiguous"
    if layout == "stepped" and len(shape) < 1:
        layout = "contiguous"
    if layout == "transposed":
        storage_shape = (shape[1], shape[0], *shape[2:])
    elif layout == "stepped":
        storage_shape = (2 * shape[0] + 1, *shape[1:])
    elif layout == "offset":
        storage_shape = (int(np.prod(shape, dtype=np.int64)) + 3,)
    else:
        storage_shape = shape
    itemsize = dtype.itemsize
    numel = int(np.prod(storage_shape, dtype=np.int64))
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (numel * itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw &= 1
    base = raw.view(dtype).reshape(storage_shape)
    if layout == "transposed":
        return base.transpose(0, 1)
    if layout == "stepped":
        return base[1::2]
    if layout == "offset":  # contiguous, but not at the start of its storage
        return base[3:].reshape(shape)
    return base


@st.composite
def state_dicts(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    names = draw(st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=6, unique=True))
    state: dict[str, torch.Tensor] = {}
    for name in names:
        if state and draw(st.integers(0, 5)) == 0:  # tie to an earlier tensor
            state[name] = state[draw(st.sampled_from(sorted(state)))]
            continue
        dtype = TORCH_BY_NAME[draw(st.sampled_from(DTYPE_NAMES))]
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
        layout = draw(st.sampled_from(LAYOUTS))
        state[name] = make_tensor(dtype, shape, layout, draw(st.integers(0, 2**32 - 1)))
    metadata = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3))
    return state, metadata


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=state_dicts())
def test_random_state_dicts_round_trip(tmp_path: Path, case: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
    state, metadata = case
    path = tmp_path / "rt.snap"
    snapload.snapshot(state, path, metadata=metadata)
    restored = snapload.restore(path, verify=True)
    assert_state_equal(restored, state)
    info = snapload.open(path)
    assert info.metadata == metadata
    assert [t.dtype for t in info.tensors] == [snapload.dtypes.NAME_BY_TORCH[t.dtype] for t in state.values()]
    # Exactly the tensors that were the same object come back as the same object.
    for a in state:
        for b in state:
            if a < b and state[a].numel() > 0:
                assert (restored[a] is restored[b]) == (state[a] is state[b]), (a, b)


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_every_dtype_round_trips(snap_path: Path, name: str) -> None:
    """Each dtype explicitly (hypothesis may not draw every one), in every layout and rank."""
    dtype = TORCH_BY_NAME[name]
    state = {
        "scalar": make_tensor(dtype, (), "contiguous", 1),
        "empty": make_tensor(dtype, (0, 3), "contiguous", 2),
        "vector": make_tensor(dtype, (7,), "stepped", 3),
        "matrix": make_tensor(dtype, (5, 3), "transposed", 4),
        "cube": make_tensor(dtype, (2, 3, 4), "offset", 5),
    }
    snapload.snapshot(state, snap_path)
    assert_state_equal(snapload.restore(snap_path, verify=True), state)


def test_non_contiguous_inputs_are_written_contiguous(snap_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = {"t": base.t(), "step": base[:, ::3], "col": base[:, 4]}
    snapload.snapshot(state, snap_path)
    restored = snapload.restore(snap_path)
    for name, t in state.items():
        assert restored[name].is_contiguous()
        assert torch.equal(restored[name], t)
    info = {t.name: t for t in snapload.open(snap_path).tensors}
    # Written densely: the recorded length is exactly numel * itemsize, not the strided span.
    assert info["step"].length == state["step"].numel() * 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64, torch.complex64])
def test_strided_empty_and_single_element_tensors(snap_path: Path, dtype: torch.dtype) -> None:
    """Regression: torch calls an empty or one-element tensor contiguous even with stride 2, so
    ``.contiguous()`` is a no-op and viewing it as bytes failed in the writer."""
    base = torch.arange(3).to(dtype)
    state = {"one": base[1::2], "none": base[1:1:2], "one_2d": base.reshape(3, 1)[1::2].t()}
    assert state["one"].stride() == (2,) and state["one"].is_contiguous()
    snapload.snapshot(state, snap_path)
    assert_state_equal(snapload.restore(snap_path, verify=True), state)


def test_partial_overlap_is_not_an_alias(snap_path: Path) -> None:
    """Views sharing storage but not identical (a row of a matrix) are stored separately."""
    m = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    snapload.snapshot({"m": m, "row": m[1], "m_again": m}, snap_path)
    info = {t.name: t for t in snapload.open(snap_path).tensors}
    assert info["row"].alias_of is None
    assert info["m_again"].alias_of == "m"
    restored = snapload.restore(snap_path)
    assert restored["m_again"] is restored["m"]
    assert restored["row"] is not restored["m"]
    assert torch.equal(restored["row"], m[1])


def test_tied_weights_restore_as_one_object(snap_path: Path, sample_state: dict[str, torch.Tensor]) -> None:
    snapload.snapshot(sample_state, snap_path)
    restored = snapload.restore(snap_path)
    assert restored["lm_head.weight"] is restored["embed.weight"]
    info = {t.name: t for t in snapload.open(snap_path).tensors}
    assert info["lm_head.weight"].alias_of == "embed.weight"
    assert info["lm_head.weight"].offset == info["embed.weight"].offset
    # Stored once: the data holds the embedding's bytes a single time.
    assert snapload.open(snap_path).data_bytes == sum(
        t.numel() * t.element_size() for n, t in sample_state.items() if n != "lm_head.weight"
    )


class TinyLM(nn.Module):
    """An embedding, a layer, and an output head tied to the embedding, plus buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 8)
        self.layer = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 32, bias=False)
        self.lm_head.weight = self.embed.weight
        self.register_buffer("step", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("scratch", torch.ones(3), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.layer(self.embed(ids))))


def test_snapshot_of_module(snap_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    snapload.snapshot(model, snap_path, metadata={"arch": "TinyLM"})
    restored = snapload.restore(snap_path)
    state = model.state_dict()
    assert "scratch" not in restored, "non-persistent buffers are not part of a snapshot"
    assert_state_equal(restored, state)
    assert restored["lm_head.weight"] is restored["embed.weight"]
    assert snapload.open(snap_path).metadata == {"arch": "TinyLM"}


def test_module_restored_into_module_keeps_tie(snap_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    snapload.snapshot(model, snap_path)
    with snapload.init_empty_weights():
        fresh = TinyLM()
    snapload.restore_module(fresh, snap_path)
    assert fresh.lm_head.weight is fresh.embed.weight
    ids = torch.tensor([[1, 5, 31]])
    assert torch.equal(fresh(ids), model(ids))


def test_alignment_2mib(snap_path: Path, sample_state: dict[str, torch.Tensor]) -> None:
    alignment = 2 << 20
    snapload.snapshot(sample_state, snap_path, alignment=alignment)
    info = snapload.open(snap_path)
    assert info.alignment == alignment
    assert info.data_start % alignment == 0
    for t in info.tensors:
        assert t.offset % alignment == 0, (t.name, t.offset)
    assert snap_path.stat().st_size == info.file_size
    assert_state_equal(snapload.restore(snap_path, verify=True), sample_state)


@pytest.mark.parametrize("alignment", [0, 1000, 2048, 4097])
def test_bad_alignment_is_refused(snap_path: Path, sample_state: dict[str, torch.Tensor], alignment: int) -> None:
    with pytest.raises(ValueError, match="alignment"):
        snapload.snapshot(sample_state, snap_path, alignment=alignment)
    assert not snap_path.exists()


def test_metadata_round_trip(snap_path: Path) -> None:
    metadata = {"": "empty key", "unicode ☃": "välue\n\x00with nul", "json": '{"a": [1, 2]}'}
    snapload.snapshot({"x": torch.ones(2)}, snap_path, metadata=metadata)
    assert snapload.open(snap_path).metadata == metadata


def test_metadata_must_be_strings(snap_path: Path) -> None:
    with pytest.raises(TypeError, match="metadata"):
        snapload.snapshot({"x": torch.ones(2)}, snap_path, metadata={"n": 1})  # type: ignore[dict-item]


def test_empty_state_dict(snap_path: Path) -> None:
    snapload.snapshot({}, snap_path)
    assert snapload.restore(snap_path, verify=True) == {}
    assert snapload.open(snap_path).tensors == []


def test_nan_payloads_survive(snap_path: Path) -> None:
    """Distinct NaN bit patterns compare equal as values; the bytes must still be identical."""
    bits = np.array([0x7FC00001, 0xFFC00002, 0x7F800001, 0x80000000], dtype=np.uint32)
    t = torch.from_numpy(bits.view(np.float32))
    snapload.snapshot({"nan": t}, snap_path)
    got = snapload.restore(snap_path)["nan"]
    assert torch.equal(tensor_bytes(got), tensor_bytes(t))
    assert bitwise_equal(got, t)
