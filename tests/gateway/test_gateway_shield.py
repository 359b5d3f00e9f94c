"""Shield: the gateway's defences in process, for the red team and embedded models."""

from __future__ import annotations

import numpy as np
import pytest

from modelshield import AuthorizationError, InvalidInputError, RateLimitedError
from modelshield.config import TierConfig
from modelshield.demo import DemoData, DemoModel
from modelshield.gateway import Shield
from modelshield.models import load_model


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_shield_hardens_like_the_gateway(demo_model: DemoModel, demo_data: DemoData) -> None:
    predictor = load_model(demo_model.onnx_bytes)
    shield = Shield(predictor, tier=TierConfig(output=("top_k:1", "round:1")), random_state=0)
    answer = shield.predict(demo_data.x_test[:20])
    assert answer.labels == predictor.predict(demo_data.x_test[:20]).tolist()
    assert answer.probabilities is not None
    assert ((answer.probabilities > 0).sum(axis=1) == 1).all()


def test_shield_budget_in_rows_per_client(demo_model: DemoModel, demo_data: DemoData) -> None:
    clock = Clock()
    shield = Shield(
        load_model(demo_model.onnx_bytes),
        tier=TierConfig(budget_rows=30, budget_period="1h", requests_per_second=100.0),
        clock=clock,
    )
    shield.predict(demo_data.x_test[:20], client="a")
    with pytest.raises(RateLimitedError) as info:
        shield.predict(demo_data.x_test[:11], client="a")
    assert info.value.retry_after == pytest.approx(3600 - 1000 % 3600)
    shield.predict(demo_data.x_test[:10], client="a")
    shield.predict(demo_data.x_test[:30], client="b")  # budgets are per client
    clock.now += 3600
    shield.predict(demo_data.x_test[:30], client="a")


def test_shield_validates(demo_model: DemoModel) -> None:
    shield = Shield(load_model(demo_model.onnx_bytes))
    with pytest.raises(InvalidInputError):
        shield.predict(np.full((1, 64), np.nan))
    with pytest.raises(InvalidInputError, match="too many rows"):
        shield.predict(np.zeros((257, 64)))


class BlockAfter:
    """An observer that flags a client once it has sent ``n`` rows."""

    def __init__(self, n: int, flag: str) -> None:
        self.n, self.flag, self.seen = n, flag, 0

    def observe(
        self, client: str, inputs: np.ndarray, scores: np.ndarray, now: float, tier: str
    ) -> tuple[str | None, dict[str, object]]:
        self.seen += len(inputs)
        return (self.flag if self.seen >= self.n else None), {"rows": self.seen}


def test_observer_flag_acts_on_the_next_request(demo_model: DemoModel, demo_data: DemoData) -> None:
    shield = Shield(load_model(demo_model.onnx_bytes), observer=BlockAfter(5, "block"))
    shield.predict(demo_data.x_test[:5])
    with pytest.raises(AuthorizationError, match="blocked"):
        shield.predict(demo_data.x_test[:1])


def test_degrade_flag_returns_labels_only(demo_model: DemoModel, demo_data: DemoData) -> None:
    shield = Shield(load_model(demo_model.onnx_bytes), observer=BlockAfter(1, "degrade"))
    assert shield.predict(demo_data.x_test[:1]).probabilities is not None
    answer = shield.predict(demo_data.x_test[:3])
    assert answer.probabilities is None
    assert len(answer.labels) == 3


class MarkFirstRow:
    def mark(
        self, client: str, inputs: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        wrong = (np.argmax(scores[:1], axis=1) + 1) % scores.shape[1]
        return np.array([0], dtype=np.intp), wrong.astype(np.intp), ["keyed"]


def test_marker_changes_the_marked_label_and_keeps_scores_consistent(
    demo_model: DemoModel, demo_data: DemoData
) -> None:
    predictor = load_model(demo_model.onnx_bytes)
    shield = Shield(predictor, marker=MarkFirstRow())
    x = demo_data.x_test[:4]
    answer = shield.predict(x)
    truth = predictor.predict(x).tolist()
    assert answer.labels[1:] == truth[1:]
    assert answer.labels[0] == (truth[0] + 1) % 10
    assert answer.probabilities is not None
    assert int(np.argmax(answer.probabilities[0])) == answer.labels[0]
