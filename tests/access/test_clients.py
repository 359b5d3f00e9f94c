"""The client registry on every backend: authenticate, each refusal, expiry, revoke, rotate,
suspend, and changes made by another replica honoured within one second."""

from __future__ import annotations

import logging
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modelshield.access import (
    CLIENT_PREFIX,
    Client,
    ClientRegistry,
    CredentialsRejected,
    DuplicateNameError,
    RegistryStore,
    RejectReason,
    Status,
    StoredClient,
    UnknownNameError,
    generate_key,
    hash_secret,
    open_admin_registry,
    open_registry,
)
from modelshield.access._keys import format_key, parse_key
from modelshield.config import Secret
from modelshield.errors import AuthenticationError, InvalidInputError, ServiceUnavailableError

StoreFactory = Callable[[], RegistryStore]

T0 = 1_800_000_000.0


@pytest.fixture
def registry(store_factory: StoreFactory) -> ClientRegistry:
    return ClientRegistry(store_factory())


def _refused(registry: ClientRegistry, key: str | Secret, now: float) -> RejectReason:
    with pytest.raises(AuthenticationError) as info:
        registry.authenticate(key, now)
    error = info.value
    assert isinstance(error, CredentialsRejected)
    assert str(error) == "authentication failed"  # the same message whatever the reason
    return error.reason


def test_authenticate_returns_the_client(registry: ClientRegistry) -> None:
    client, key = registry.add("alice", models=["digits", "iris"], tier="gold", now=T0)
    assert isinstance(key, Secret)
    got = registry.authenticate(key, T0 + 1)
    assert got == client
    assert got.name == "alice"
    assert got.tier == "gold"
    assert got.status is Status.ACTIVE
    assert registry.authenticate(key.reveal(), T0 + 2) == client  # str works too
    assert got.may_use("digits")
    assert got.may_use("iris")
    assert not got.may_use("other")
    assert not got.may_use("")


def test_default_tier_is_standard(registry: ClientRegistry) -> None:
    client, _ = registry.add("bob", models=["digits"], now=T0)
    assert client.tier == "standard"


def test_malformed_and_wrong_prefix(registry: ClientRegistry) -> None:
    _, key = registry.add("alice", models=["digits"], now=T0)
    text = key.reveal()
    assert _refused(registry, "", T0) is RejectReason.MALFORMED
    assert _refused(registry, "Bearer " + text, T0) is RejectReason.MALFORMED
    assert _refused(registry, text[:-1] + ("A" if text[-1] != "A" else "B"), T0) is (
        RejectReason.MALFORMED
    )
    _, admin_key = generate_key("msa")
    assert _refused(registry, admin_key, T0) is RejectReason.WRONG_PREFIX


def test_unknown_key_id(registry: ClientRegistry) -> None:
    registry.add("alice", models=["digits"], now=T0)
    _, stranger = generate_key(CLIENT_PREFIX)
    assert _refused(registry, stranger, T0) is RejectReason.UNKNOWN_KEY
    assert _refused(registry, stranger, T0) is RejectReason.UNKNOWN_KEY  # negative cache


def test_wrong_secret_with_a_valid_checksum(registry: ClientRegistry) -> None:
    client, _ = registry.add("alice", models=["digits"], now=T0)
    forged = format_key(CLIENT_PREFIX, client.key_id, secrets.token_bytes(32))
    assert _refused(registry, forged, T0) is RejectReason.WRONG_SECRET


def test_expiry_with_an_injected_clock(registry: ClientRegistry) -> None:
    client, key = registry.add("alice", models=["digits"], expires_at=T0 + 100, now=T0)
    assert registry.authenticate(key, T0 + 99.9) == client
    assert _refused(registry, key, T0 + 100) is RejectReason.EXPIRED
    assert _refused(registry, key, T0 + 10_000) is RejectReason.EXPIRED


def test_expiry_must_be_in_the_future(registry: ClientRegistry) -> None:
    with pytest.raises(InvalidInputError):
        registry.add("alice", models=["digits"], expires_at=T0, now=T0)


