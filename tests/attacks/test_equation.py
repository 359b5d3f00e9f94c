"""Equation-solving (Tramèr et al. 2016): exact recovery of linear models, MLPs by optimisation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelshield.attacks import EquationSolving, Evaluation, LinearModel, PredictorTarget
from modelshield.models import InputSpec, SklearnPredictor


def _spec(d: int) -> InputSpec:
    return InputSpec(shape=(d,), dtype="float64", min_value=0.0, max_value=1.0)


def test_logistic_regression_recovered_exactly_with_d_plus_1_queries(
    cancer_logistic: Any,
) -> None:
    victim = cancer_logistic.estimator
    d = victim.coef_.shape[1]
    target = PredictorTarget(cancer_logistic.predictor)
    result = EquationSolving(budget=1000, model="logistic", random_state=0).run(
        target, evaluation=cancer_logistic.evaluation
    )
    assert result.outcome == "completed"
    assert (result.rows, target.rows) == (d + 1, d + 1)
    model = result.copy.model if result.copy is not None else None
    assert isinstance(model, LinearModel)
    np.testing.assert_allclose(model.coef_, victim.coef_, atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.intercept_, victim.intercept_, atol=1e-6, rtol=0)
    assert result.fidelity == 1.0


def test_logistic_recovery_fails_with_too_few_queries(cancer_logistic: Any) -> None:
    # d equations for d + 1 unknowns: the solution is not the victim's
    d = cancer_logistic.estimator.coef_.shape[1]
    result = EquationSolving(budget=d, random_state=0).run(
        PredictorTarget(cancer_logistic.predictor)
    )
    assert result.copy is not None
    model = result.copy.model
    assert isinstance(model, LinearModel)
    assert np.abs(model.coef_ - cancer_logistic.estimator.coef_).max() > 1e-3


def test_softmax_regression_recovered_up_to_the_shift(iris_softmax: Any) -> None:
    predictor, evaluation = iris_softmax
    victim = predictor.estimator
    x = evaluation.inputs
    result = EquationSolving(budget=100, model="softmax", random_state=1).run(
        PredictorTarget(predictor), evaluation=evaluation
    )
    assert result.rows == 5
    assert result.copy is not None
    model = result.copy.model
    assert isinstance(model, LinearModel)
    np.testing.assert_allclose(
        model.coef_ - model.coef_[0], victim.coef_ - victim.coef_[0], atol=1e-6
    )
    np.testing.assert_allclose(result.copy.predict_proba(x), predictor.predict_proba(x), atol=1e-9)


def test_logistic_family_needs_two_classes(digits: Any) -> None:
    with pytest.raises(ValueError, match="two classes"):
        EquationSolving(budget=100, model="logistic").run(PredictorTarget(digits.predictor))


def test_labels_only_falls_back_to_line_search_retraining(iris_softmax: Any) -> None:
    predictor, evaluation = iris_softmax
    target = PredictorTarget(predictor, return_probabilities=False)
    result = EquationSolving(budget=300, model="softmax", random_state=0).run(
        target, evaluation=evaluation
    )
    assert "labels only" in result.message
    assert result.rows == target.rows == 300
    assert result.copy is not None
    assert not isinstance(result.copy.model, LinearModel)
    assert result.fidelity is not None
    assert result.fidelity >= 0.9


def test_small_mlp_is_fitted_to_its_probabilities(cancer_data: Any) -> None:
    from sklearn.neural_network import MLPClassifier

    x, y = cancer_data
    victim = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3000, random_state=0)
    victim.fit(x[:400], y[:400])
    predictor = SklearnPredictor(victim, input_spec=_spec(x.shape[1]))
    evaluation = Evaluation.from_predictor(predictor, inputs=x[400:], true_labels=y[400:])
    result = EquationSolving(budget=600, model="mlp", hidden_layer_sizes=(8,), random_state=0).run(
        PredictorTarget(predictor), evaluation=evaluation
    )
    assert result.rows == 600
    assert result.fidelity is not None
    assert result.fidelity >= 0.95
