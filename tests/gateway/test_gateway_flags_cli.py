"""`modelshield flags list|clear` against the shared Redis state store."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from modelshield import audit
from modelshield.config import load_config
from modelshield.gateway import RedisLimitStore
from modelshield.stores import open_audit_store

from .conftest import write_config


def test_flags_list_and_clear_are_audited(
    tmp_path: Path, redis_url: str, modelshield_cli: Any
) -> None:
    path = write_config(tmp_path, f"[state]\nurl = '{redis_url}'\n")
    client = f"flagged-{uuid.uuid4().hex[:8]}"
    store = RedisLimitStore(redis_url)
    try:
        store.set_flag(client, "block")
        r = modelshield_cli("flags", "list", "--config", str(path), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert client in r.stdout
        r = modelshield_cli("flags", "clear", client, "--config", str(path), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert store.get_flag(client) is None
    finally:
        store.set_flag(client, None)
        store.close()
    config = load_config(path)
    log = open_audit_store(config.audit.url)
    try:
        records = list(audit.export(log))
        assert audit.verify(log, audit.audit_key_from_config(config)).ok
    finally:
        log.close()
    assert any(r["reason"] == f"flag:{client}:clear" and r["decision"] == "admin" for r in records)


def test_flags_need_a_shared_state_store(tmp_path: Path, modelshield_cli: Any) -> None:
    path = write_config(tmp_path)
    r = modelshield_cli("flags", "list", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 1
    assert "admin API" in r.stderr


def test_clearing_a_flag_resets_the_shared_detector_state(
    tmp_path: Path, redis_url: str, modelshield_cli: Any
) -> None:
    from modelshield.gateway._plugins import CLEARED, state_key
    from modelshield.stores import ABSENT, RedisDetectorStateStore

    path = write_config(tmp_path, f"[state]\nurl = '{redis_url}'\n[detection]\nenabled = true\n")
    client = f"flagged-{uuid.uuid4().hex[:8]}"
    state = RedisDetectorStateStore(redis_url)
    try:
        assert state.save({state_key("digits", client): (ABSENT, b"state")}) is not None
        assert state.save({state_key("digits", f"{client}-other"): (ABSENT, b"state")}) is not None
        alert = state_key("digits", f"alert:{client}")
        assert state.claim(alert, 600.0, 0.0)  # an alert went out: the next is held back
        r = modelshield_cli("flags", "clear", client, "--config", str(path), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "detector state reset" in r.stdout
        assert state.load(state_key("digits", client), "?")[1] == CLEARED
        assert state.claim(alert, 600.0, 1.0)  # released: a new attack alerts at once
        state.release(alert)
        assert (
            state.load(state_key("digits", f"{client}-other"), "?")[1] == b"state"
        )  # only that client
    finally:
        state.delete(state_key("digits", f"{client}-other"))
        state.close()
    config = load_config(path)
    log = open_audit_store(config.audit.url)
    try:
        records = list(audit.export(log))
    finally:
        log.close()
    cleared = [r for r in records if r["reason"] == f"flag:{client}:clear"]
    assert cleared[0]["extra"]["detector_state_reset"] is True


def test_clients_resume_lifts_the_block_an_admin_api_suspension_set(
    tmp_path: Path, redis_url: str, modelshield_cli: Any
) -> None:
    """The admin API's suspend also sets "block" in the shared state store; `clients resume` on
    the command line once left that flag, so the resumed client stayed refused (403)."""
    from modelshield import access

    path = write_config(tmp_path, f"[state]\nurl = '{redis_url}'\n")
    config = load_config(path)
    name = f"resumed-{uuid.uuid4().hex[:8]}"
    with access.open_registry(config.registry.url) as registry:
        registry.add(name, models=["digits"])
        registry.suspend(name)
    store = RedisLimitStore(redis_url)
    try:
        store.set_flag(name, "block")  # what POST /v1/admin/clients/NAME/suspend does
        r = modelshield_cli("clients", "resume", name, "--config", str(path), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert store.get_flag(name) is None
        assert f"cleared {name}'s flag (block)" in " ".join(r.stdout.split())
        # a client without a flag: resumed, nothing cleared, nothing more audited
        registry_again = access.open_registry(config.registry.url)
        with registry_again as registry:
            registry.suspend(name)
        r = modelshield_cli("clients", "resume", name, "--config", str(path), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "cleared" not in r.stdout
    finally:
        store.set_flag(name, None)
        store.close()
    log = open_audit_store(config.audit.url)
    try:
        records = list(audit.export(log))
    finally:
        log.close()
    admin = [r["reason"] for r in records if r["decision"] == "admin"]
    # each resume is a record of its own; the flag it cleared, one more (the second had none)
    assert admin == [f"resume:{name}", f"flag:{name}:resume", f"resume:{name}"]


def test_clients_resume_with_the_state_store_down_resumes_and_says_what_failed(
    tmp_path: Path, modelshield_cli: Any
) -> None:
    from modelshield import access

    path = write_config(tmp_path, "[state]\nurl = 'redis://127.0.0.1:6399/0'\n")  # nobody there
    config = load_config(path)
    with access.open_registry(config.registry.url) as registry:
        registry.add("ivy", models=["digits"])
        registry.suspend("ivy")
    r = modelshield_cli("clients", "resume", "ivy", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 1
    assert "resumed key" in r.stdout
    assert "state store unavailable (Redis at 127.0.0.1:6399/0)" in " ".join(r.stderr.split())
    with access.open_registry(config.registry.url) as registry:
        assert [c.status.value for c in registry.list()] == ["active"]
