"""ONNX Runtime adapter: a model loaded from bytes into an in-memory inference session."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from modelshield.errors import UnsupportedModelError
from modelshield.models._base import (
    METADATA_KEY,
    BasePredictor,
    FloatArray,
    InputSpec,
    Label,
    decode_metadata,
    looks_like_probabilities,
    softmax,
)

_log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64"}

ScoreKind = Literal["auto", "probabilities", "logits"]


class OnnxPredictor(BasePredictor):
    """An ONNX classifier run by ONNX Runtime on the CPU.

    The score output is the one named ``output_name``, else one called ``probabilities`` or
    ``output_probability``, else the last float output of shape ``(n, K)``. ``scores`` says whether
    it holds probabilities or logits; ``auto`` applies a softmax only when the rows are not already
    probability vectors.
    """

    def __init__(
        self,
        session: Any,
        *,
        input_spec: InputSpec | None = None,
        classes: Sequence[Label] | None = None,
        output_name: str | None = None,
        scores: ScoreKind = "auto",
    ) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        stored_spec: InputSpec | None = None
        stored_classes: tuple[Label, ...] | None = None
        if METADATA_KEY in meta:
            stored_spec, stored_classes = decode_metadata(meta[METADATA_KEY])
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise UnsupportedModelError(
                f"ONNX model must have exactly one input, has {len(inputs)}"
            )
        model_input = inputs[0]
        dtype = _ORT_DTYPES.get(model_input.type)
        if dtype is None:
            raise UnsupportedModelError(f"unsupported ONNX input type {model_input.type}")
        if input_spec is None:
            input_spec = stored_spec
        if input_spec is None:
            dims = model_input.shape[1:]
            if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
                raise UnsupportedModelError(
                    "ONNX input has symbolic row dimensions; pass input_spec"
                )
            input_spec = InputSpec(shape=tuple(int(d) for d in dims), dtype=dtype)
        self._output = self._choose_output(session, output_name)
        n_classes = self._output_width(session)
        if classes is None:
            classes = stored_classes if stored_classes is not None else tuple(range(n_classes))
        super().__init__(input_spec=input_spec, classes=classes)
        self._session = session
        self._input_name = model_input.name
        self._input_dtype = dtype
        # skl2onnx and most exporters name a softmax output like this: no need to check each call
        if scores == "auto" and self._output in ("probabilities", "output_probability"):
            scores = "probabilities"
        self._score_kind = scores

    @staticmethod
    def _choose_output(session: Any, output_name: str | None) -> str:
        outputs = session.get_outputs()
        names = [o.name for o in outputs]
        if output_name is not None:
            if output_name not in names:
                raise UnsupportedModelError(f"ONNX model has no output named {output_name!r}")
            return output_name
        for preferred in ("probabilities", "output_probability"):
            if preferred in names:
                return preferred
        floats = [o for o in outputs if o.type in _ORT_DTYPES and len(o.shape) == 2]
        if not floats:
            raise UnsupportedModelError("ONNX model has no 2-D float output to read scores from")
        return str(floats[-1].name)

    def _output_width(self, session: Any) -> int:
        out = next(o for o in session.get_outputs() if o.name == self._output)
        width = out.shape[-1] if out.shape else None
        if not isinstance(width, int):
            raise UnsupportedModelError(
                f"ONNX output {self._output!r} has no fixed class dimension; pass classes"
            )
        return width

    @property
    def session(self) -> Any:
        """The ONNX Runtime inference session."""
        return self._session

    def _scores(self, batch: FloatArray) -> FloatArray:
        feed = batch.reshape((batch.shape[0], *self.input_spec.shape)).astype(
            self._input_dtype, copy=False
        )
        (raw,) = self._session.run([self._output], {self._input_name: feed})
        scores: FloatArray = np.asarray(raw, dtype=np.float64)
        if self._score_kind == "logits" or (
            self._score_kind == "auto" and not looks_like_probabilities(scores)
        ):
            scores = softmax(scores)
        return scores


def is_onnx(data: bytes) -> bool:
    """A cheap check that ``data`` parses as an ONNX ModelProto with a graph."""
    import onnx

    if data.startswith(b"PK") or len(data) < 8:
        return False
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # protobuf raises DecodeError and others on garbage
        return False
    return len(model.graph.node) > 0


def load_onnx(
    data: bytes,
    *,
    input_spec: InputSpec | None = None,
    classes: Sequence[Label] | None = None,
    output_name: str | None = None,
    scores: ScoreKind = "auto",
    intra_op_threads: int = 1,
) -> OnnxPredictor:
    """Create an in-memory ONNX Runtime session from model bytes (no file is written)."""
    import onnxruntime as ort

    # no usage telemetry from a security tool (on Windows ONNX Runtime would otherwise send it)
    ort.disable_telemetry_events()
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        _log.debug("onnxruntime refused the model: %r", exc)
        raise UnsupportedModelError("not a loadable ONNX model") from None
    return OnnxPredictor(
        session, input_spec=input_spec, classes=classes, output_name=output_name, scores=scores
    )
