"""Targets: answers, exact counting, budgets, observers and clean stops on refusal."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelshield.attacks import (
    Answer,
    AttackStopped,
    BudgetedTarget,
    ObservedTarget,
    PredictorTarget,
    Target,
)
from modelshield.errors import AuthenticationError, AuthorizationError, RateLimitedError


def test_predictor_target_answers_labels_and_probabilities(digits: Any) -> None:
    target = PredictorTarget(digits.predictor)
    assert isinstance(target, Target)
    x = digits.evaluation.inputs[:7]
    answer = target.query(x)
    assert answer.n_rows == 7
    assert answer.probabilities is not None
    np.testing.assert_allclose(answer.probabilities, digits.predictor.predict_proba(x))
    np.testing.assert_array_equal(answer.labels, digits.predictor.predict(x))
    assert (target.queries, target.rows) == (1, 7)


def test_labels_only_target_hides_scores(digits: Any) -> None:
    target = PredictorTarget(digits.predictor, return_probabilities=False)
    answer = target.query(digits.evaluation.inputs[:3])
    assert answer.probabilities is None
    np.testing.assert_array_equal(answer.labels, digits.evaluation.victim_labels[:3])


def test_output_transform_is_what_the_client_sees(digits: Any) -> None:
    seen: list[int] = []

    def top1_reversed(inputs: Any, probs: Any) -> Any:
        seen.append(inputs.shape[0])
        return probs[:, ::-1].copy()

    target = PredictorTarget(digits.predictor, output=top1_reversed)
    x = digits.evaluation.inputs[:5]
    answer = target.query(x)
    assert seen == [5]
    truth = digits.predictor.predict_proba(x)
    assert answer.probabilities is not None
    np.testing.assert_allclose(answer.probabilities, truth[:, ::-1])
    # labels follow the hardened output, as a client would read them
    np.testing.assert_array_equal(answer.labels, 9 - np.argmax(truth, axis=1))
    labels_only = PredictorTarget(digits.predictor, output=lambda x, p: None)
    assert labels_only.query(x).probabilities is None


def test_answer_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="do not match"):
        Answer(labels=np.zeros(3), probabilities=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="1-D"):
        Answer(labels=np.zeros((3, 1)))


def test_budget_is_exact_in_rows_and_requests(digits: Any) -> None:
    inner = PredictorTarget(digits.predictor)
    ledger = BudgetedTarget(inner, budget=250, batch_size=40)
    x = digits.evaluation.inputs
    first = ledger.query(x[:100])
    assert first.n_rows == 100
    assert ledger.queries == 3
    second = ledger.query(x[:300])  # only 150 rows left
    assert second.n_rows == 150
    assert (ledger.rows, ledger.remaining) == (250, 0)
    assert (inner.rows, inner.queries) == (250, ledger.queries)
    with pytest.raises(AttackStopped) as info:
        ledger.query(x[:1])
    assert info.value.event.kind == "budget_exhausted"
    assert inner.rows == 250


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RateLimitedError("slow down", retry_after=3.0), "rate_limited"),
        (AuthenticationError(), "blocked"),
        (AuthorizationError("key revoked"), "blocked"),
    ],
)
def test_refusal_partway_is_recorded_and_stops(
    digits: Any, refusing: Any, error: Exception, kind: str
) -> None:
    inner = refusing(PredictorTarget(digits.predictor), allow=2, error=error)
    ledger = BudgetedTarget(inner, budget=1000, batch_size=10)
    answer = ledger.query(digits.evaluation.inputs[:50])
    # the rows answered before the refusal are kept; nothing after it is sent
    assert answer.n_rows == 20
    assert ledger.stop is not None
    assert (ledger.stop.kind, ledger.stop.query_index, ledger.stop.row_index) == (kind, 2, 20)
    assert inner.refused == 1
    with pytest.raises(AttackStopped):
        ledger.query(digits.evaluation.inputs[:5])
    assert inner.refused == 1


def test_other_errors_propagate(digits: Any, refusing: Any) -> None:
    from modelshield.errors import InvalidInputError

    inner = refusing(PredictorTarget(digits.predictor), allow=0, error=InvalidInputError("bad"))
    with pytest.raises(InvalidInputError):
        BudgetedTarget(inner, budget=10).query(digits.evaluation.inputs[:5])


def test_degradation_is_noticed(digits: Any) -> None:
    calls = {"n": 0}

    def degrade_after_two(inputs: Any, probs: Any) -> Any:
        calls["n"] += 1
        return probs if calls["n"] <= 2 else None

    ledger = BudgetedTarget(
        PredictorTarget(digits.predictor, output=degrade_after_two), budget=100, batch_size=10
    )
    ledger.query(digits.evaluation.inputs[:40])
    assert ledger.degraded_at == 2
    undegraded = BudgetedTarget(PredictorTarget(digits.predictor), budget=100, batch_size=10)
    undegraded.query(digits.evaluation.inputs[:40])
    assert undegraded.degraded_at is None


def test_observer_sees_every_answered_batch(digits: Any) -> None:
    log: list[tuple[int, int]] = []
    observed = ObservedTarget(
        PredictorTarget(digits.predictor), observer=lambda x, a: log.append((len(x), a.n_rows))
    )
    ledger = BudgetedTarget(observed, budget=55, batch_size=20)
    ledger.query(digits.evaluation.inputs[:100])
    assert log == [(20, 20), (20, 20), (15, 15)]


def test_bad_ledger_parameters(digits: Any) -> None:
    with pytest.raises(ValueError, match="budget"):
        BudgetedTarget(PredictorTarget(digits.predictor), budget=-1)
    with pytest.raises(ValueError, match="batch_size"):
        BudgetedTarget(PredictorTarget(digits.predictor), budget=1, batch_size=0)
