"""Token bucket and row budget: pure arithmetic, memory store, Redis store across clients."""

from __future__ import annotations

import threading
import uuid

import pytest

from modelshield.gateway._limits import (
    LimitRule,
    MemoryLimitStore,
    RedisLimitStore,
    consume,
)

RULE = LimitRule(rate=10.0, burst=5, budget_rows=100, budget_seconds=3600.0)


def test_burst_then_rate_limited_with_retry_after() -> None:
    state = None
    for _ in range(5):
        state, d = consume(state, 1, RULE, 1000.0)
        assert d.allowed
    state, d = consume(state, 1, RULE, 1000.0)
    assert not d.allowed
    assert d.reason == "rate"
    assert d.retry_after == pytest.approx(0.1)
    state, d = consume(state, 1, RULE, 1000.1)
    assert d.allowed


def test_budget_counts_rows_not_requests() -> None:
    state, d = consume(None, 60, RULE, 0.0)
    assert d.allowed
    assert d.rows_used == 60
    state, d = consume(state, 41, RULE, 1.0)
    assert not d.allowed
    assert d.reason == "budget"
    assert d.retry_after == pytest.approx(3600.0 - 1.0)
    state, d = consume(state, 40, RULE, 2.0)
    assert d.allowed
    assert d.rows_used == 100


def test_budget_resets_in_the_next_window() -> None:
    state, _ = consume(None, 100, RULE, 10.0)
    _, d = consume(state, 1, RULE, 3600.0 + 10.0)
    assert d.allowed
    assert d.rows_used == 1


def test_lifetime_budget_has_no_retry() -> None:
    rule = LimitRule(rate=100.0, burst=10, budget_rows=3, budget_seconds=None)
    state, _ = consume(None, 3, rule, 0.0)
    _, d = consume(state, 1, rule, 10**9)
    assert d.reason == "budget"
    assert d.retry_after is None


def test_flags_block_and_throttle() -> None:
    _, d = consume(None, 1, RULE, 0.0, flag="block")
    assert (d.allowed, d.reason) == (False, "blocked")
    state = None
    for _ in range(5):
        state, _ = consume(state, 1, RULE, 0.0, flag="throttle")
    _, d = consume(state, 1, RULE, 0.0, flag="throttle")
    assert d.retry_after == pytest.approx(1.0)  # a tenth of the rate


def test_memory_store_is_exact_under_threads() -> None:
    store = MemoryLimitStore()
    rule = LimitRule(rate=1e9, burst=10**9, budget_rows=1000, budget_seconds=None)
    admitted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            d = store.consume("c", 3, rule, 0.0)
            if d.allowed:
                with lock:
                    admitted.append(3)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 999  # 333 batches of 3; the 334th would exceed 1000


@pytest.fixture
def redis_store(redis_url: str) -> RedisLimitStore:
    store = RedisLimitStore(redis_url, prefix=f"mstest-{uuid.uuid4().hex[:8]}")
    yield store  # type: ignore[misc]
    store.close()


def test_redis_store_matches_the_pure_arithmetic(redis_store: RedisLimitStore) -> None:
    state = None
    for i in range(12):
        now = 1000.0 + i * 0.05
        state, expected = consume(state, 7, RULE, now)
        got = redis_store.consume("c", 7, RULE, now)
        assert (got.allowed, got.reason, got.rows_used) == (
            expected.allowed,
            expected.reason,
            expected.rows_used,
        ), i


def test_redis_budget_is_exact_under_concurrency(
    redis_store: RedisLimitStore, redis_url: str
) -> None:
    rule = LimitRule(rate=1e9, burst=10**9, budget_rows=500, budget_seconds=None)
    admitted: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        store = RedisLimitStore(redis_url, prefix=redis_store._prefix)
        try:
            for _ in range(60):
                if store.consume("shared", 7, rule, 0.0).allowed:
                    with lock:
                        admitted.append(7)
        finally:
            store.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 497  # 71 batches of 7


def test_redis_flags(redis_store: RedisLimitStore) -> None:
    assert redis_store.get_flag("x") is None
    redis_store.set_flag("x", "block")
    assert redis_store.get_flag("x") == "block"
    assert redis_store.flags() == {"x": "block"}
    assert redis_store.consume("x", 1, RULE, 0.0).reason == "blocked"
    redis_store.set_flag("x", None)
    assert redis_store.consume("x", 1, RULE, 0.0).allowed
    with pytest.raises(ValueError, match="unknown flag"):
        redis_store.set_flag("x", "nuke")


def test_redis_down_is_service_unavailable() -> None:
    from modelshield.errors import ServiceUnavailableError

    store = RedisLimitStore("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        with pytest.raises(ServiceUnavailableError):
            store.consume("c", 1, RULE, 0.0)
    finally:
        store.close()
