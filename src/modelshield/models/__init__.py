"""Model adapters behind one :class:`Predictor` protocol (stable).

Every adapter loads **from bytes in memory**, so that a sealed model is never written to disk in
the clear. :func:`load_model` recognizes the format (skops, ONNX, torch.export/TorchScript) from
the bytes themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelshield.errors import UnsupportedModelError
from modelshield.models._base import (
    METADATA_KEY,
    BasePredictor,
    InputSpec,
    Label,
    Predictor,
    decode_metadata,
    encode_metadata,
    softmax,
    validate_inputs,
)
from modelshield.models._onnx import OnnxPredictor, is_onnx, load_onnx
from modelshield.models._sklearn import SklearnPredictor, dump_sklearn, is_skops, load_sklearn
from modelshield.models._torch import TorchPredictor, dump_torch, is_torch_archive, load_torch

__all__ = [
    "METADATA_KEY",
    "BasePredictor",
    "InputSpec",
    "Label",
    "OnnxPredictor",
    "Predictor",
    "SklearnPredictor",
    "TorchPredictor",
    "decode_metadata",
    "detect_format",
    "dump_sklearn",
    "dump_torch",
    "encode_metadata",
    "load_model",
    "load_onnx",
    "load_sklearn",
    "load_torch",
    "softmax",
    "validate_inputs",
]

FORMATS = ("skops", "onnx", "torch")


def detect_format(data: bytes) -> str:
    """Name the model format of ``data``: ``skops``, ``torch`` or ``onnx``.

    Raises :class:`UnsupportedModelError` when it is none of them (pickle files included: they are
    never loaded).
    """
    if is_skops(data):
        return "skops"
    if is_torch_archive(data):
        return "torch"
    if is_onnx(data):
        return "onnx"
    raise UnsupportedModelError("unrecognized model file (expected ONNX, skops or torch.export)")


def load_model(
    data: bytes,
    *,
    format: str | None = None,
    input_spec: InputSpec | None = None,
    classes: Sequence[Label] | None = None,
    trusted: Sequence[str] = (),
) -> Predictor:
    """Load a model from bytes with the adapter for its format (detected when not given).

    ``input_spec`` and ``classes`` override what the file records; ``trusted`` lists extra type
    names a skops file may contain (see :func:`load_sklearn`).
    """
    fmt = format or detect_format(data)
    if fmt == "skops":
        if classes is not None:
            raise UnsupportedModelError("a scikit-learn model defines its own classes")
        return load_sklearn(data, trusted=trusted, input_spec=input_spec)
    if fmt == "onnx":
        return load_onnx(data, input_spec=input_spec, classes=classes)
    if fmt == "torch":
        return load_torch(data, input_spec=input_spec, classes=classes)
    raise UnsupportedModelError(f"unknown model format {fmt!r}; expected one of {FORMATS}")
