"""Detection after the response: deferred batches, flushes before the next request, idle flush."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelshield import access, audit
from modelshield.config import load_config
from modelshield.demo import DemoData, DemoModel
from modelshield.detect import ResponsePolicy, Rule, TierPolicy
from modelshield.errors import AuthorizationError, ServiceUnavailableError
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.gateway._app import Gateway
from modelshield.gateway._detection import fit_and_calibrate
from modelshield.gateway._pipeline import admit
from modelshield.gateway._plugins import MAX_PENDING_ROWS, DetectionObserver
from modelshield.models import Predictor, load_model
from modelshield.stores import open_audit_store

from .conftest import write_config

BIG_TIER = (
    "[tiers.big]\nrequests_per_second = 100000.0\nburst = 100000\nbudget_rows = 1000000\n"
    "max_batch_rows = 400\noutput = ['probabilities']\n"
)


@pytest.fixture(scope="module")
def victim(demo_model: DemoModel) -> Predictor:
    return load_model(demo_model.onnx_bytes)


BLOCK = ResponsePolicy(
    {"standard": TierPolicy((Rule("alert"), Rule("block")))}, default_tier="standard"
)
ALERT_ONLY = ResponsePolicy({"standard": TierPolicy((Rule("alert"),))}, default_tier="standard")


@pytest.fixture(scope="module")
def fitted(victim: Predictor, demo_data: DemoData) -> Any:
    """A detector suite fitted and calibrated as the gateway does it (copied by each test)."""
    return fit_and_calibrate(victim, demo_data.x_train, demo_data.x_test[:225])


def _observer(suite: Any, policy: ResponsePolicy = BLOCK) -> DetectionObserver:
    return DetectionObserver(copy.deepcopy(suite), policy, group=None)


@pytest.fixture
def observer(fitted: Any) -> DetectionObserver:
    return _observer(fitted)


class RecordingSuite:
    """The real suite, recording the batches it is asked to observe."""

    def __init__(self, suite: Any) -> None:
        self.suite = suite
        self.batches: list[np.ndarray] = []

    def observe(self, client: str, inputs: Any, outputs: Any, now: float, **kw: Any) -> Any:
        self.batches.append(np.array(inputs))
        return self.suite.observe(client, inputs, outputs, now, **kw)


class Sink:
    """An audit sink keeping the entries it is given."""

    def __init__(self) -> None:
        self.entries: list[Any] = []

    async def record(self, entry: Any) -> None:
        self.entries.append(entry)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.random((n, 64))


def test_flush_waits_for_a_released_batch_then_observes_all_in_order(
    observer: DetectionObserver, victim: Predictor, demo_data: DemoData
) -> None:
    recording = RecordingSuite(observer.suite)
    observer.suite = recording
    parts = [demo_data.x_test[i * 5 : i * 5 + 5] for i in range(4)]
    for i, rows in enumerate(parts):
        assert observer.defer("c", rows, victim.predict_proba(rows), float(i), "standard") is False
    assert observer.flush("c", released_only=True) == (None, {})
    assert recording.batches == []  # none answered yet: nothing is observed
    observer.release("c")
    observer.flush("c", released_only=True)
    assert len(recording.batches) == 1
    np.testing.assert_array_equal(recording.batches[0], np.concatenate(parts))
    assert observer.pending_clients() == []
    assert observer.flush("c") == (None, {})  # nothing left


def test_a_flush_scores_like_one_batch_of_the_same_rows(
    observer: DetectionObserver, victim: Predictor
) -> None:
    twin = DetectionObserver(copy.deepcopy(observer.suite), BLOCK, group=None)
    rows = _noise(np.random.default_rng(1), 60)
    proba = victim.predict_proba(rows)
    for start in range(0, 60, 20):
        observer.defer("t", rows[start : start + 20], proba[start : start + 20], 5.0, "standard")
    got = observer.flush("t")
    want = twin.observe("t", rows, proba, 5.0, "standard")
    assert got[0] == want[0] == "block"
    assert got[1]["scores"] == want[1]["scores"]


def test_deferred_rows_per_client_are_bounded(
    observer: DetectionObserver, victim: Predictor
) -> None:
    rows = np.zeros((MAX_PENDING_ROWS // 4, 64))
    proba = victim.predict_proba(rows)
    results = [observer.defer("big", rows, proba, 0.0) for _ in range(4)]
    assert results == [False, False, False, True]
    assert observer.defer("other", rows[:1], proba[:1], 0.0) is False


def test_an_alert_is_raised_once_per_interval(
    fitted: Any, victim: Predictor, caplog: pytest.LogCaptureFixture
) -> None:
    alerting = _observer(fitted, ALERT_ONLY)
    rng = np.random.default_rng(2)
    alerts = []
    with caplog.at_level(logging.WARNING, logger="modelshield.gateway._plugins"):
        for i in range(12):
            rows = _noise(rng, 40)
            flag, evidence = alerting.observe("x", rows, victim.predict_proba(rows), i, "standard")
            assert flag is None
            alerts.append("alert" in evidence)
        rows = _noise(rng, 40)
        late = alerting.observe("x", rows, victim.predict_proba(rows), 100.0, "standard")
    assert sum(alerts) == 1  # the first alert only, within 60 s
    assert "alert" in late[1]  # and again once the interval has passed
    assert late[1]["alert"]["kind"] == "alert"
    assert len([r for r in caplog.records if "extraction alert" in r.message]) == 2


@pytest.fixture
def served(
    tmp_path: Path, victim: Predictor, fitted: Any
) -> Iterator[tuple[str, dict[str, str], Gateway, Any]]:
    config = load_config(write_config(tmp_path, BIG_TIER))
    keys = {}
    with access.open_registry(config.registry.url) as registry:
        for name in ("honest", "thief"):
            keys[name] = registry.add(name, models=["digits"], tier="big")[1].reveal()
    gateway = open_gateway(
        config,
        models={"digits": victim},
        observers={"digits": _observer(fitted)},
        random_state=0,
    )
    with ServerThread(build_app(gateway)) as server:
        yield server.url, keys, gateway, config


def _post(url: str, key: str, rows: np.ndarray) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/digits/predict",
        json={"inputs": rows.tolist()},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_client_that_stops_is_still_flagged_and_audited(
    served: tuple[str, dict[str, str], Gateway, Any],
) -> None:
    url, keys, gateway, config = served
    rows = _noise(np.random.default_rng(3), 300)
    assert _post(url, keys["thief"], rows).status_code == 200  # answered: detection follows
    deadline = time.monotonic() + 5.0
    while gateway.limits.get_flag("thief") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gateway.limits.get_flag("thief") == "block"  # without any further request
    assert gateway.limits.get_flag("honest") is None
    detected: list[dict[str, Any]] = []
    while not detected and time.monotonic() < deadline:  # its record follows the flag
        store = open_audit_store(config.audit.url)
        try:
            detected = [r for r in audit.export(store, client="thief") if r["decision"] == "detect"]
        finally:
            store.close()
        time.sleep(0.02)
    assert len(detected) == 1
    assert detected[0]["extra"]["flag"] == "block"
    assert detected[0]["extra"]["evidence"]["evidence"]  # detector, score, threshold, queries
    assert _post(url, keys["thief"], rows[:1]).status_code == 403


def test_the_next_request_is_refused_after_a_flagging_one(
    served: tuple[str, dict[str, str], Gateway, Any], demo_data: DemoData
) -> None:
    url, keys, gateway, _ = served
    gateway.idle_flush_seconds = 60.0  # only the next request can flush the thief's rows
    honest = demo_data.x_test[225:525]
    assert _post(url, keys["honest"], honest).status_code == 200
    rows = _noise(np.random.default_rng(4), 300)
    assert _post(url, keys["thief"], rows).status_code == 200
    assert gateway.limits.get_flag("thief") is None  # not observed yet
    assert _post(url, keys["thief"], rows[:1]).status_code == 403  # its rows first, then refused
    assert _post(url, keys["honest"], honest[:5]).status_code == 200


@pytest.fixture
def two_models(
    tmp_path: Path, victim: Predictor, fitted: Any
) -> Iterator[tuple[str, dict[str, str], Gateway]]:
    config = load_config(write_config(tmp_path, BIG_TIER))
    with access.open_registry(config.registry.url) as registry:
        key = registry.add("thief", models=["digits", "twin"], tier="big")[1].reveal()
    gateway = open_gateway(
        config,
        models={"digits": victim, "twin": victim},
        observers={"digits": _observer(fitted), "twin": _observer(fitted)},
        random_state=0,
    )
    gateway.idle_flush_seconds = 60.0  # only a request (or shutdown) flushes
    with ServerThread(build_app(gateway)) as server:
        yield server.url, {"thief": key}, gateway


def test_rows_sent_to_one_model_flag_the_client_on_another(
    two_models: tuple[str, dict[str, str], Gateway],
) -> None:
    url, keys, gateway = two_models
    assert gateway.limits.get_flag("thief") is None
    rows = _noise(np.random.default_rng(5), 300)
    assert _post(url, keys["thief"], rows).status_code == 200
    r = httpx.post(
        f"{url}/v1/models/twin/predict",
        json={"inputs": rows[:1].tolist()},
        headers={"Authorization": f"Bearer {keys['thief']}"},
        timeout=30,
    )
    assert r.status_code == 403  # flags are per client: the digits rows were observed first


class FlakyFlags:
    """The real in-memory limit store whose flag writes fail while ``down`` (a store outage)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def set_flag(self, client: str, flag: str | None) -> None:
        if self.down:
            raise ServiceUnavailableError("state store unavailable")
        self.inner.set_flag(client, flag)