def test_revoke_by_name_and_by_key_id(registry: ClientRegistry) -> None:
    a, key_a = registry.add("alice", models=["digits"], now=T0)
    b, key_b = registry.add("bob", models=["digits"], now=T0)
    assert registry.revoke("alice").status is Status.REVOKED
    assert registry.revoke(b.key_id).status is Status.REVOKED
    assert _refused(registry, key_a, T0 + 1) is RejectReason.REVOKED
    assert _refused(registry, key_b, T0 + 1) is RejectReason.REVOKED
    assert registry.get(a.key_id).status is Status.REVOKED
    with pytest.raises(UnknownNameError):
        registry.get("alice")  # no live key any more
    with pytest.raises(InvalidInputError):
        registry.resume(a.key_id)  # revocation is final


def test_unknown_names(registry: ClientRegistry) -> None:
    for action in (registry.get, registry.revoke, registry.suspend, registry.resume):
        with pytest.raises(UnknownNameError):
            action("nobody")
    with pytest.raises(UnknownNameError):
        registry.rotate("nobody")


def test_suspend_and_resume(registry: ClientRegistry) -> None:
    client, key = registry.add("alice", models=["digits"], now=T0)
    registry.suspend("alice")
    assert _refused(registry, key, T0 + 1) is RejectReason.SUSPENDED
    assert registry.get("alice").status is Status.SUSPENDED
    registry.resume(client.key_id)
    assert registry.authenticate(key, T0 + 2).status is Status.ACTIVE


def test_rotate_revokes_the_old_key(registry: ClientRegistry) -> None:
    old, old_key = registry.add("alice", models=["digits"], tier="gold", now=T0)
    new, new_key = registry.rotate("alice", now=T0 + 5)
    assert new.key_id != old.key_id
    assert (new.models, new.tier, new.name) == (old.models, old.tier, old.name)
    assert _refused(registry, old_key, T0 + 6) is RejectReason.REVOKED
    assert registry.authenticate(new_key, T0 + 6) == new
    assert registry.get("alice") == new


def test_rotate_keeps_or_sets_the_expiry(registry: ClientRegistry) -> None:
    registry.add("alice", models=["digits"], expires_at=T0 + 100, now=T0)
    kept, _ = registry.rotate("alice", now=T0 + 1)
    assert kept.expires_at == T0 + 100
    changed, _ = registry.rotate("alice", expires_at=T0 + 500, keep_expiry=False, now=T0 + 2)
    assert changed.expires_at == T0 + 500


def test_names_are_unique_among_live_keys(registry: ClientRegistry) -> None:
    registry.add("alice", models=["digits"], now=T0)
    with pytest.raises(DuplicateNameError):
        registry.add("alice", models=["digits"], now=T0)
    registry.revoke("alice")
    registry.add("alice", models=["iris"], now=T0 + 1)  # a revoked name may be reused
    assert registry.get("alice").models == frozenset({"iris"})
    assert len(registry.list()) == 1
    assert len(registry.list(include_revoked=True)) == 2


@pytest.mark.parametrize(
    ("name", "models", "tier"),
    [
        ("", ["digits"], "standard"),
        ("has space", ["digits"], "standard"),
        ("-leading", ["digits"], "standard"),
        ("x" * 65, ["digits"], "standard"),
        ("alice", [], "standard"),
        ("alice", ["a,b"], "standard"),
        ("alice", ["digits"], "bad tier"),
    ],
)
def test_invalid_input_is_refused(
    registry: ClientRegistry, name: str, models: list[str], tier: str
) -> None:
    with pytest.raises(InvalidInputError):
        registry.add(name, models=models, tier=tier, now=T0)


def test_changes_on_another_replica_are_seen_after_the_refresh_interval(
    store_factory: StoreFactory,
) -> None:
    one = ClientRegistry(store_factory())
    two = ClientRegistry(store_factory())
    _, key = one.add("alice", models=["digits"], now=T0)
    assert two.authenticate(key, T0).name == "alice"  # now cached in `two`
    one.suspend("alice")
    assert two.authenticate(key, T0 + 0.1).name == "alice"  # the cache is used...
    assert _refused(two, key, T0 + 0.5) is RejectReason.SUSPENDED  # ...for at most 0.5 s
    one.resume("alice")
    assert two.authenticate(key, T0 + 1.0).name == "alice"
    one.revoke("alice")
    assert _refused(two, key, T0 + 1.5) is RejectReason.REVOKED
    # a key id unknown to `two` (negatively cached) becomes valid once added elsewhere
    key_id, later = generate_key(CLIENT_PREFIX)
    assert _refused(two, later, T0 + 2) is RejectReason.UNKNOWN_KEY
    carol = Client("carol", key_id, frozenset({"digits"}), "standard", T0, None, Status.ACTIVE)
    secret = parse_key(later, CLIENT_PREFIX).secret
    one.store.insert_client(StoredClient(carol, hash_secret(key_id, secret)))
    assert _refused(two, later, T0 + 2.1) is RejectReason.UNKNOWN_KEY  # still cached
    assert two.authenticate(later, T0 + 2.5) == carol


