"""The Predictor protocol, the input specification and input validation shared by every adapter."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from modelshield.errors import InvalidInputError, UnsupportedModelError

Label = int | str
FloatArray = npt.NDArray[np.floating[Any]]

_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class InputSpec:
    """What one input row must look like.

    ``shape`` is the shape of one row (``(64,)`` for 8x8 digits, ``(1, 28, 28)`` for an image);
    a batch has shape ``(n, *shape)``. ``min_value`` and ``max_value`` bound every element when
    set; ``None`` means unbounded on that side. ``dtype`` is the dtype the model computes in: inputs
    of another real dtype are converted, anything else is refused.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    min_value: float | None = None
    max_value: float | None = None

    def __post_init__(self) -> None:
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise ValueError(f"input shape must be non-empty and positive, got {self.shape}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"input dtype must be one of {_DTYPES}, got {self.dtype!r}")
        lo, hi = self.min_value, self.max_value
        if lo is not None and hi is not None and not lo <= hi:
            raise ValueError(f"min_value {lo} is above max_value {hi}")

    @property
    def n_features(self) -> int:
        """Number of scalar values in one row."""
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (used in model metadata and the OpenAPI document)."""
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "min_value": self.min_value,
            "max_value": self.max_value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """Inverse of :meth:`to_dict`; raises :class:`UnsupportedModelError` on a bad record."""
        try:
            lo, hi = data.get("min_value"), data.get("max_value")
            return cls(
                shape=tuple(int(d) for d in data["shape"]),
                dtype=str(data.get("dtype", "float32")),
                min_value=None if lo is None else float(lo),
                max_value=None if hi is None else float(hi),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedModelError(f"invalid input specification: {exc}") from None


@runtime_checkable
class Predictor(Protocol):
    """A classifier over numpy arrays, whatever framework runs it.

    ``predict_proba`` takes a batch of shape ``(n, *input_spec.shape)`` and returns an ``(n, K)``
    float array whose rows are probability vectors over ``classes``; ``predict`` returns the
    ``n`` top-1 labels. Both validate their input and raise :class:`InvalidInputError` on a bad one.
    """

    @property
    def input_spec(self) -> InputSpec: ...

    @property
    def classes(self) -> tuple[Label, ...]: ...

    def predict_proba(self, inputs: npt.ArrayLike) -> FloatArray: ...

    def predict(self, inputs: npt.ArrayLike) -> npt.NDArray[Any]: ...


def validate_inputs(
    inputs: npt.ArrayLike, spec: InputSpec, *, max_rows: int | None = None
) -> FloatArray:
    """Check ``inputs`` against ``spec`` and return them as a C-contiguous batch in ``spec.dtype``.

    A single row (shape ``spec.shape``) is promoted to a batch of one. Raises
    :class:`InvalidInputError` naming the problem: not numeric, wrong shape, empty batch, too many
    rows, NaN or infinity, or a value outside the declared range.
    """
    try:
        arr = np.asarray(inputs)
    except (ValueError, TypeError):  # ragged rows, say: numpy's own words are no help to a caller
        raise InvalidInputError(
            "inputs are not a numeric array (rows of different lengths or non-numbers?)"
        ) from None
    if arr.dtype.kind not in "fiu" and not (arr.dtype.kind == "b" and spec.dtype == "bool"):
        # real floats, signed and unsigned integers; booleans only for a model that takes them
        raise InvalidInputError(f"inputs must be real numbers, got dtype {arr.dtype}")
    if arr.shape == spec.shape:
        arr = arr.reshape((1, *spec.shape))
    if arr.ndim != len(spec.shape) + 1 or tuple(arr.shape[1:]) != spec.shape:
        expected = ", ".join(str(d) for d in spec.shape)
        raise InvalidInputError(f"inputs must have shape (n, {expected}), got {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInputError("inputs must contain at least one row")
    if max_rows is not None and arr.shape[0] > max_rows:
        raise InvalidInputError(f"too many rows: {arr.shape[0]} > limit {max_rows}")
    out = np.ascontiguousarray(arr, dtype=spec.dtype)
    # min and max propagate NaN and reach any infinity, so two reductions check finiteness too
    lo, hi = float(out.min()), float(out.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidInputError("inputs contain NaN or infinite values")
    if spec.min_value is not None and lo < spec.min_value:
        raise InvalidInputError(f"inputs below the allowed minimum {spec.min_value}")
    if spec.max_value is not None and hi > spec.max_value:
        raise InvalidInputError(f"inputs above the allowed maximum {spec.max_value}")
    return out


def softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: FloatArray = exp / exp.sum(axis=1, keepdims=True)
    return result


def looks_like_probabilities(scores: FloatArray, atol: float = 1e-3) -> bool:
    """True when every row is non-negative and sums to one (within ``atol``)."""
    sums = scores.sum(axis=1)
    return bool(
        float(scores.min()) >= -atol
        and float(sums.min()) >= 1.0 - atol
        and float(sums.max()) <= 1.0 + atol
    )


class BasePredictor:
    """Shared behaviour of the adapters: validation, ``predict`` from ``predict_proba``."""

    def __init__(self, *, input_spec: InputSpec, classes: Sequence[Label]) -> None:
        if len(classes) < 2:
            raise UnsupportedModelError("a classifier needs at least two classes")
        self._input_spec = input_spec
        self._classes: tuple[Label, ...] = tuple(classes)
        self._class_array = np.asarray(self._classes)

    @property
    def input_spec(self) -> InputSpec:
        return self._input_spec

    @property
    def classes(self) -> tuple[Label, ...]:
        return self._classes

    def predict_proba(self, inputs: npt.ArrayLike) -> FloatArray:
        return self.predict_proba_validated(validate_inputs(inputs, self._input_spec))

    def predict_proba_validated(self, batch: FloatArray) -> FloatArray:
        """:meth:`predict_proba` for a batch that :func:`validate_inputs` already returned."""
        scores = self._scores(batch)
        if scores.ndim != 2 or scores.shape != (batch.shape[0], len(self._classes)):
            raise UnsupportedModelError(
                f"model returned scores of shape {scores.shape}, expected "
                f"({batch.shape[0]}, {len(self._classes)})"
            )
        return scores

    def predict(self, inputs: npt.ArrayLike) -> npt.NDArray[Any]:
        proba = self.predict_proba(inputs)
        labels: npt.NDArray[Any] = self._class_array[np.argmax(proba, axis=1)]
        return labels

    def _scores(self, batch: FloatArray) -> FloatArray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self._input_spec.shape}, classes={len(self._classes)})"
        )


def normalize_classes(raw: Sequence[Any]) -> tuple[Label, ...]:
    """Turn numpy scalars into plain ``int`` or ``str`` labels (JSON-friendly)."""
    out: list[Label] = []
    for value in raw:
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | str):
            value = str(value)
        out.append(value)
    return tuple(out)


METADATA_KEY = "modelshield"


def encode_metadata(spec: InputSpec, classes: Sequence[Label]) -> str:
    """The JSON string stored inside model files to describe their inputs and labels."""
    return json.dumps({"input_spec": spec.to_dict(), "classes": list(classes)}, sort_keys=True)


def decode_metadata(text: str | bytes) -> tuple[InputSpec, tuple[Label, ...]]:
    """Inverse of :func:`encode_metadata`; raises :class:`UnsupportedModelError` when malformed."""
    try:
        data = json.loads(text)
        spec = InputSpec.from_dict(data["input_spec"])
        classes = normalize_classes(data["classes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UnsupportedModelError(f"invalid modelshield metadata in model file: {exc}") from None
    return spec, classes