def test_a_flag_that_could_not_be_set_is_set_once_the_store_returns(
    served: tuple[str, dict[str, str], Gateway, Any],
) -> None:
    url, keys, gateway, _ = served
    gateway.idle_flush_seconds = 60.0
    flaky = FlakyFlags(gateway.limits)
    gateway.limits = flaky
    rows = _noise(np.random.default_rng(6), 300)
    assert _post(url, keys["thief"], rows).status_code == 200
    flaky.down = True
    assert _post(url, keys["thief"], rows[:1]).status_code == 503  # the rows were observed now
    flaky.down = False
    assert _post(url, keys["thief"], rows[:1]).status_code == 403  # and their flag is not lost


def test_shutdown_observes_what_is_still_deferred(
    tmp_path: Path, victim: Predictor, fitted: Any
) -> None:
    config = load_config(write_config(tmp_path, BIG_TIER))
    with access.open_registry(config.registry.url) as registry:
        key = registry.add("thief", models=["digits"], tier="big")[1].reveal()
    gateway = open_gateway(
        config, models={"digits": victim}, observers={"digits": _observer(fitted)}
    )
    gateway.idle_flush_seconds = 60.0
    limits = gateway.limits
    with ServerThread(build_app(gateway)) as server:
        assert _post(server.url, key, _noise(np.random.default_rng(7), 300)).status_code == 200
        assert limits.get_flag("thief") is None
    assert limits.get_flag("thief") == "block"
    store = open_audit_store(config.audit.url)
    try:
        detected = [r for r in audit.export(store, client="thief") if r["decision"] == "detect"]
    finally:
        store.close()
    assert len(detected) == 1
    assert detected[0]["extra"]["flag"] == "block"


