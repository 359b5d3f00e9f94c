"""scikit-learn adapter: estimators stored with skops (never pickle), loaded from bytes."""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable
from typing import Any

import numpy as np

from modelshield.errors import UnsupportedModelError
from modelshield.models._base import (
    METADATA_KEY,
    BasePredictor,
    FloatArray,
    InputSpec,
    decode_metadata,
    encode_metadata,
    normalize_classes,
)

_log = logging.getLogger(__name__)

_METADATA_ENTRY = f"{METADATA_KEY}.json"

# skops refuses to construct a type it does not know unless the caller trusts it. Fitted
# estimators carry scikit-learn's own helper classes (optimizer state, tree structures), which
# skops rebuilds from data; those classes are trusted here. Functions (numpy.log1p in a
# FunctionTransformer, say) and anything outside scikit-learn must be trusted by the caller.


def _auto_trusted(type_name: str) -> bool:
    module, _, name = type_name.rpartition(".")
    return module.startswith("sklearn.") and name[:1].isupper()


class SklearnPredictor(BasePredictor):
    """A fitted scikit-learn classifier with ``predict_proba``."""

    def __init__(self, estimator: Any, *, input_spec: InputSpec | None = None) -> None:
        if not hasattr(estimator, "predict_proba") or not hasattr(estimator, "classes_"):
            raise UnsupportedModelError(
                f"{type(estimator).__name__} is not a fitted classifier with predict_proba"
            )
        if input_spec is None:
            n_features = getattr(estimator, "n_features_in_", None)
            if n_features is None:
                raise UnsupportedModelError(
                    "cannot tell the number of input features; pass input_spec"
                )
            input_spec = InputSpec(shape=(int(n_features),), dtype="float64")
        super().__init__(input_spec=input_spec, classes=normalize_classes(estimator.classes_))
        self._estimator = estimator

    @property
    def estimator(self) -> Any:
        """The wrapped estimator (for training-time tools such as watermark embedding)."""
        return self._estimator

    def _scores(self, batch: FloatArray) -> FloatArray:
        flat = batch.reshape(batch.shape[0], -1)
        scores: FloatArray = np.asarray(self._estimator.predict_proba(flat), dtype=np.float64)
        return scores


def dump_sklearn(estimator: Any, *, input_spec: InputSpec | None = None) -> bytes:
    """Serialize ``estimator`` with skops, embedding the input spec and labels, and return bytes."""
    import skops.io as sio

    predictor = SklearnPredictor(estimator, input_spec=input_spec)
    buf = io.BytesIO(sio.dumps(estimator))
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(_METADATA_ENTRY, encode_metadata(predictor.input_spec, predictor.classes))
    return buf.getvalue()


def is_skops(data: bytes) -> bool:
    """True when ``data`` is a zip archive with a skops ``schema.json``."""
    if not data.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "schema.json" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def load_sklearn(
    data: bytes, *, trusted: Iterable[str] = (), input_spec: InputSpec | None = None
) -> SklearnPredictor:
    """Load a skops-serialized classifier from bytes in memory.

    Beyond scikit-learn's own classes, every type skops does not trust by default must be listed
    in ``trusted``; any other makes loading fail with :class:`UnsupportedModelError` before
    anything is constructed.
    """
    import skops.io as sio

    if not is_skops(data):
        raise UnsupportedModelError("not a skops file")
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises many types on malformed archives
        _log.debug("skops could not list types: %r", exc)
        raise UnsupportedModelError("malformed skops file") from None
    extra = set(trusted)
    refused = [t for t in untrusted if not _auto_trusted(t) and t not in extra]
    if refused:
        raise UnsupportedModelError(
            "skops file contains untrusted types: " + ", ".join(sorted(refused))
        )
    try:
        estimator = sio.loads(data, trusted=list(untrusted))
    except Exception as exc:
        _log.debug("skops load failed: %r", exc)
        raise UnsupportedModelError("malformed skops file") from None
    if input_spec is None:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if _METADATA_ENTRY in archive.namelist():
                input_spec, _ = decode_metadata(archive.read(_METADATA_ENTRY))
    return SklearnPredictor(estimator, input_spec=input_spec)
