"""False claims: models trained independently of our key never verify as ours.

Twenty-plus models of other seeds, architectures and families are trained on clean digits; none
may verify against the demo trigger set or carry any client's response watermark.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelshield.demo import DemoData, DemoModel
from modelshield.watermark import ResponseWatermark, TriggerSet, trace, verify_trigger_set

from .conftest import CLASSES, KEY


def _independent_models() -> list[tuple[str, Any]]:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Perceptron, RidgeClassifier
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    return [
        *[
            (f"mlp64-seed{s}", MLPClassifier((64,), max_iter=1000, random_state=s))
            for s in (1, 2, 3)
        ],
        ("mlp32", MLPClassifier((32,), max_iter=2000, random_state=4)),
        ("mlp128-early", MLPClassifier((128,), early_stopping=True, random_state=5)),
        ("mlp64x32-early", MLPClassifier((64, 32), early_stopping=True, random_state=6)),
        ("mlp-tanh", MLPClassifier((64,), activation="tanh", max_iter=1000, random_state=7)),
        ("logreg", LogisticRegression(max_iter=3000)),
        ("ridge", RidgeClassifier()),
        ("perceptron", Perceptron(random_state=0)),
        ("lda", LinearDiscriminantAnalysis()),
        ("nb", GaussianNB()),
        *[(f"rf-seed{s}", RandomForestClassifier(60, random_state=s)) for s in (0, 1)],
        ("extra-trees", ExtraTreesClassifier(60, random_state=0)),
        ("tree", DecisionTreeClassifier(random_state=0)),
        ("svc-rbf", SVC()),
        ("svc-poly", SVC(kernel="poly", degree=3)),
        ("linear-svc", LinearSVC(max_iter=20000)),
        *[(f"knn{k}", KNeighborsClassifier(k)) for k in (1, 3, 7)],
    ]


@pytest.fixture(scope="module")
def independent(demo_data: DemoData) -> list[tuple[str, Any]]:
    fitted = [
        (name, model.fit(demo_data.x_train, demo_data.y_train))
        for name, model in _independent_models()
    ]
    assert len(fitted) >= 20
    for name, model in fitted:  # they are real, useful models
        assert model.score(demo_data.x_test, demo_data.y_test) > 0.75, name
    return fitted


def test_no_independent_model_verifies_against_the_trigger_set(
    independent: list[tuple[str, Any]], trigger_set: TriggerSet
) -> None:
    results = {name: verify_trigger_set(m.predict, trigger_set) for name, m in independent}
    verified = [name for name, r in results.items() if r.verified]
    assert verified == []
    assert all(r.p_value > 1e-4 for r in results.values())


@pytest.fixture(scope="module")
def client_records(demo_model: DemoModel) -> dict[str, list[Any]]:
    """Four clients' marked answers (900 digits each, 5% marked)."""
    from sklearn.datasets import load_digits

    digits = (load_digits().data / 16.0).astype(np.float32)
    victim = demo_model.estimator
    wm = ResponseWatermark(KEY, classes=CLASSES, share=0.05, image_shape=(8, 8))
    records = {}
    for i in range(4):
        order = np.random.default_rng(i).permutation(len(digits))
        queries = digits[order[:900]]
        marks = wm.select(f"client{i}", queries, outputs=victim.predict_proba(queries))
        records[f"client{i}"] = list(marks.records)
    return records


@pytest.mark.parametrize("probes", [0, 16])
def test_no_independent_model_carries_a_response_watermark(
    independent: list[tuple[str, Any]], client_records: dict[str, list[Any]], probes: int
) -> None:
    records = client_records
    for name, model in independent:
        results = trace(model.predict, records, classes=CLASSES, input_shape=(64,), probes=probes)
        assert not any(r.verified for r in results), name
        assert min(r.p_value for r in results) > 1e-4, name


def test_no_independent_model_carries_a_response_watermark_in_its_scores(
    independent: list[tuple[str, Any]], client_records: dict[str, list[Any]]
) -> None:
    records = client_records
    for name, model in independent:
        # probabilities where the model has them, decision values (read as logits) elsewhere
        scores = model.predict_proba if hasattr(model, "predict_proba") else model.decision_function
        results = trace(scores, records, classes=CLASSES, input_shape=(64,), scores=True)
        assert all(r.trials > 0 for r in results), name  # every marked pair is a trial
        assert not any(r.verified for r in results), name
        assert min(r.p_value for r in results) > 1e-4, name
