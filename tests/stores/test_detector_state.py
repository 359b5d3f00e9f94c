"""Detector state stores: the same compare-and-set contract in memory, Redis and PostgreSQL.

Two handles on one store stand for two gateway replicas. Redis and PostgreSQL are real servers
on 127.0.0.1 (a unique key prefix or schema per test, removed afterwards).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from modelshield.errors import ConfigError, ServiceUnavailableError
from modelshield.stores import (
    ABSENT,
    DetectorStateStore,
    MemoryDetectorStateStore,
    PostgresDetectorStateStore,
    RedisDetectorStateStore,
    open_detector_state_store,
)

Factory = Callable[[], DetectorStateStore]


@pytest.fixture(params=["memory", "redis", "postgres"])
def handles(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """A function returning a new handle on this test's shared store."""
    opened: list[DetectorStateStore] = []
    if request.param == "memory":
        shared = MemoryDetectorStateStore()

        def make() -> DetectorStateStore:
            return shared

    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = f"ms-test-{uuid.uuid4().hex[:12]}"

        def make() -> DetectorStateStore:
            store = RedisDetectorStateStore(url, prefix=prefix)
            opened.append(store)
            return store

    else:
        dsn, schema = request.getfixturevalue("pg_schema")

        def make() -> DetectorStateStore:
            store = PostgresDetectorStateStore(dsn, schema=schema)
            opened.append(store)
            return store

    yield make
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
    for store in opened:
        store.close()


def test_absent_key_then_first_save_then_unchanged_load(handles: Factory) -> None:
    a, b = handles(), handles()
    assert a.load("m:alice", "?") == (ABSENT, None)
    saved = a.save({"m:alice": (ABSENT, b"state-1")})
    assert saved is not None
    version = saved["m:alice"]
    assert version != ABSENT
    assert b.load("m:alice", "?") == (version, b"state-1")
    assert b.load("m:alice", version) == (version, None)  # nothing transferred when unchanged


def test_a_stale_save_changes_nothing(handles: Factory) -> None:
    a, b = handles(), handles()
    v1 = a.save({"m:alice": (ABSENT, b"one")})
    assert v1 is not None
    v2 = b.save({"m:alice": (v1["m:alice"], b"two")})
    assert v2 is not None
    # a still believes version v1: its save is refused and "two" stays
    assert a.save({"m:alice": (v1["m:alice"], b"three")}) is None
    assert a.save({"m:alice": (ABSENT, b"three")}) is None  # nor may it recreate the key
    assert a.load("m:alice", v1["m:alice"]) == (v2["m:alice"], b"two")


def test_a_save_of_several_keys_is_all_or_nothing(handles: Factory) -> None:
    a, b = handles(), handles()
    first = a.save({"m:alice": (ABSENT, b"a1"), "m:group:*": (ABSENT, b"g1")})
    assert first is not None
    moved = b.save({"m:group:*": (first["m:group:*"], b"g2")})
    assert moved is not None
    # alice's part would fit, the group's is stale: neither is written
    assert (
        a.save({"m:alice": (first["m:alice"], b"a2"), "m:group:*": (first["m:group:*"], b"gx")})
        is None
    )
    assert b.load("m:alice", "?") == (first["m:alice"], b"a1")
    assert b.load("m:group:*", "?") == (moved["m:group:*"], b"g2")


def test_delete_then_a_new_state_gets_a_new_version(handles: Factory) -> None:
    a, b = handles(), handles()
    old = a.save({"m:alice": (ABSENT, b"old")})
    assert old is not None
    b.delete("m:alice")
    assert a.load("m:alice", old["m:alice"]) == (ABSENT, None)
    new = b.save({"m:alice": (ABSENT, b"new")})
    assert new is not None
    # a replica holding the old version must see the new state, never take it for its own
    assert new["m:alice"] != old["m:alice"]
    assert a.load("m:alice", old["m:alice"]) == (new["m:alice"], b"new")


def test_large_binary_state_round_trips(handles: Factory) -> None:
    blob = bytes(range(256)) * 800  # 200 KB with every byte value, including NULs
    store = handles()
    saved = store.save({"m:big": (ABSENT, blob)})
    assert saved is not None
    assert handles().load("m:big", "?") == (saved["m:big"], blob)


def test_a_claim_is_granted_once_per_interval_across_handles(handles: Factory) -> None:
    import time

    a, b = handles(), handles()
    now = time.time()
    assert a.claim("m:alert:alice", 0.3, now)
    assert not b.claim("m:alert:alice", 0.3, now + 0.1)
    assert b.claim("m:alert:bob", 0.3, now + 0.1)  # per key
    time.sleep(0.4)  # Redis times claims out on its own clock
    assert b.claim("m:alert:alice", 0.3, now + 0.4)
    assert not a.claim("m:alert:alice", 0.3, now + 0.5)


def test_a_released_claim_is_granted_again(handles: Factory) -> None:
    import time

    a, b = handles(), handles()
    now = time.time()
    assert a.claim("m:alert:carol", 60.0, now)
    assert not b.claim("m:alert:carol", 60.0, now + 1)
    b.release("m:alert:carol")
    assert a.claim("m:alert:carol", 60.0, now + 2)  # within the minute, on another handle
    assert not b.claim("m:alert:carol", 60.0, now + 3)
    a.release("m:alert:nobody")  # releasing what nobody claimed is fine


def test_redis_keys_expire_when_idle(redis_url: str) -> None:
    import redis

    prefix = f"ms-test-{uuid.uuid4().hex[:12]}"
    store = RedisDetectorStateStore(redis_url, prefix=prefix, ttl=120)
    client = redis.Redis.from_url(redis_url)
    try:
        assert store.save({"m:alice": (ABSENT, b"x")}) is not None
        assert 0 < client.pttl(f"{prefix}:m:alice") <= 120_000
    finally:
        client.delete(f"{prefix}:m:alice")
        client.close()
        store.close()


def test_postgres_purges_rows_idle_past_the_ttl(pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    now = [1_000_000.0]
    store = PostgresDetectorStateStore(dsn, schema=schema, ttl=100, clock=lambda: now[0])
    try:
        assert store.save({"m:old": (ABSENT, b"x")}) is not None
        now[0] += 4000  # past the ttl and past the hourly purge
        assert store.save({"m:new": (ABSENT, b"y")}) is not None
        assert store.load("m:old", "?") == (ABSENT, None)
        assert store.load("m:new", "?")[1] == b"y"
    finally:
        store.close()


def test_an_unreachable_server_is_a_service_error() -> None:
    store = RedisDetectorStateStore("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        with pytest.raises(ServiceUnavailableError):
            store.load("m:alice", "?")
        with pytest.raises(ServiceUnavailableError):
            store.save({"m:alice": (ABSENT, b"x")})
        with pytest.raises(ServiceUnavailableError):
            store.delete("m:alice")
    finally:
        store.close()
    with pytest.raises(ServiceUnavailableError):
        PostgresDetectorStateStore("postgresql://postgres@127.0.0.1:1/postgres", timeout=1)


def test_open_by_url() -> None:
    assert isinstance(open_detector_state_store("memory://"), MemoryDetectorStateStore)
    with pytest.raises(ConfigError, match="unsupported scheme 'sqlite'"):
        open_detector_state_store("sqlite:///x.db")
