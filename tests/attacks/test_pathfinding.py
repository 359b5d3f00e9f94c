"""Path-finding (Tramèr et al. 2016) against a tree whose answers reveal the leaf."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelshield.attacks import Evaluation, LeafBoxes, PathFinding, PredictorTarget
from modelshield.models import InputSpec, SklearnPredictor


@pytest.fixture(scope="module")
def tree_victim(cancer_data: Any) -> tuple[Any, SklearnPredictor, Evaluation]:
    from sklearn.tree import DecisionTreeClassifier

    x, y = cancer_data
    tree = DecisionTreeClassifier(max_depth=5, min_samples_leaf=5, random_state=0)
    tree.fit(x[:400], y[:400])
    spec = InputSpec(shape=(x.shape[1],), dtype="float64", min_value=0.0, max_value=1.0)
    predictor = SklearnPredictor(tree, input_spec=spec)
    return (
        tree,
        predictor,
        Evaluation.from_predictor(predictor, inputs=x[400:], true_labels=y[400:]),
    )


def _leaf_confidence(tree: Any) -> Any:
    """An API like BigML's: the confidence it returns differs from leaf to leaf."""

    def output(inputs: Any, probs: Any) -> Any:
        leaf = tree.apply(inputs).astype(float)
        p1 = 0.05 + 0.9 * probs[:, 1] + 1e-4 * leaf
        return np.stack([1.0 - p1, p1], axis=1)

    return output


def test_tree_recovered_when_leaves_are_revealed(tree_victim: Any) -> None:
    tree, predictor, evaluation = tree_victim
    target = PredictorTarget(predictor, output=_leaf_confidence(tree))
    result = PathFinding(budget=20_000, random_state=0).run(target, evaluation=evaluation)
    assert result.outcome == "completed"
    assert result.copy is not None
    boxes = result.copy.model
    assert isinstance(boxes, LeafBoxes)
    assert boxes.n_leaves == tree.get_n_leaves()
    assert result.fidelity == 1.0
    uniform = np.random.default_rng(5).uniform(size=(3000, evaluation.inputs.shape[1]))
    assert np.mean(result.copy.predict(uniform) == predictor.predict(uniform)) >= 0.999
    assert result.rows == target.rows <= 20_000


def test_small_budget_recovers_part_of_the_tree(tree_victim: Any) -> None:
    tree, predictor, evaluation = tree_victim
    target = PredictorTarget(predictor, output=_leaf_confidence(tree))
    result = PathFinding(budget=400, random_state=0).run(target, evaluation=evaluation)
    assert result.outcome == "budget_exhausted"
    assert result.rows == target.rows == 400
    assert result.copy is not None
    assert isinstance(result.copy.model, LeafBoxes)
    assert 0 < result.copy.model.n_leaves < tree.get_n_leaves()


def test_labels_only_recovers_less(tree_victim: Any) -> None:
    tree, predictor, evaluation = tree_victim
    revealed = PathFinding(budget=20_000, random_state=0).run(
        PredictorTarget(predictor, output=_leaf_confidence(tree)), evaluation=evaluation
    )
    hidden = PathFinding(budget=20_000, random_state=0).run(
        PredictorTarget(predictor, return_probabilities=False), evaluation=evaluation
    )
    assert hidden.fidelity is not None
    assert revealed.fidelity is not None
    assert hidden.fidelity < revealed.fidelity
