"""Detector state shared between replicas through a state store (Redis, PostgreSQL).

Each "replica" is a DetectionObserver with its own copy of the fitted suite; they share only the
store. The last test runs two real gateways on loopback ports against real Redis.
"""

from __future__ import annotations

import copy
import logging
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelshield import access
from modelshield.config import load_config
from modelshield.demo import DemoData, DemoModel
from modelshield.detect import ResponsePolicy, Rule, TierPolicy
from modelshield.errors import ServiceUnavailableError
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.gateway._detection import fit_and_calibrate
from modelshield.gateway._plugins import CLEARED, DetectionObserver, state_key
from modelshield.models import Predictor, load_model
from modelshield.stores import (
    ABSENT,
    DetectorStateStore,
    MemoryDetectorStateStore,
    RedisDetectorStateStore,
)

from .conftest import write_config

BLOCK = ResponsePolicy(
    {"standard": TierPolicy((Rule("alert"), Rule("block")))}, default_tier="standard"
)


@pytest.fixture(scope="module")
def victim(demo_model: DemoModel) -> Predictor:
    return load_model(demo_model.onnx_bytes)


@pytest.fixture(scope="module")
def fitted(victim: Predictor, demo_data: DemoData) -> Any:
    return fit_and_calibrate(victim, demo_data.x_train, demo_data.x_test[:225])


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisDetectorStateStore]:
    import redis

    prefix = f"ms-test-{uuid.uuid4().hex[:12]}"
    store = RedisDetectorStateStore(redis_url, prefix=prefix)
    yield store
    store.close()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def _replica(fitted: Any, store: DetectorStateStore | None, **kw: Any) -> DetectionObserver:
    return DetectionObserver(
        copy.deepcopy(fitted), BLOCK, group="*", state=store, namespace="digits", **kw
    )


