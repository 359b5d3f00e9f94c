"""Attacks through the live gateway over HTTP: exact row counting, 429 handling, clean stops."""

from __future__ import annotations

import time

import numpy as np
import pytest

from modelshield.attacks import Evaluation, HttpTarget, KnockoffNets, RemoteVictim
from modelshield.demo import DemoData
from modelshield.errors import AuthenticationError

from .conftest import LiveGateway


def test_knockoff_over_http_stops_at_the_row_budget(live: LiveGateway, demo_data: DemoData) -> None:
    evaluation = Evaluation.from_predictor(
        live.predictor, inputs=demo_data.x_test, true_labels=demo_data.y_test
    )
    with HttpTarget(live.url, api_key=live.keys["alice"]) as target:
        assert target.model == "digits"
        assert target.classes == tuple(range(10))
        attack = KnockoffNets(budget=800, pool=demo_data.x_train, random_state=0, batch_size=50)
        result = attack.run(target, evaluation=evaluation)
    # the standard tier of the test gateway allows 500 rows: the attack is refused exactly there
    assert result.outcome == "rate_limited"
    assert result.rows == 500
    assert result.stopped_at_row == 500
    assert target.rows == 500
    assert result.fidelity is not None
    assert result.fidelity > 0.5


def test_short_retry_after_is_waited_out(live: LiveGateway, demo_data: DemoData) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    with HttpTarget(live.url, api_key=live.keys["carol"], sleep=sleep, max_wait=2.0) as target:
        for i in range(3):
            target.query(demo_data.x_test[i : i + 1].astype(np.float64))
    assert waits  # the slow tier (1 request/s, burst 2) answered 429 with Retry-After: 1
    assert all(w == 1.0 for w in waits)
    assert target.queries == 3


def test_bad_key_is_refused_before_any_query(live: LiveGateway) -> None:
    with pytest.raises(AuthenticationError):
        HttpTarget(live.url, api_key="msk_nope")


def test_remote_victim_fetches_the_deployments_labels(
    live: LiveGateway, demo_data: DemoData
) -> None:
    with HttpTarget(live.url, api_key=live.keys["bob"]) as target:
        victim = RemoteVictim(target, demo_data.x_test[:120])
        np.testing.assert_array_equal(
            victim.predict(demo_data.x_test[:120]), live.predictor.predict(demo_data.x_test[:120])
        )
        assert target.rows == 120
