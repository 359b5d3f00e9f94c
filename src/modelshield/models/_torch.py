"""PyTorch adapter (optional extra ``torch``): ``torch.export`` programs loaded from bytes.

``torch.export`` archives (``.pt2``) are the primary format: they hold a graph and tensors, not
pickled Python. TorchScript archives also load, for older models; TorchScript is deprecated in
PyTorch 2.13, so its deprecation warning is silenced for that one call only.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
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
    encode_metadata,
    looks_like_probabilities,
    softmax,
)

_log = logging.getLogger(__name__)

_METADATA_ENTRY = f"{METADATA_KEY}.json"

ScoreKind = Literal["auto", "probabilities", "logits"]


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UnsupportedModelError(
            "PyTorch models need the optional extra: pip install 'modelshield[torch]'"
        ) from None
    return torch


class TorchPredictor(BasePredictor):
    """A PyTorch module (or an exported program's module) run on the CPU without gradients."""

    def __init__(
        self,
        module: Any,
        *,
        input_spec: InputSpec,
        classes: Sequence[Label],
        scores: ScoreKind = "auto",
    ) -> None:
        super().__init__(input_spec=input_spec, classes=classes)
        self._module = module
        self._score_kind = scores
        self._torch = _import_torch()

    @property
    def module(self) -> Any:
        """The callable torch module."""
        return self._module

    def _scores(self, batch: FloatArray) -> FloatArray:
        torch = self._torch
        with torch.no_grad():
            out = self._module(torch.from_numpy(np.ascontiguousarray(batch)))
        if isinstance(out, tuple | list):
            out = out[0]
        scores: FloatArray = out.detach().cpu().numpy().astype(np.float64)
        if scores.ndim == 2 and (
            self._score_kind == "logits"
            or (self._score_kind == "auto" and not looks_like_probabilities(scores))
        ):
            scores = softmax(scores)
        return scores


def dump_torch(module: Any, *, input_spec: InputSpec, classes: Sequence[Label]) -> bytes:
    """Export ``module`` with ``torch.export`` (dynamic batch size) and return the archive bytes."""
    torch = _import_torch()
    module = module.eval()
    example = torch.zeros((2, *input_spec.shape), dtype=getattr(torch, input_spec.dtype))
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(
        program, buf, extra_files={_METADATA_ENTRY: encode_metadata(input_spec, classes)}
    )
    return buf.getvalue()


def is_torch_archive(data: bytes) -> bool:
    """True for a zip archive laid out as a torch.export or TorchScript file."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith(("models/model.json", "/data.pkl", "/constants.pkl")) for n in names)


def load_torch(
    data: bytes,
    *,
    input_spec: InputSpec | None = None,
    classes: Sequence[Label] | None = None,
    scores: ScoreKind = "auto",
) -> TorchPredictor:
    """Load a ``torch.export`` (or TorchScript) archive from bytes in memory."""
    torch = _import_torch()
    if not is_torch_archive(data):
        raise UnsupportedModelError("not a torch.export or TorchScript archive")
    extra = {_METADATA_ENTRY: ""}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        exported = any(n.endswith("models/model.json") for n in archive.namelist())
    try:
        if exported:
            module = torch.export.load(io.BytesIO(data), extra_files=extra).module()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
            module.eval()
    except Exception as exc:
        _log.debug("torch could not load the archive: %r", exc)
        raise UnsupportedModelError("malformed torch archive") from None
    stored_spec: InputSpec | None = None
    stored_classes: tuple[Label, ...] | None = None
    if extra[_METADATA_ENTRY]:
        stored_spec, stored_classes = decode_metadata(extra[_METADATA_ENTRY])
    spec = input_spec or stored_spec
    labels = classes if classes is not None else stored_classes
    if spec is None or labels is None:
        raise UnsupportedModelError(
            "torch archive has no modelshield metadata; pass input_spec and classes"
        )
    return TorchPredictor(module, input_spec=spec, classes=labels, scores=scores)