def _batches(victim: Predictor, n: int, size: int, seed: int) -> list[tuple[Any, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.random((size, 64))
        out.append((x, victim.predict_proba(x)))
    return out


def _seen(observer: DetectionObserver, client: str) -> int:
    return int(observer.suite.detector("prada").peek(client).queries_seen)


def _first_flag(observers: list[DetectionObserver], batches: list[tuple[Any, Any]]) -> int | None:
    for i, (x, p) in enumerate(batches):
        flag, _ = observers[i % len(observers)].observe("thief", x, p, float(i))
        if flag is not None:
            return i
    return None


def test_a_client_spread_over_two_replicas_is_observed_on_all_its_rows(
    fitted: Any, victim: Predictor, redis_store: RedisDetectorStateStore
) -> None:
    batches = _batches(victim, 12, 10, seed=1)
    alone = _first_flag([_replica(fitted, None)], batches)
    assert alone is not None
    a, b = _replica(fitted, redis_store), _replica(fitted, redis_store)
    assert _first_flag([a, b], batches) == alone  # flagged on the same row as one process
    # and without the shared store each replica sees half of the rows and flags later or never
    c, d = _replica(fitted, None), _replica(fitted, None)
    split = _first_flag([c, d], batches)
    assert split is None or split > alone
    # every row is in the shared state: a third replica picks it up from the store
    a.observe("thief", *batches[0], 100.0)
    fresh = _replica(fitted, redis_store)
    x, p = batches[1]
    fresh.observe("thief", x, p, 101.0)
    assert _seen(fresh, "thief") == 10 * (alone + 1) + 20


class HookedStore:
    """A memory store that runs ``before_save`` once, just before the next save."""

    def __init__(self) -> None:
        self.inner = MemoryDetectorStateStore()
        self.before_save: Callable[[], None] | None = None
        self.down = False
        self.saves = 0

    def load(self, key: str, known: str) -> tuple[str, bytes | None]:
        if self.down:
            raise ServiceUnavailableError("detector state store unavailable: test")
        return self.inner.load(key, known)

    def save(self, updates: Mapping[str, tuple[str, bytes]]) -> dict[str, str] | None:
        if self.down:
            raise ServiceUnavailableError("detector state store unavailable: test")
        hook, self.before_save = self.before_save, None
        if hook is not None:
            hook()
        self.saves += 1
        return self.inner.save(updates)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def claim(self, key: str, seconds: float, now: float) -> bool:
        if self.down:
            raise ServiceUnavailableError("detector state store unavailable: test")
        return self.inner.claim(key, seconds, now)

    def release(self, key: str) -> None:
        self.inner.release(key)

    def close(self) -> None:
        return None


def test_a_save_that_lost_the_race_is_observed_again_on_the_winner_state(
    fitted: Any, victim: Predictor
) -> None:
    store = HookedStore()
    a, b = _replica(fitted, store), _replica(fitted, store)
    (x1, p1), (x2, p2), (x3, p3) = _batches(victim, 3, 7, seed=2)
    a.observe("alice", x1, p1, 0.0)
    # b saves alice's state between a's load and a's save
    store.before_save = lambda: b.observe("alice", x2, p2, 1.0)
    a.observe("alice", x3, p3, 2.0)
    assert store.saves == 7  # a (client, group), b (both), a's client refused, a again (both)
    check = _replica(fitted, store)
    check.observe("alice", x1[:1], p1[:1], 3.0)
    assert _seen(check, "alice") == 7 + 7 + 7 + 1  # nothing lost, nothing counted twice


def test_an_outage_of_the_store_keeps_detection_going_and_is_saved_after(
    fitted: Any, victim: Predictor, caplog: pytest.LogCaptureFixture
) -> None:
    store = HookedStore()
    a = _replica(fitted, store, store_retry=0.0)  # try the store again at once
    batches = _batches(victim, 3, 5, seed=3)
    a.observe("alice", *batches[0], 0.0)
    store.down = True
    with caplog.at_level(logging.WARNING, logger="modelshield.gateway._plugins"):
        a.observe("alice", *batches[1], 1.0)
    assert "detector state not shared" in caplog.text
    assert _seen(a, "alice") == 10  # observed on the state this replica holds
    store.down = False
    a.observe("alice", *batches[2], 2.0)
    check = _replica(fitted, store)
    check.observe("alice", *batches[0], 3.0)
    assert _seen(check, "alice") == 20  # the rows of the outage reached the store


def test_at_most_max_cached_clients_stay_in_memory(fitted: Any, victim: Predictor) -> None:
    store = MemoryDetectorStateStore()
    a = _replica(fitted, store, max_cached=2)
    x, p = _batches(victim, 1, 4, seed=4)[0]
    for client in ("c1", "c2", "c3"):
        a.observe(client, x, p, 0.0)
    prada = a.suite.detector("prada")
    assert set(prada.clients()) == {"c2", "c3"}
    a.observe("c1", x, p, 1.0)  # back from the store, not from zero
    assert _seen(a, "c1") == 8


def test_a_client_first_seen_in_an_outage_keeps_its_rows_unless_another_replica_wrote_it(
    fitted: Any, victim: Predictor
) -> None:
    store = HookedStore()
    a, b = _replica(fitted, store, store_retry=0.0), _replica(fitted, store)
    b1, b2, b3 = _batches(victim, 3, 5, seed=10)
    store.down = True
    a.observe("newbie", *b1, 0.0)
    a.observe("other", *b1, 0.0)
    store.down = False
    b.observe("other", *b3, 0.5)  # another replica writes "other" meanwhile
    a.observe("newbie", *b2, 1.0)
    a.observe("other", *b2, 1.0)
    assert _seen(a, "newbie") == 10  # the store had nothing: the outage rows stand
    assert _seen(a, "other") == 10  # b's 5 rows, then these 5 (a's outage rows left)
    check = _replica(fitted, store)
    check.observe("newbie", b1[0][:1], b1[1][:1], 2.0)
    assert _seen(check, "newbie") == 11


def test_eviction_keeps_the_states_the_store_lacks_and_saves_them_first(
    fitted: Any, victim: Predictor
) -> None:
    store = HookedStore()
    a = _replica(fitted, store, max_cached=2, store_retry=0.0)
    x, p = _batches(victim, 1, 4, seed=8)[0]
    store.down = True
    a.observe("c1", x, p, 0.0)  # unsaved, and the least recently observed
    store.down = False
    a.observe("c2", x, p, 1.0)  # saved
    store.down = True
    a.observe("c3", x, p, 2.0)  # one too many: c2 (in the store) goes, not c1
    assert set(a.suite.detector("prada").clients()) == {"c1", "c3"}
    store.down = False
    a.observe("c4", x, p, 3.0)  # the store is back: c1 is saved, then dropped
    assert set(a.suite.detector("prada").clients()) == {"c3", "c4"}
    check = _replica(fitted, store)
    for client in ("c1", "c2", "c4"):
        check.observe(client, x[:1], p[:1], 4.0)
        assert _seen(check, client) == 5, client  # every observed row reached the store


def test_a_client_that_just_failed_to_save_is_not_the_one_dropped(
    fitted: Any, victim: Predictor
) -> None:
    store = HookedStore()
    a = _replica(fitted, store, max_cached=2, store_retry=0.0)
    x, p = _batches(victim, 1, 4, seed=22)[0]
    a.observe("old1", x, p, 0.0)
    a.observe("old2", x, p, 1.0)
    real_save, calls = store.save, []

    def blip(updates: Mapping[str, tuple[str, bytes]]) -> dict[str, str] | None:
        calls.append(updates)
        if len(calls) == 1:  # the save of "new" fails once; the store answers again at once
            raise ServiceUnavailableError("detector state store unavailable: test")
        return real_save(updates)

    store.save = blip  # type: ignore[method-assign]
    a.observe("new", x, p, 2.0)
    assert set(a.suite.detector("prada").clients()) == {"old2", "new"}


def test_a_client_cleared_elsewhere_during_an_outage_is_not_written_back(
    fitted: Any, victim: Predictor
) -> None:
    """Replica a, cut off from the store, sees a client first; replica b observes it and an
    admin clears it through b. When a reaches the store again it drops its rows from before the
    clear instead of writing them back (the store holds a cleared state, not nothing)."""
    store = HookedStore()
    a_path = HookedStore()
    a_path.inner = store.inner  # a's own route to the same store, which can fail alone
    a, b = _replica(fitted, a_path, store_retry=0.0), _replica(fitted, store)
    (x1, p1), (x2, p2), (x3, p3) = _batches(victim, 3, 6, seed=21)
    a_path.down = True
    a.observe("c", x1, p1, 0.0)
    b.observe("c", x2, p2, 1.0)
    b.forget("c")
    a_path.down = False
    a.observe("c", x3, p3, 2.0)
    assert _seen(a, "c") == 6  # afresh: the clear won over the rows a held
    check = _replica(fitted, store)
    check.observe("c", x3[:1], p3[:1], 3.0)
    assert _seen(check, "c") == 7


def test_with_the_store_down_memory_stays_bounded_and_the_loss_is_logged(
    fitted: Any, victim: Predictor, caplog: pytest.LogCaptureFixture
) -> None:
    store = HookedStore()
    store.down = True
    a = _replica(fitted, store, max_cached=2, store_retry=0.0)
    x, p = _batches(victim, 1, 4, seed=9)[0]
    with caplog.at_level(logging.WARNING, logger="modelshield.gateway._plugins"):
        for client in ("c1", "c2", "c3"):
            a.observe(client, x, p, 0.0)
    assert set(a.suite.detector("prada").clients()) == {"c2", "c3"}
    assert "detector state of client c1 dropped before the store had its latest rows" in (
        caplog.text
    )


def test_an_unreadable_state_in_the_store_is_replaced(
    fitted: Any, victim: Predictor, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryDetectorStateStore()
    assert store.save({state_key("digits", "alice"): (ABSENT, b"not a detector state")}) is not None
    a = _replica(fitted, store)
    x, p = _batches(victim, 1, 4, seed=5)[0]
    with caplog.at_level(logging.ERROR, logger="modelshield.gateway._plugins"):
        a.observe("alice", x, p, 0.0)
    assert "unreadable detector state" in caplog.text
    assert _seen(a, "alice") == 4
    check = _replica(fitted, store)
    check.observe("alice", x, p, 1.0)
    assert _seen(check, "alice") == 8  # the store now holds a valid state


def _npy(path: Path, rows: np.ndarray) -> None:
    np.save(path, rows)


def test_two_gateways_on_redis_block_a_thief_who_alternates_between_them(
    tmp_path: Path, demo_model: DemoModel, demo_data: DemoData, redis_url: str
) -> None:
    thief = f"thief-{uuid.uuid4().hex[:8]}"
    tier = (
        "[tiers.open]\nrequests_per_second = 100000.0\nburst = 100000\nbudget_rows = 1000000\n"
        "max_batch_rows = 100\noutput = ['probabilities']\n"
        f"[state]\nurl = '{redis_url}'\n"
        "[detection]\nenabled = true\nreference = 'ref.npy'\ncalibration = 'cal.npy'\n"
    )
    dirs = [tmp_path / "a", tmp_path / "b"]
    configs = []
    for d in dirs:
        d.mkdir()
        _npy(d / "ref.npy", demo_data.x_train)
        _npy(d / "cal.npy", demo_data.x_test[:225])
        configs.append(load_config(write_config(d, tier)))
    with access.open_registry(configs[0].registry.url) as registry:
        key = registry.add(thief, models=["digits"], tier="open")[1].reveal()
    shutil.copy(dirs[0] / "state" / "registry.db", dirs[1] / "state" / "registry.db")
    predictor = load_model(demo_model.onnx_bytes)
    gateways = [open_gateway(c, models={"digits": predictor}, random_state=0) for c in configs]
    observers = [g.observers["digits"] for g in gateways]
    assert all(o.state is not None for o in observers)  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    statuses: list[int] = []
    try:
        with ServerThread(build_app(gateways[0])) as s0, ServerThread(build_app(gateways[1])) as s1:
            urls = [s0.url, s1.url]
            for i in range(20):  # 10 rows of noise per request, alternating, at most 200 rows
                r = httpx.post(
                    f"{urls[i % 2]}/v1/models/digits/predict",
                    json={"inputs": rng.random((10, 64)).tolist()},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=30,
                )
                statuses.append(r.status_code)
                if r.status_code != 200:
                    break
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        for k in client.scan_iter(f"modelshield*{thief}*"):
            client.delete(k)
        client.close()
    assert statuses[-1] == 403, statuses
    # both gateways' detectors saw the thief's rows: the state in the store counts all of them
    seen = [_seen(o, thief) for o in observers]  # type: ignore[arg-type]
    assert max(seen) == 10 * (len(statuses) - 1)


def test_forget_drops_the_client_here_and_in_the_store(fitted: Any, victim: Predictor) -> None:
    store = MemoryDetectorStateStore()
    a, b = _replica(fitted, store), _replica(fitted, store)
    x, p = _batches(victim, 1, 4, seed=6)[0]
    a.observe("alice", x, p, 0.0)
    a.observe("bob", x, p, 0.0)
    a.defer("alice", x, p, 1.0)
    a.forget("alice")
    assert "alice" not in a.suite.detector("prada").clients()
    assert a.pending_clients() == []
    assert store.load(state_key("digits", "alice"), "?")[1] == CLEARED
    b.observe("alice", x, p, 2.0)
    assert _seen(b, "alice") == 4  # afresh
    b.observe("bob", x, p, 2.0)
    assert _seen(b, "bob") == 8  # others untouched


class AlwaysRacing(HookedStore):
    """Every save loses the race: another replica always wrote first."""

    def save(self, updates: Mapping[str, tuple[str, bytes]]) -> dict[str, str] | None:
        self.saves += 1
        return None


def test_a_batch_that_never_wins_the_race_is_still_observed_and_logged(
    fitted: Any, victim: Predictor, caplog: pytest.LogCaptureFixture
) -> None:
    store = AlwaysRacing()
    a = _replica(fitted, store)
    x, p = _batches(victim, 1, 30, seed=7)[0]
    with caplog.at_level(logging.WARNING, logger="modelshield.gateway._plugins"):
        _, evidence = a.observe("alice", x, p, 0.0)
    assert store.saves == 5  # bounded: it gives up after five tries (the client's key only)
    assert "kept changing on other replicas" in caplog.text
    assert _seen(a, "alice") == 30  # observed once on the last state read, not five times
    assert evidence["scores"]  # and the verdict of that observation is returned


def test_a_clear_that_never_gets_through_raises_and_drops_nothing(
    fitted: Any, victim: Predictor
) -> None:
    """Clearing is a compare-and-set too: when other replicas keep writing the client, it gives
    up after five tries with an error, and this replica keeps everything it had."""
    store = AlwaysRacing()
    a = _replica(fitted, store)
    x, p = _batches(victim, 1, 6, seed=11)[0]
    a.observe("alice", x, p, 0.0)
    store.saves = 0
    with pytest.raises(ServiceUnavailableError, match="not cleared"):
        a.forget("alice")
    assert store.saves == 5
    assert _seen(a, "alice") == 6


def test_an_alert_is_raised_by_one_replica_per_interval(
    fitted: Any, victim: Predictor, redis_store: RedisDetectorStateStore
) -> None:
    alert_only = ResponsePolicy({"standard": TierPolicy((Rule("alert"),))}, default_tier="standard")
    replicas = [
        DetectionObserver(
            copy.deepcopy(fitted), alert_only, group=None, state=redis_store, namespace="digits"
        )
        for _ in range(2)
    ]
    raised = []
    for i, (x, p) in enumerate(_batches(victim, 12, 10, seed=8)):
        _, evidence = replicas[i % 2].observe("thief", x, p, float(i))
        raised.append("alert" in evidence)
    # the noise thief trips the detectors on both replicas, but only the first alert goes out
    assert sum(raised) == 1, raised


def test_a_cleared_client_alerts_again_at_once_on_every_replica(
    fitted: Any, victim: Predictor, redis_store: RedisDetectorStateStore
) -> None:
    """Clearing a flag also ends the client's alert claim: a new attack raises an alert within
    the interval, on any replica."""
    alert_only = ResponsePolicy({"standard": TierPolicy((Rule("alert"),))}, default_tier="standard")
    a, b = (
        DetectionObserver(
            copy.deepcopy(fitted), alert_only, group=None, state=redis_store, namespace="digits"
        )
        for _ in range(2)
    )
    batches = _batches(victim, 16, 10, seed=9)
    raised = ["alert" in a.observe("thief", x, p, float(i))[1] for i, (x, p) in enumerate(batches)]
    assert sum(raised) == 1  # then held back by the claim
    a.forget("thief")  # an admin cleared the flag (on replica a)
    again = ["alert" in b.observe("thief", x, p, 20.0 + i)[1] for i, (x, p) in enumerate(batches)]
    assert sum(again) == 1  # replica b alerts again, within the same minute


def test_an_unreachable_store_still_lets_alerts_out(fitted: Any, victim: Predictor) -> None:
    store = HookedStore()
    alert_only = ResponsePolicy({"standard": TierPolicy((Rule("alert"),))}, default_tier="standard")
    a = DetectionObserver(copy.deepcopy(fitted), alert_only, group=None, state=store)
    store.down = True
    raised = [
        "alert" in a.observe("thief", x, p, float(i))[1]
        for i, (x, p) in enumerate(_batches(victim, 12, 10, seed=9))
    ]
    assert sum(raised) == 1  # raised once, then rate-limited by this replica as before


class CountingStore(HookedStore):
    """A HookedStore that counts every call reaching it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def load(self, key: str, known: str) -> tuple[str, bytes | None]:
        self.calls += 1
        return super().load(key, known)

    def save(self, updates: Mapping[str, tuple[str, bytes]]) -> dict[str, str] | None:
        self.calls += 1
        return super().save(updates)


def test_a_failing_store_is_left_alone_for_a_while(fitted: Any, victim: Predictor) -> None:
    # the observations run on the event loop: an unreachable store must not cost a timeout each
    store = CountingStore()
    store.down = True
    a = _replica(fitted, store, store_retry=60.0)
    for i, (x, p) in enumerate(_batches(victim, 5, 4, seed=10)):
        a.observe("alice", x, p, float(i))
    assert store.calls == 1
    assert _seen(a, "alice") == 20  # detection went on with this process's state


def test_a_lost_race_then_a_failed_reload_does_not_count_the_batch_twice(
    fitted: Any, victim: Predictor
) -> None:
    store = HookedStore()
    a = _replica(fitted, store, store_retry=0.0)
    b = _replica(fitted, store)
    (x1, p1), (x2, p2), (x3, p3) = _batches(victim, 3, 7, seed=11)
    a.observe("alice", x1, p1, 0.0)

    def race_then_outage() -> None:
        b.observe("alice", x2, p2, 1.0)
        store.down = True

    store.before_save = race_then_outage
    a.observe("alice", x3, p3, 2.0)
    assert _seen(a, "alice") == 7  # this batch once, on an empty state; never 7 + 7 + 7
    store.down = False
    check = _replica(fitted, store)
    check.observe("alice", x1[:1], p1[:1], 3.0)
    assert _seen(check, "alice") == 15  # the store kept b's state: 7 + 7, plus this row