def test_a_clock_going_backwards_forces_a_refresh(store_factory: StoreFactory) -> None:
    one = ClientRegistry(store_factory())
    two = ClientRegistry(store_factory())
    _, key = one.add("alice", models=["digits"], now=T0)
    two.authenticate(key, T0)
    one.revoke("alice")
    assert _refused(two, key, T0 - 10) is RejectReason.REVOKED


def test_revocation_on_another_instance_within_one_second_real_clock(
    store_factory: StoreFactory,
) -> None:
    one = ClientRegistry(store_factory())
    two = ClientRegistry(store_factory())
    _, key = one.add("alice", models=["digits"])
    assert two.authenticate(key, time.time()).name == "alice"
    one.revoke("alice")
    start = time.monotonic()
    reason: RejectReason | None = None
    while reason is None and time.monotonic() - start < 1.0:
        try:
            two.authenticate(key, time.time())
        except CredentialsRejected as exc:
            reason = exc.reason
        else:
            time.sleep(0.01)
    assert reason is RejectReason.REVOKED, "revocation not honoured within 1 s"
    assert time.monotonic() - start < 1.0


def test_secrets_never_appear_in_logs_or_reprs(
    registry: ClientRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="modelshield")
    client, key = registry.add("alice", models=["digits"], now=T0)
    secret = parse_key(key.reveal(), CLIENT_PREFIX).secret
    registry.authenticate(key, T0)
    forged = format_key(CLIENT_PREFIX, client.key_id, secrets.token_bytes(32))
    for attempt in (forged, key.reveal()[:-1], key.reveal() + "x"):
        with pytest.raises(CredentialsRejected):
            registry.authenticate(attempt, T0)
    registry.revoke("alice")
    with pytest.raises(CredentialsRejected):
        registry.authenticate(key, T0)
    rotated = registry.add("bob", models=["digits"], now=T0)[1]
    registry.rotate("bob", now=T0)
    assert "wrong_secret" in caplog.text  # the reasons are logged at debug level...
    for text in (caplog.text, repr(client), repr(key), str(key), f"{key}", repr(rotated)):
        assert secret not in text  # ...but never a secret
        assert key.reveal() not in text
        assert rotated.reveal() not in text
    stored = registry.store.get_client(client.key_id)
    assert isinstance(stored, StoredClient)
    assert stored.secret_hash.hex() not in repr(stored)


def test_client_is_frozen() -> None:
    client = Client("a", "AAAAAAAAAAAA", frozenset({"m"}), "standard", T0, None, Status.ACTIVE)
    with pytest.raises(AttributeError):
        client.name = "b"  # type: ignore[misc]


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "registry.db"
    with open_registry(f"sqlite:///{path}") as registry:
        _, key = registry.add("alice", models=["digits"], now=T0)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        for extra in ("registry.db-wal", "registry.db-shm"):
            if (path.parent / extra).exists():
                assert stat.S_IMODE(os.stat(path.parent / extra).st_mode) & 0o077 == 0
        journal = registry.store._conn.execute("PRAGMA journal_mode").fetchone()  # type: ignore[attr-defined]
        assert journal[0] == "wal"
        digest = registry.store.get_client(parse_key(key.reveal(), CLIENT_PREFIX).key_id)
        assert digest is not None
    raw = path.read_bytes()
    assert key.reveal().encode() not in raw  # only the hash is stored
    assert parse_key(key.reveal(), CLIENT_PREFIX).secret.encode() not in raw