class RefusingDetectionRecords:
    """The gateway's real audit sink, refusing the records of off-request detections (an audit
    store that fails just then)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def record(self, entry: Any) -> None:
        if entry.decision == "detect":
            raise ServiceUnavailableError("audit store unavailable")
        await self.inner.record(entry)


def test_a_flag_whose_record_cannot_be_written_is_still_set_and_logged(
    served: tuple[str, dict[str, str], Gateway, Any], caplog: pytest.LogCaptureFixture
) -> None:
    url, keys, gateway, _ = served
    gateway.audit = RefusingDetectionRecords(gateway.audit)
    with caplog.at_level(logging.ERROR, logger="modelshield.gateway._app"):
        assert _post(url, keys["thief"], _noise(np.random.default_rng(8), 300)).status_code == 200
        deadline = time.monotonic() + 5.0
        while not any("was not recorded" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no error logged for the lost record"
            time.sleep(0.02)
    assert gateway.limits.get_flag("thief") == "block"  # fail closed: the flag holds
    assert _post(url, keys["thief"], _noise(np.random.default_rng(9), 1)).status_code == 403


@pytest.fixture
def bare_gateway(tmp_path: Path, victim: Predictor, fitted: Any) -> Iterator[Gateway]:
    """A gateway (no server) whose only observer records the batches its suite observes."""
    config = load_config(write_config(tmp_path, BIG_TIER))
    observer = _observer(fitted)
    observer.suite = RecordingSuite(observer.suite)
    gateway = open_gateway(config, models={"digits": victim}, observers={"digits": observer})
    gateway.idle_flush_seconds = 60.0
    try:
        yield gateway
    finally:
        gateway.close()


def _answered(gateway: Gateway, victim: Predictor, rows: np.ndarray) -> None:
    """What the gateway does for one answered batch of client ``c``: defer, then release."""
    observer = gateway.observers["digits"]
    observer.defer("c", rows, victim.predict_proba(rows), 1.0, "big")  # type: ignore[attr-defined]
    observer.release("c")  # type: ignore[attr-defined]


def test_requests_of_one_turn_share_one_flush_and_one_record_of_its_flag(
    bare_gateway: Gateway, victim: Predictor
) -> None:
    """Responses released between the arrivals of two requests in the same turn of the event
    loop are observed in one batch, before either request goes on; the flag acts on both and the
    first request's audit entry carries its evidence."""
    rng = np.random.default_rng(10)
    first, second = _noise(rng, 150), _noise(rng, 150)
    entries: list[dict[str, Any]] = [{}, {}]
    recording = bare_gateway.observers["digits"].suite  # type: ignore[attr-defined]

    async def scenario() -> list[str | None]:
        _answered(bare_gateway, victim, first)
        a = asyncio.ensure_future(bare_gateway._observe_earlier("c", entries[0]))
        released = asyncio.get_running_loop().create_future()

        def release_second() -> None:  # runs between the two requests, in the same turn
            _answered(bare_gateway, victim, second)
            released.set_result(None)

        asyncio.get_running_loop().call_soon(release_second)
        b = asyncio.ensure_future(bare_gateway._observe_earlier("c", entries[1]))
        await asyncio.gather(a, b, released)
        return [bare_gateway.limits.get_flag("c")]

    assert asyncio.run(scenario()) == ["block"]
    assert len(recording.batches) == 1  # one observation of both batches
    np.testing.assert_array_equal(recording.batches[0], np.concatenate([first, second]))
    assert entries[0]["extra"]["flag"] == "block"
    assert entries[0]["extra"]["evidence"]["evidence"]
    assert "extra" not in entries[1]  # the evidence is audited once


