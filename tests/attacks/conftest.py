"""Victims and targets shared by the attack tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from modelshield.attacks import Answer, Evaluation, Target
from modelshield.demo import DemoData, DemoModel
from modelshield.errors import ShieldError
from modelshield.models import InputSpec, Label, Predictor, SklearnPredictor, load_model


@dataclass(frozen=True)
class Victim:
    predictor: Predictor
    evaluation: Evaluation
    pool: np.ndarray[Any, Any]
    estimator: Any = None


@pytest.fixture(scope="session")
def digits(demo_model: DemoModel, demo_data: DemoData) -> Victim:
    """The demo MLP served from its ONNX bytes; the pool is the training split."""
    predictor = load_model(demo_model.onnx_bytes)
    evaluation = Evaluation.from_predictor(
        predictor, inputs=demo_data.x_test, true_labels=demo_data.y_test
    )
    return Victim(predictor, evaluation, demo_data.x_train, demo_model.estimator)


def unit_box(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    lo, hi = x.min(axis=0), x.max(axis=0)
    return np.clip((x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)


def float64_spec(d: int) -> InputSpec:
    return InputSpec(shape=(d,), dtype="float64", min_value=0.0, max_value=1.0)


@pytest.fixture(scope="session")
def cancer_data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return unit_box(x)[order], y[order]


@pytest.fixture(scope="session")
def cancer_logistic(cancer_data: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]) -> Victim:
    from sklearn.linear_model import LogisticRegression

    x, y = cancer_data
    model = LogisticRegression(C=1.0, max_iter=1000).fit(x[:400], y[:400])
    predictor = SklearnPredictor(model, input_spec=float64_spec(x.shape[1]))
    evaluation = Evaluation.from_predictor(predictor, inputs=x[400:], true_labels=y[400:])
    return Victim(predictor, evaluation, x[:400], model)


@pytest.fixture(scope="session")
def iris_softmax() -> tuple[SklearnPredictor, Evaluation]:
    """A three-class softmax regression on iris scaled to [0, 1] (float64 inputs)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = unit_box(x)
    victim = LogisticRegression(max_iter=1000).fit(x, y)
    predictor = SklearnPredictor(victim, input_spec=float64_spec(4))
    return predictor, Evaluation.from_predictor(predictor, inputs=x, true_labels=y)


class RefusingTarget:
    """Answers ``allow`` requests, then raises ``error`` on every request."""

    def __init__(self, target: Target, *, allow: int, error: ShieldError) -> None:
        self.target = target
        self.allow = allow
        self.error = error
        self.answered = 0
        self.answered_rows = 0
        self.refused = 0

    @property
    def input_spec(self) -> InputSpec:
        return self.target.input_spec

    @property
    def classes(self) -> tuple[Label, ...]:
        return self.target.classes

    def query(self, inputs: np.ndarray[Any, Any]) -> Answer:
        if self.answered >= self.allow:
            self.refused += 1
            raise self.error
        answer = self.target.query(inputs)
        self.answered += 1
        self.answered_rows += answer.n_rows
        return answer


@pytest.fixture
def refusing() -> type[RefusingTarget]:
    """The refusing target wrapper (a class: tests choose when and how it refuses)."""
    return RefusingTarget
