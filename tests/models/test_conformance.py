"""One conformance suite, run over every adapter: the same checks whatever the framework."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from modelshield import InputSpec, InvalidInputError, Predictor, UnsupportedModelError, load_model
from modelshield.demo import DEMO_INPUT_SPEC, DemoData, DemoModel
from modelshield.models import detect_format, dump_torch


def _torch_bytes(demo_model: DemoModel) -> bytes:
    torch = pytest.importorskip("torch")
    mlp = demo_model.estimator
    net = torch.nn.Sequential(
        torch.nn.Linear(64, mlp.coefs_[0].shape[1]),
        torch.nn.ReLU(),
        torch.nn.Linear(mlp.coefs_[1].shape[0], 10),
    )
    with torch.no_grad():
        for layer, w, b in zip((net[0], net[2]), mlp.coefs_, mlp.intercepts_, strict=True):
            layer.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
            layer.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    return dump_torch(net, input_spec=DEMO_INPUT_SPEC, classes=tuple(range(10)))


Builder = Callable[[DemoModel], bytes]
BUILDERS: dict[str, Builder] = {
    "skops": lambda m: m.skops_bytes,
    "onnx": lambda m: m.onnx_bytes,
    "torch": _torch_bytes,
}


@pytest.fixture(params=sorted(BUILDERS))
def adapter(request: pytest.FixtureRequest, demo_model: DemoModel) -> tuple[str, bytes, Predictor]:
    fmt = request.param
    data = BUILDERS[fmt](demo_model)
    return fmt, data, load_model(data)


def test_format_is_detected(adapter: tuple[str, bytes, Predictor]) -> None:
    fmt, data, _ = adapter
    assert detect_format(data) == fmt


def test_spec_and_classes_travel_inside_the_file(adapter: tuple[str, bytes, Predictor]) -> None:
    _, _, predictor = adapter
    assert predictor.input_spec.shape == (64,)
    assert predictor.input_spec.min_value == 0.0
    assert predictor.input_spec.max_value == 1.0
    assert predictor.classes == tuple(range(10))


def test_probabilities_are_well_formed(
    adapter: tuple[str, bytes, Predictor], demo_data: DemoData
) -> None:
    _, _, predictor = adapter
    proba = predictor.predict_proba(demo_data.x_test[:50])
    assert proba.shape == (50, 10)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_predict_is_the_argmax_label(
    adapter: tuple[str, bytes, Predictor], demo_data: DemoData
) -> None:
    _, _, predictor = adapter
    x = demo_data.x_test[:100]
    expected = np.asarray(predictor.classes)[np.argmax(predictor.predict_proba(x), axis=1)]
    np.testing.assert_array_equal(predictor.predict(x), expected)


def test_agrees_with_the_source_estimator(
    adapter: tuple[str, bytes, Predictor], demo_model: DemoModel, demo_data: DemoData
) -> None:
    _, _, predictor = adapter
    x = demo_data.x_test
    reference = demo_model.estimator.predict_proba(x)
    np.testing.assert_allclose(predictor.predict_proba(x), reference, atol=1e-4)
    agreement = np.mean(predictor.predict(x) == demo_model.estimator.predict(x))
    assert agreement >= 0.995


def test_single_row_is_a_batch_of_one(
    adapter: tuple[str, bytes, Predictor], demo_data: DemoData
) -> None:
    _, _, predictor = adapter
    assert predictor.predict_proba(demo_data.x_test[0]).shape == (1, 10)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((3, 63)), "shape"),
        (np.zeros((3, 8, 8)), "shape"),
        (np.zeros((0, 64)), "at least one row"),
        (np.full((2, 64), np.nan), "NaN"),
        (np.full((2, 64), np.inf), "NaN or infinite"),
        (np.full((2, 64), 2.0), "maximum"),
        (np.full((2, 64), -0.5), "minimum"),
        (np.array([["a"] * 64]), "real numbers"),
        (np.zeros((2, 64), dtype=np.complex128), "real numbers"),
        (np.zeros((2, 64), dtype="datetime64[s]"), "real numbers"),
        (np.zeros((2, 64), dtype="timedelta64[s]"), "real numbers"),  # numpy: an integer kind
        (np.array([[None] * 64]), "real numbers"),
        ([[0.0] * 64, [0.0] * 10], "numeric array"),
    ],
)
def test_bad_inputs_are_refused(
    adapter: tuple[str, bytes, Predictor], bad: Any, message: str
) -> None:
    _, _, predictor = adapter
    with pytest.raises(InvalidInputError, match=message):
        predictor.predict_proba(bad)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00" * 100, b"PK\x03\x04 not really a zip", b"\x80\x04\x95pickle-ish", b"hello"],
)
def test_garbage_bytes_are_unsupported(garbage: bytes) -> None:
    with pytest.raises(UnsupportedModelError):
        load_model(garbage)


def test_truncated_model_is_unsupported(adapter: tuple[str, bytes, Predictor]) -> None:
    _, data, _ = adapter
    with pytest.raises(UnsupportedModelError):
        load_model(data[: len(data) // 2])


def test_input_spec_override(demo_model: DemoModel, demo_data: DemoData) -> None:
    spec = InputSpec(shape=(64,), dtype="float32", min_value=0.0, max_value=0.5)
    predictor = load_model(demo_model.onnx_bytes, input_spec=spec)
    with pytest.raises(InvalidInputError, match=r"maximum 0\.5"):
        predictor.predict(np.full((1, 64), 0.75))


def test_pickle_is_never_loaded() -> None:
    import pickle

    from sklearn.linear_model import LogisticRegression

    data = pickle.dumps(LogisticRegression())
    with pytest.raises(UnsupportedModelError, match="unrecognized"):
        load_model(data)
