"""Dynamic batching: the small batches of one event-loop turn are answered with one prediction,
and each gets exactly what it would have got alone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelshield import access
from modelshield.config import TierConfig, load_config
from modelshield.demo import DemoModel
from modelshield.errors import InvalidInputError
from modelshield.gateway import build_app, open_gateway
from modelshield.gateway._app import Gateway
from modelshield.gateway._pipeline import Question, Tier, answer, answer_many
from modelshield.gateway._plugins import WatermarkMarker
from modelshield.models import InputSpec, Predictor, load_model
from modelshield.watermark import ResponseWatermark

from .conftest import write_config

CLASSES = tuple(range(10))


class RowWise:
    """A model whose answer for a row is bit-for-bit independent of the rest of its batch
    (elementwise arithmetic only, no BLAS), so that batched and single answers can be compared
    exactly; it counts its calls."""

    classes = CLASSES
    input_spec = InputSpec(shape=(64,), dtype="float32", min_value=0.0, max_value=1.0)

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict_proba(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        self.calls.append(x.shape[0])
        logits = 4.0 * x[:, :10] + x[:, 10:20] ** 2
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        out: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return out

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(CLASSES)[self.predict_proba(x).argmax(axis=1)]


def tier(name: str, output: list[str]) -> Tier:
    return Tier.from_config(name, TierConfig(output=output))


TIERS = [tier("scores", ["top_k:3", "round:3"]), tier("plain", ["probabilities"])]
TIERS.append(tier("labels", ["labels"]))


def marker(share: float = 0.2) -> WatermarkMarker:
    return WatermarkMarker(
        ResponseWatermark(
            b"k" * 32, classes=CLASSES, share=share, uncertain_share=0.6, image_shape=(8, 8)
        )
    )


def questions(seed: int, n: int = 24) -> list[Question]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rows = rng.random((int(rng.integers(1, 6)), 64)).astype(np.float32)
        out.append(Question(rows, TIERS[i % 3], f"client{i % 4}", degraded=i % 5 == 0))
    return out


def alone(predictor: Any, qs: list[Question], mark: Any) -> list[Any]:
    return [
        answer(
            predictor, q.batch, q.tier, np.random.default_rng(0),
            client=q.client, degraded=q.degraded, marker=mark,
        )
        for q in qs
    ]  # fmt: skip


def test_each_batch_gets_what_it_gets_alone() -> None:
    qs, mark = questions(0), marker()
    together = answer_many(RowWise(), qs, np.random.default_rng(0), marker=mark)
    expected = alone(RowWise(), qs, mark)
    assert sum(len(a.marked_rows) for a in together) > 5  # the watermark took part
    assert any(a.probabilities is None for a in together)  # and labels-only answers
    for got, want, q in zip(together, expected, qs, strict=True):
        assert got.labels == want.labels
        np.testing.assert_array_equal(got.marked_rows, want.marked_rows)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert got.degraded == want.degraded == q.degraded
        if want.probabilities is None:
            assert got.probabilities is None
        else:
            assert got.probabilities is not None
            np.testing.assert_array_equal(got.probabilities, want.probabilities)


def test_one_prediction_for_all_batches() -> None:
    model, qs = RowWise(), questions(1)
    answer_many(model, qs, np.random.default_rng(0), marker=marker())
    assert model.calls == [sum(q.batch.shape[0] for q in qs)]


def test_batching_with_onnx_runtime(demo_model: DemoModel) -> None:
    """The real runtime: the same labels and marks; scores equal up to float32 rounding."""
    victim = load_model(demo_model.onnx_bytes)
    qs, mark = questions(2), marker()
    together = answer_many(victim, qs, np.random.default_rng(0), marker=mark)
    for got, want in zip(together, alone(victim, qs, mark), strict=True):
        assert got.labels == want.labels
        np.testing.assert_array_equal(got.marked_rows, want.marked_rows)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)


class Poisoned(RowWise):
    """Refuses any batch holding a row whose first value is exactly 0.25."""

    def predict_proba(self, x: Any) -> np.ndarray:
        if np.any(np.asarray(x)[:, 0] == np.float32(0.25)):
            raise InvalidInputError("the model refused a row")
        return super().predict_proba(x)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Gateway, Poisoned]]:
    config = load_config(write_config(tmp_path))
    model = Poisoned()
    gw = open_gateway(config, models={"digits": model}, random_state=0)  # type: ignore[dict-item]
    try:
        yield gw, model
    finally:
        gw.close()


def test_a_failure_reaches_only_the_batch_that_caused_it(
    gateway: tuple[Gateway, Poisoned],
) -> None:
    gw, model = gateway
    rows = np.random.default_rng(3).random((3, 1, 64)).astype(np.float32)
    rows[1, 0, 0] = 0.25
    standard = gw.tiers["standard"]

    async def scenario() -> list[Any]:
        waits = [gw._answer_soon("digits", Question(r, standard, "c")) for r in rows]
        return await asyncio.gather(*waits, return_exceptions=True)

    first, second, third = asyncio.run(scenario())
    assert isinstance(second, InvalidInputError)
    assert first.labels == answer(model, rows[0], standard, gw.rng, client="c").labels
    assert third.labels == answer(model, rows[2], standard, gw.rng, client="c").labels
    # one joined attempt, then each batch alone; the two answers above add two more calls
    assert model.calls == [1, 1, 1, 1]


def test_concurrent_http_requests_share_predictions(tmp_path: Path, demo_model: DemoModel) -> None:
    """Through the ASGI app: 12 concurrent requests, fewer model calls, the same answers as
    when they are sent one at a time."""
    config = load_config(write_config(tmp_path))
    victim = load_model(demo_model.onnx_bytes)
    calls: list[int] = []

    class Counting:
        classes, input_spec = victim.classes, victim.input_spec

        def predict_proba(self, x: Any) -> np.ndarray:
            calls.append(len(x))
            return victim.predict_proba(x)

    with access.open_registry(config.registry.url) as registry:
        key = registry.add("alice", models=["digits"], tier="standard")[1].reveal()
    model: Predictor = Counting()  # type: ignore[assignment]
    gw = open_gateway(config, models={"digits": model}, random_state=0)
    rows = np.random.default_rng(4).random((12, 64)).round(3)

    async def send(concurrent: bool) -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=build_app(gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

            async def post(row: np.ndarray) -> dict[str, Any]:
                r = await client.post(
                    "/v1/models/digits/predict",
                    json={"inputs": [row.tolist()]},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert r.status_code == 200, r.text
                body: dict[str, Any] = r.json()
                return body

            if concurrent:
                return list(await asyncio.gather(*(post(r) for r in rows)))
            return [await post(r) for r in rows]

    try:
        one_by_one = asyncio.run(send(False))
        assert calls == [1] * 12
        calls.clear()
        together = asyncio.run(send(True))
    finally:
        gw.close()
    assert sum(calls) == 12
    assert len(calls) < 12, calls
    assert [b["labels"] for b in together] == [b["labels"] for b in one_by_one]
    for got, want in zip(together, one_by_one, strict=True):
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1.01e-3)