def test_postgres_down_is_service_unavailable() -> None:
    with pytest.raises(ServiceUnavailableError) as info:
        open_registry("postgresql://postgres:s3cret-pw@127.0.0.1:1/postgres")
    message = str(info.value)
    assert "refused" in message  # what failed, not only the exception's class name
    assert "s3cret-pw" not in message


def test_unsupported_url_is_a_config_error() -> None:
    from modelshield.errors import ConfigError

    with pytest.raises(ConfigError):
        open_registry("redis://127.0.0.1:6379/0")


def test_memory_url_opens_a_fresh_store() -> None:
    with open_registry("memory://") as registry:
        _, key = registry.add("alice", models=["digits"], now=T0)
        assert registry.authenticate(key, T0).name == "alice"


def terminate(dsn: str, store: object) -> None:
    import psycopg

    pid = store._session._conn.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_postgres_connection_loss_fails_closed_then_recovers(
    pg_schema: tuple[str, str],
) -> None:
    from modelshield.stores import PostgresRegistryStore

    dsn, schema = pg_schema
    store = PostgresRegistryStore(dsn, schema=schema)
    registry = ClientRegistry(store)
    try:
        _, key = registry.add("alice", models=["digits"], now=T0)
        assert registry.authenticate(key, T0).name == "alice"
        # a dropped connection is replaced transparently on the next read
        terminate(dsn, store)
        assert registry.authenticate(key, T0 + 1).name == "alice"
        # while the server cannot be reached: fail closed (503), never a stale answer
        real_dsn = store._session._dsn
        store._session._dsn = "postgresql://postgres@127.0.0.1:1/postgres"
        terminate(dsn, store)
        with pytest.raises(ServiceUnavailableError):
            registry.authenticate(key, T0 + 2)
        with pytest.raises(ServiceUnavailableError):
            registry.revoke("alice")
        # and recovery without a restart once it is back
        store._session._dsn = real_dsn
        assert registry.authenticate(key, T0 + 3).name == "alice"
    finally:
        registry.close()


def test_sqlite_changes_from_another_process_reach_two_open_stores(tmp_path: Path) -> None:
    """The gateway opens the client and admin registries on one file; a revocation made by
    another process (the command line) must still reach it. Opening the second store once
    dropped the first one's SQLite locks, and the other process then deleted the WAL."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = open_registry(url)
    admins = open_admin_registry(url)
    try:
        registry.add("alice", models=["digits"], now=T0)
        script = "import sys\nfrom modelshield.access import open_registry\n" + (
            "with open_registry(sys.argv[1]) as r:\n    exec(sys.argv[2])\n"
        )
        expected = {"alice": Status.ACTIVE}
        # each change in a process of its own, as `modelshield clients` makes it: the second
        # one was never seen (the first process's exit had deleted the WAL under this one)
        for change, name, status in (
            ("r.add('bob', models=['digits'])", "bob", Status.ACTIVE),
            ("r.revoke('alice')", "alice", Status.REVOKED),
            ("r.add('carol', models=['digits'])", "carol", Status.ACTIVE),
        ):
            before = registry.store.version()
            subprocess.run([sys.executable, "-c", script, url, change], check=True, timeout=60)
            expected[name] = status
            assert registry.store.version() > before, change
            clients = {c.name: c.status for c in registry.store.list_clients(True)}
            assert clients == expected, change
    finally:
        admins.close()
        registry.close()


@pytest.mark.parametrize("expires_at", [T0 + 200 * 366 * 86400.0, float("nan"), float("inf")])
def test_an_expiry_too_far_or_not_finite_is_refused_before_writing(
    registry: ClientRegistry, expires_at: float
) -> None:
    """A far-off expiry once stored an active key, then failed while printing it (the key was
    lost) and broke every later listing; a rotation had revoked the working key first."""
    registry.add("alice", models=["digits"], now=T0)
    with pytest.raises(InvalidInputError):
        registry.add("bob", models=["digits"], expires_at=expires_at, now=T0)
    with pytest.raises(InvalidInputError):
        registry.rotate("alice", expires_at=expires_at, keep_expiry=False, now=T0)
    assert [(c.name, c.status) for c in registry.list(include_revoked=True)] == [
        ("alice", Status.ACTIVE)
    ]
    registry.add("carol", models=["digits"], expires_at=T0 + 99 * 366 * 86400.0, now=T0)
