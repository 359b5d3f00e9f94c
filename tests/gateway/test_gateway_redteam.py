"""Attacks through the live gateway over HTTP: exact row counting, 429 handling, clean stops."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from modelshield import access
from modelshield.attacks import (
    ATTACKS,
    EquationSolving,
    Evaluation,
    HttpTarget,
    KnockoffNets,
    LinearModel,
    RemoteVictim,
    make_attack,
)
from modelshield.config import load_config
from modelshield.demo import DemoData, DemoModel
from modelshield.errors import AuthenticationError
from modelshield.gateway import ServerThread, build_app, open_gateway

from .conftest import LiveGateway, write_config


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


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"equation-logistic"}))
def test_every_attack_runs_over_http(live: LiveGateway, demo_data: DemoData, name: str) -> None:
    with access.open_registry(live.config.registry.url) as registry:
        _, key = registry.add(f"red-{name}", models=["digits"], tier="standard")
    evaluation = Evaluation.from_predictor(live.predictor, inputs=demo_data.x_test[:100])
    with HttpTarget(live.url, api_key=key.reveal()) as target:
        attack = make_attack(name, budget=120, pool=demo_data.x_train, random_state=0)
        result = attack.run(target, evaluation=evaluation)
    assert result.rows == target.rows  # counted exactly, by the attack and by the target
    assert result.rows <= 120
    assert result.outcome in ("completed", "budget_exhausted")
    assert result.copy is not None


def test_equation_solving_recovers_a_logistic_regression_exactly_over_http(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    from modelshield.models import InputSpec, SklearnPredictor

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0))
    victim = LogisticRegression(max_iter=1000).fit(x[:400], y[:400])
    spec = InputSpec(shape=(30,), dtype="float64", min_value=0.0, max_value=1.0)
    predictor = SklearnPredictor(victim, input_spec=spec)
    extra = (
        "[tiers.open]\nrequests_per_second = 10000.0\nburst = 10000\noutput = ['probabilities']\n"
    )
    config = load_config(write_config(tmp_path, extra))
    with access.open_registry(config.registry.url) as registry:
        _, key = registry.add("eq", models=["cancer"], tier="open")
    gateway = open_gateway(config, models={"cancer": predictor})
    evaluation = Evaluation.from_predictor(predictor, inputs=x[400:], true_labels=y[400:])
    with (
        ServerThread(build_app(gateway)) as server,
        HttpTarget(server.url, api_key=key.reveal()) as target,
    ):
        result = EquationSolving(budget=1000, model="logistic", random_state=0).run(
            target, evaluation=evaluation
        )
    assert (result.rows, target.rows) == (31, 31)  # d + 1 queries
    model = result.copy.model if result.copy is not None else None
    assert isinstance(model, LinearModel)
    np.testing.assert_allclose(model.coef_, victim.coef_, atol=1e-6, rtol=0)
    np.testing.assert_allclose(model.intercept_, victim.intercept_, atol=1e-6, rtol=0)
    assert result.fidelity == 1.0


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelshield", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_attack_run_cli_against_a_live_gateway(
    live: LiveGateway, demo_model: DemoModel, tmp_path: Path
) -> None:
    (tmp_path / "victim.onnx").write_bytes(demo_model.onnx_bytes)
    r = _cli(
        "attack", "run", "--target", live.url, "--api-key", live.keys["bob"], "--attack",
        "copycat", "--budget", "150", "--data", "digits", "--victim", "victim.onnx",
        "--json", "out.json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["rows"] == 150
    assert result["fidelity"] > 0.5


def test_evidence_cli_queries_a_suspect_over_http(
    live: LiveGateway, demo_model: DemoModel, tmp_path: Path
) -> None:
    (tmp_path / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    assert _cli("keygen", "--signing", "-o", "owner", cwd=tmp_path).returncode == 0
    r = _cli(
        "certify", "digits.onnx", "--owner", "Example Labs", "--signing-key",
        "owner.signing.key", "-o", "cert.json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _cli(
        "evidence", live.url, "--api-key", live.keys["bob"], "--certificate", "cert.json",
        "--trust", "owner.signing.pub", "-o", "report.html", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "report.html").read_text()
    assert "model digits" in html  # the suspect is described by its URL and model
    assert "certificate" in html.lower()
