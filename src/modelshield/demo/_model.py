"""The demo model: a seeded scikit-learn MLP on the 8x8 digits that ship with scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.models import InputSpec, dump_sklearn

DEMO_MODEL_NAME = "digits"
DEMO_INPUT_SPEC = InputSpec(shape=(64,), dtype="float32", min_value=0.0, max_value=1.0)


@dataclass(frozen=True)
class DemoData:
    """The digits split used throughout: pixel values scaled to [0, 1], float32."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]


@dataclass(frozen=True)
class DemoModel:
    """The trained demo model in its in-memory and serialized forms."""

    estimator: Any
    skops_bytes: bytes
    onnx_bytes: bytes
    test_accuracy: float


def load_demo_data(random_state: int = 0) -> DemoData:
    """The digits data (1,797 images), stratified 75/25 split, seeded."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=random_state
    )
    return DemoData(x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64))


def to_onnx(estimator: Any, spec: InputSpec) -> bytes:
    """Export a fitted scikit-learn classifier to ONNX, recording its input spec and classes."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from modelshield.models._base import METADATA_KEY, encode_metadata, normalize_classes

    onx = convert_sklearn(
        estimator,
        initial_types=[("input", FloatTensorType([None, spec.n_features]))],
        options={id(estimator): {"zipmap": False}},
        target_opset=17,
    )
    entry = onx.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = encode_metadata(spec, normalize_classes(estimator.classes_))
    data: bytes = onx.SerializeToString()
    return data


def train_demo_model(random_state: int = 0, data: DemoData | None = None) -> DemoModel:
    """Train the demo MLP (64 hidden ReLU units, Adam) to convergence; about 1 s on 2 cores.

    Deterministic for a given ``random_state`` on a given machine.
    """
    from sklearn.neural_network import MLPClassifier

    data = data or load_demo_data()
    estimator = MLPClassifier(
        hidden_layer_sizes=(64,), max_iter=1000, random_state=random_state
    ).fit(data.x_train, data.y_train)
    accuracy = float(estimator.score(data.x_test, data.y_test))
    return DemoModel(
        estimator=estimator,
        skops_bytes=dump_sklearn(estimator, input_spec=DEMO_INPUT_SPEC),
        onnx_bytes=to_onnx(estimator, DEMO_INPUT_SPEC),
        test_accuracy=accuracy,
    )
