"""The detector state encoding: exact round trips, and a clear error for anything malformed."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelshield.detect import DetectorError
from modelshield.detect._base import decode_state, encode_state

_DTYPES = st.sampled_from(["<f4", "<f8", "<f2", "<i8", "<i4", "|u1", "|b1", ">f8"])


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=8),
        _DTYPES.flatmap(
            lambda dt: hnp.arrays(
                np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
            )
        ),
        max_size=5,
    ),
    meta=st.dictionaries(st.text(max_size=5), st.integers() | st.booleans(), max_size=3),
)
def test_round_trip_is_exact(arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
    back, back_meta = decode_state("d", encode_state("d", arrays, meta))
    assert back_meta == meta
    assert set(back) == set(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype
        assert back[name].shape == array.shape
        assert back[name].tobytes() == array.tobytes()  # bit for bit, NaNs included
        assert back[name].flags.writeable


def test_restored_arrays_do_not_alias_the_input() -> None:
    data = bytearray(encode_state("d", {"x": np.arange(4, dtype=np.int64)}, None))
    arrays, _ = decode_state("d", bytes(data))
    arrays["x"][0] = 99
    assert decode_state("d", bytes(data))[0]["x"][0] == 0


def test_objects_are_refused_when_encoding() -> None:
    with pytest.raises(DetectorError, match="dtype object"):
        encode_state("d", {"x": np.array([{"a": 1}], dtype=object)}, None)


def _forge(header: dict[str, object], body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<4sI", b"MSDS", len(text)) + text + body


GOOD = {"detector": "d", "version": 2, "meta": None}


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "cannot read"),
        (b"MSD", "cannot read"),
        (b"PK\x03\x04" + b"\0" * 40, "cannot read"),  # an old .npz state
        (struct.pack("<4sI", b"MSDS", 1000) + b"{}", "cannot read"),  # header runs past the end
        (struct.pack("<4sI", b"MSDS", 2) + b"\xff\xfe", "cannot read"),
        (_forge({**GOOD, "detector": "other", "arrays": []}), "does not belong"),
        (_forge({**GOOD, "version": 1, "arrays": []}), "unsupported"),
        (_forge({**GOOD}), "cannot read"),  # no array table
        (_forge({**GOOD, "arrays": [["x", "|O", [1], 0, 8]]}, b"\0" * 8), "bad array"),
        (_forge({**GOOD, "arrays": [["x", "<f4", [4], 0, 16]]}, b"\0" * 8), "bad array"),
        (_forge({**GOOD, "arrays": [["x", "<f4", [4], 0, 12]]}, b"\0" * 16), "bad array"),
        (_forge({**GOOD, "arrays": [["x", "<f4", [-1], 0, 4]]}, b"\0" * 16), "bad array"),
        (_forge({**GOOD, "arrays": [["x", "<f4", [1], -4, 4]]}, b"\0" * 16), "bad array"),
        (_forge({**GOOD, "arrays": [["x", "nonsense", [1], 0, 4]]}, b"\0" * 16), "cannot read"),
        (_forge({**GOOD, "arrays": [["x", "<f4"]]}, b"\0" * 16), "cannot read"),
    ],
)
def test_malformed_states_are_refused(blob: bytes, message: str) -> None:
    with pytest.raises(DetectorError, match=message):
        decode_state("d", blob)


@pytest.mark.parametrize(
    "blob",
    [
        _forge({**GOOD, "meta": None, "arrays": []}).replace(
            b'"arrays": []', b'"arrays": ' + b"[" * 100_000
        ),
        _forge({**GOOD, "arrays": [["x", "(1,", [1], 0, 4]]}, b"\0" * 16),  # numpy parses it
        _forge({**GOOD, "arrays": [["x", "<f4", [1e400], 0, 4]]}, b"\0" * 16),
    ],
)
def test_pathological_headers_are_refused_cleanly(blob: bytes) -> None:
    with pytest.raises(DetectorError):
        decode_state("d", blob)


def test_overlapping_arrays_cannot_multiply_a_small_blob() -> None:
    # 200 entries pointing at the same 64 KiB would otherwise decode to 12.5 MiB
    entries = [[f"a{i}", "|u1", [65536], 0, 65536] for i in range(200)]
    with pytest.raises(DetectorError, match="bad array"):
        decode_state("d", _forge({**GOOD, "arrays": entries}, b"\0" * 65536))
    too_many = [[f"a{i}", "|u1", [0], 0, 0] for i in range(5000)]
    with pytest.raises(DetectorError, match="bad array table"):
        decode_state("d", _forge({**GOOD, "arrays": too_many}))


def test_a_state_naming_more_classes_than_the_detector_has_is_refused(
    reference: tuple[np.ndarray, np.ndarray],
) -> None:
    from modelshield.detect import PradaDetector

    prada = PradaDetector().fit(*reference)
    arrays, meta = decode_state("prada", prada.state_dict("c"))
    meta["sets"] = {str(k): [0, 0, 0, 0.0, 0.0, 0.0] for k in range(prada.n_classes_ + 1)}
    for k in range(prada.n_classes_ + 1):
        arrays[f"rows_{k}"] = np.zeros((0, prada.dim_), np.float32)
    with pytest.raises(DetectorError):
        prada.load_state_dict("c", encode_state("prada", arrays, meta))