def test_a_request_without_released_rows_does_not_wait(
    bare_gateway: Gateway, victim: Predictor
) -> None:
    rows = _noise(np.random.default_rng(11), 20)
    observer = bare_gateway.observers["digits"]
    observer.defer("c", rows, victim.predict_proba(rows), 1.0, "big")  # type: ignore[attr-defined]
    entry: dict[str, Any] = {}
    asyncio.run(bare_gateway._observe_earlier("c", entry))  # answered by nobody yet
    assert observer.suite.batches == []  # type: ignore[attr-defined]
    assert observer.pending_clients() == ["c"]  # type: ignore[attr-defined]
    assert bare_gateway._waiting == {}


class FailingSuite(RecordingSuite):
    def observe(self, client: str, inputs: Any, outputs: Any, now: float, **kw: Any) -> Any:
        raise ServiceUnavailableError("detector state unavailable")


def test_a_failed_shared_flush_reaches_every_waiting_request(
    bare_gateway: Gateway, victim: Predictor
) -> None:
    observer = bare_gateway.observers["digits"]
    observer.suite = FailingSuite(observer.suite.suite)  # type: ignore[attr-defined]
    _answered(bare_gateway, victim, _noise(np.random.default_rng(12), 10))

    async def scenario() -> list[Any]:
        waits = [bare_gateway._observe_earlier("c", {}) for _ in range(3)]
        return await asyncio.gather(*waits, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [ServiceUnavailableError] * 3


@pytest.mark.parametrize("turns", [1, 2], ids=["before-the-flush", "after-the-flush"])
def test_a_flag_whose_requests_went_away_is_still_set_and_audited(
    bare_gateway: Gateway, victim: Predictor, turns: int
) -> None:
    """The waiting request is cancelled (say, its connection dropped) before the flush ran, or
    after the flush handed it the evidence but before it resumed: the flag is set and its
    evidence audited in a record of its own either way."""
    bare_gateway.audit = sink = Sink()
    _answered(bare_gateway, victim, _noise(np.random.default_rng(13), 300))

    async def scenario() -> None:
        waiting = asyncio.ensure_future(bare_gateway._observe_earlier("c", {}))
        for _ in range(turns):
            await asyncio.sleep(0)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await bare_gateway.drain()

    asyncio.run(scenario())
    assert bare_gateway.limits.get_flag("c") == "block"
    assert [(e.decision, e.extra["flag"]) for e in sink.entries] == [("detect", "block")]


def test_the_idle_flush_leaves_a_client_that_keeps_sending_to_its_next_requests(
    tmp_path: Path, victim: Predictor, fitted: Any, demo_data: DemoData
) -> None:
    """While a client keeps sending, its answered rows are observed by its own next requests
    (in batches as large as they come); the idle flush observes only the rows of a client that
    has gone quiet, ``idle_flush_seconds`` after its last request."""
    config = load_config(write_config(tmp_path, BIG_TIER))
    with access.open_registry(config.registry.url) as registry:
        key = registry.add("c", models=["digits"], tier="big")[1].reveal()
    observer = _observer(fitted, ALERT_ONLY)
    recording = RecordingSuite(observer.suite)
    observer.suite = recording
    gateway = open_gateway(config, models={"digits": victim}, observers={"digits": observer})
    gateway.idle_flush_seconds = 0.5  # a gap this long between two requests would be a fault
    by_idle_flush: list[int] = []  # rows each idle flush observed
    idle_flush = gateway._flush_idle

    def counting_idle_flush(*, everything: bool = False) -> None:
        before = sum(len(b) for b in recording.batches)
        idle_flush(everything=everything)
        by_idle_flush.append(sum(len(b) for b in recording.batches) - before)

    gateway._flush_idle = counting_idle_flush  # type: ignore[method-assign]
    rows = demo_data.x_test[:30]

    async def scenario() -> tuple[list[int], int]:
        transport = httpx.ASGITransport(app=build_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for row in rows:
                r = await client.post(
                    "/v1/models/digits/predict",
                    json={"inputs": [row.tolist()]},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert r.status_code == 200
                await asyncio.sleep(0.04)  # busy: far less than idle_flush_seconds apart
            while_busy = list(by_idle_flush)
            await asyncio.sleep(1.5)  # quiet: the idle flush takes the last row
        return while_busy, sum(len(b) for b in recording.batches)

    try:
        while_busy, observed = asyncio.run(scenario())
    finally:
        gateway.close()
    assert while_busy  # the idle flush ran while the client was busy ...
    assert sum(while_busy) == 0  # ... and left its rows to its next requests
    assert by_idle_flush[-1] == 1  # once quiet, it observed the last answered row
    assert observed == 30
    assert observer.pending_clients() == []


def test_a_request_queued_after_the_flush_sees_its_flag(
    bare_gateway: Gateway, victim: Predictor
) -> None:
    """The flush sets the flag itself: a request of the client that comes after the flush but
    before the waiting request resumes is refused too."""
    _answered(bare_gateway, victim, _noise(np.random.default_rng(14), 300))
    big = bare_gateway.tiers["big"]

    async def request() -> str:
        await bare_gateway._observe_earlier("c", {})
        try:
            admit(bare_gateway.limits, "c", big, 1, 0.0)
        except AuthorizationError:
            return "refused"
        return "admitted"

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(request())  # waits for the flush at the end of the turn
        await asyncio.sleep(0)
        second = asyncio.ensure_future(request())  # runs after the flush, before `first`
        return list(await asyncio.gather(first, second))

    assert asyncio.run(scenario()) == ["refused", "refused"]


def test_a_failing_model_does_not_lose_another_models_flag(
    tmp_path: Path, victim: Predictor, fitted: Any
) -> None:
    config = load_config(write_config(tmp_path, BIG_TIER))
    failing = _observer(fitted)
    failing.suite = FailingSuite(failing.suite)
    gateway = open_gateway(
        config,
        models={"digits": victim, "twin": victim},
        observers={"digits": _observer(fitted), "twin": failing},
    )
    gateway.audit = sink = Sink()
    rows = _noise(np.random.default_rng(15), 300)
    for observer in gateway.observers.values():
        observer.defer("c", rows, victim.predict_proba(rows), 1.0, "big")  # type: ignore[attr-defined]
        observer.release("c")  # type: ignore[attr-defined]

    async def scenario() -> Any:
        outcome = await asyncio.gather(gateway._observe_earlier("c", {}), return_exceptions=True)
        await gateway.drain()
        return outcome[0]

    try:
        outcome = asyncio.run(scenario())
    finally:
        gateway.close()
    assert isinstance(outcome, ServiceUnavailableError)  # the request hears of the failure
    assert gateway.limits.get_flag("c") == "block"  # but the digits model's flag is set
    assert [(e.decision, e.extra["flag"]) for e in sink.entries] == [("detect", "block")]


def test_a_request_carrying_an_earlier_flag_leaves_a_new_flags_evidence_its_own_record(
    bare_gateway: Gateway, victim: Predictor
) -> None:
    """A flag kept from a store outage is set, and audited, with this request; a stronger flag
    the shared flush finds then gets a detection record of its own, so neither evidence is
    lost."""
    bare_gateway.audit = sink = Sink()
    bare_gateway._unapplied["c"] = ("throttle", {"evidence": "kept from an outage"})
    _answered(bare_gateway, victim, _noise(np.random.default_rng(17), 300))
    entry: dict[str, Any] = {}

    async def scenario() -> None:
        await bare_gateway._observe_earlier("c", entry)
        await bare_gateway.drain()

    asyncio.run(scenario())
    assert entry["extra"]["flag"] == "throttle"
    assert bare_gateway.limits.get_flag("c") == "block"
    assert [(e.decision, e.extra["flag"]) for e in sink.entries] == [("detect", "block")]
