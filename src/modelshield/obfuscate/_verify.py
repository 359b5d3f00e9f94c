"""The proof of equivalence: a candidate model's outputs against the original's, on fixed inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from modelshield.errors import InvalidInputError, UnsupportedModelError
from modelshield.obfuscate._graph import graph_inputs, input_dims, input_dtype, serialize

_log = logging.getLogger(__name__)

Array = npt.NDArray[Any]


class EquivalenceError(UnsupportedModelError):
    """A transformed model does not compute the same function as the original.

    Raised when, on the verification inputs, some output differs by more than the tolerance or a
    top-1 prediction changes. ``step`` names the transform and ``max_abs_diff`` is the measured
    difference. Nothing is written when this is raised.
    """

    def __init__(self, step: str, max_abs_diff: float, top1_equal: bool, tolerance: float) -> None:
        detail = f"max abs diff {max_abs_diff:.3g} (tolerance {tolerance:.3g})"
        if not top1_equal:
            detail += ", top-1 predictions changed"
        super().__init__(f"equivalence check failed after {step!r}: {detail}; nothing written")
        self.step = step
        self.max_abs_diff = max_abs_diff
        self.top1_equal = top1_equal


@dataclass(frozen=True)
class Comparison:
    """Outputs of a candidate against the reference: largest absolute difference and top-1."""

    max_abs_diff: float
    top1_equal: bool


def session(model: onnx.ModelProto) -> Any:
    """An in-memory ONNX Runtime session on one thread (no file written)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            serialize(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        _log.debug("onnxruntime refused the model: %r", exc)
        raise UnsupportedModelError(
            f"ONNX Runtime cannot load the model: {type(exc).__name__}"
        ) from None


def verification_inputs(
    model: onnx.ModelProto,
    *,
    inputs: npt.ArrayLike | None,
    n_random: int,
    rng: np.random.Generator,
) -> Array:
    """Random rows (inside the declared value range, if any) plus the caller's real rows."""
    from modelshield.models._base import METADATA_KEY, decode_metadata

    dtype = input_dtype(model)
    dims = input_dims(model)
    meta = {p.key: p.value for p in model.metadata_props}
    lo: float | None = None
    hi: float | None = None
    row_shape: tuple[int, ...] | None = None
    if METADATA_KEY in meta:
        spec, _ = decode_metadata(meta[METADATA_KEY])
        lo, hi, row_shape = spec.min_value, spec.max_value, spec.shape
    real: Array | None = None
    if inputs is not None:
        real = np.asarray(inputs, dtype=dtype)
        if real.ndim < 2 or real.shape[0] == 0 or not np.isfinite(real).all():
            raise InvalidInputError("verification inputs must be a finite, non-empty batch")
        row_shape = tuple(int(d) for d in real.shape[1:])
    if row_shape is None:
        if any(d is None for d in dims[1:]):
            raise InvalidInputError(
                "the model input has symbolic dimensions: pass real verification inputs"
            )
        row_shape = tuple(int(d) for d in dims[1:] if d is not None)
    if len(row_shape) != len(dims) - 1 or any(
        d is not None and d != r for d, r in zip(dims[1:], row_shape, strict=False)
    ):
        raise InvalidInputError(
            f"verification rows of shape {row_shape} do not fit the model input {dims}"
        )
    shape = (n_random, *row_shape)
    if lo is not None and hi is not None:
        random = rng.uniform(lo, hi, size=shape)
    else:
        random = rng.normal(0.0, 1.0, size=shape)
        if lo is not None:
            random = lo + np.abs(random)
        if hi is not None:
            random = hi - np.abs(random)
    rows = random.astype(dtype)
    if real is not None:
        rows = np.concatenate([rows, real.astype(dtype)], axis=0)
    return np.ascontiguousarray(rows)


def run(model: onnx.ModelProto, rows: Array) -> list[Array]:
    """Every graph output of ``model`` on ``rows``."""
    sess = session(model)
    name = graph_inputs(model)[0].name
    return [np.asarray(o) for o in sess.run(None, {name: rows})]


def run_extra_outputs(model: onnx.ModelProto, rows: Array, names: list[str]) -> dict[str, Array]:
    """The values of the intermediate tensors ``names`` when ``model`` runs on ``rows``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = session(probe)
    values = sess.run(names, {graph_inputs(model)[0].name: rows})
    return {name: np.asarray(v) for name, v in zip(names, values, strict=True)}


def compare(reference: list[Array], candidate: list[Array]) -> Comparison:
    """Largest absolute difference over float outputs; exact match of the others; top-1 agreement.

    Top-1 is compared on every two-dimensional float output (class scores or logits).
    """
    if len(reference) != len(candidate):
        return Comparison(float("inf"), False)
    worst = 0.0
    top1 = True
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.shape != cand.shape:
            return Comparison(float("inf"), False)
        if np.issubdtype(ref.dtype, np.floating):
            if not np.isfinite(cand).all():
                return Comparison(float("inf"), False)
            diff = float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64))))
            worst = max(worst, diff)
            if ref.ndim == 2 and ref.shape[1] > 1:
                top1 = top1 and bool(np.array_equal(ref.argmax(axis=1), cand.argmax(axis=1)))
        elif not np.array_equal(ref, cand):
            top1 = False  # labels or other exact outputs changed
    return Comparison(worst, top1)


class Verifier:
    """Holds the original model's outputs on fixed rows and checks candidates against them."""

    def __init__(self, reference: onnx.ModelProto, rows: Array, tolerance: float) -> None:
        self.rows = rows
        self.tolerance = tolerance
        self.reference = run(reference, rows)

    def measure(self, candidate: onnx.ModelProto) -> Comparison:
        return compare(self.reference, run(candidate, self.rows))

    def check(self, candidate: onnx.ModelProto, step: str) -> Comparison:
        """Raise :class:`EquivalenceError` unless ``candidate`` matches the reference."""
        result = self.measure(candidate)
        if not (result.max_abs_diff <= self.tolerance and result.top1_equal):
            raise EquivalenceError(step, result.max_abs_diff, result.top1_equal, self.tolerance)
        return result
