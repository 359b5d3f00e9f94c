"""Admin endpoints need an admin key AND a current TOTP code; every call is audited."""

from __future__ import annotations

import time

import httpx
import pyotp
import pytest

from modelshield import access, audit
from modelshield.errors import IntegrityError
from modelshield.stores import open_audit_store

from .conftest import LiveGateway


@pytest.fixture
def admin(live: LiveGateway) -> tuple[str, pyotp.TOTP]:
    with access.open_admin_registry(live.config.registry.url) as admins:
        enrollment = admins.enroll("root")
    return enrollment.admin_key.reveal(), pyotp.TOTP(enrollment.totp_secret.reveal())


def _headers(key: str, code: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-TOTP-Code": code}


def test_admin_lists_clients_without_secrets(
    live: LiveGateway, admin: tuple[str, pyotp.TOTP]
) -> None:
    key, totp = admin
    r = httpx.get(f"{live.url}/v1/admin/clients", headers=_headers(key, totp.now()))
    assert r.status_code == 200, r.text
    names = {c["name"] for c in r.json()["clients"]}
    assert {"alice", "bob", "carol", "dave"} <= names
    for secret in live.keys.values():
        assert secret not in r.text


def test_totp_code_is_accepted_once(live: LiveGateway, admin: tuple[str, pyotp.TOTP]) -> None:
    key, totp = admin
    code = totp.now()
    assert httpx.get(f"{live.url}/v1/admin/flags", headers=_headers(key, code)).status_code == 200
    r = httpx.get(f"{live.url}/v1/admin/flags", headers=_headers(key, code))
    assert r.status_code == 401


@pytest.mark.parametrize("which", ["no-code", "wrong-code", "client-key"])
def test_admin_refuses_without_both_factors(
    live: LiveGateway, admin: tuple[str, pyotp.TOTP], which: str
) -> None:
    key, totp = admin
    headers = {
        "no-code": {"Authorization": f"Bearer {key}"},
        "wrong-code": _headers(key, "000000" if totp.now() != "000000" else "111111"),
        "client-key": _headers(live.keys["alice"], totp.now()),
    }[which]
    r = httpx.get(f"{live.url}/v1/admin/clients", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"


def test_suspend_blocks_the_next_request_and_resume_restores(
    live: LiveGateway, admin: tuple[str, pyotp.TOTP]
) -> None:
    key, totp = admin
    body = {"inputs": [[0.0] * 64]}
    with live.client() as c:
        assert c.post("/v1/models/digits/predict", json=body).status_code == 200
        r = httpx.put(
            f"{live.url}/v1/admin/flags/alice",
            json={"flag": "block"},
            headers=_headers(key, totp.now()),
        )
        assert r.status_code == 200, r.text
        r = c.post("/v1/models/digits/predict", json=body)
        assert r.status_code == 403
        assert "blocked" in r.json()["error"]["message"]
        # a second admin (a TOTP code is accepted once per time step) clears the flag
        with access.open_admin_registry(live.config.registry.url) as admins:
            other = admins.enroll("second")
        code = pyotp.TOTP(other.totp_secret.reveal()).now()
        r = httpx.delete(
            f"{live.url}/v1/admin/flags/alice", headers=_headers(other.admin_key.reveal(), code)
        )
        assert r.status_code == 200, r.text
        assert c.post("/v1/models/digits/predict", json=body).status_code == 200


def test_flag_values_are_checked(live: LiveGateway, admin: tuple[str, pyotp.TOTP]) -> None:
    url = f"{live.url}/v1/admin/flags"
    enrolled = iter(range(100))

    def fresh() -> dict[str, str]:
        """An admin of its own per call: each TOTP step is accepted once per admin."""
        with access.open_admin_registry(live.config.registry.url) as admins:
            other = admins.enroll(f"flagger{next(enrolled)}")
        return _headers(other.admin_key.reveal(), pyotp.TOTP(other.totp_secret.reveal()).now())

    key, totp = admin
    r = httpx.put(f"{url}/alice", json={"flag": "nuke"}, headers=_headers(key, totp.now()))
    assert r.status_code == 422
    r = httpx.put(f"{url}/alice", json={"flag": "throttle"}, headers=fresh())
    assert r.status_code == 200, r.text
    # a body without the field, or not an object, is refused: it once cleared the flag
    for body in ({}, [1], {"flags": None}):
        r = httpx.put(f"{url}/alice", json=body, headers=fresh())
        assert r.status_code == 422, (body, r.text)
    r = httpx.put(f"{url}/nobody", json={"flag": "block"}, headers=fresh())
    assert r.status_code == 404
    r = httpx.get(url, headers=fresh())
    assert r.status_code == 200, r.text
    assert "throttle" in r.text
    assert "nobody" not in r.text


def test_admin_actions_are_audited(live: LiveGateway, admin: tuple[str, pyotp.TOTP]) -> None:
    key, totp = admin
    httpx.post(f"{live.url}/v1/admin/clients/bob/revoke", headers=_headers(key, totp.now()))
    httpx.get(f"{live.url}/v1/admin/clients", headers=_headers(key, "123456"))
    store = open_audit_store(live.config.audit.url)
    try:
        records = list(audit.export(store))
    finally:
        store.close()
    reasons = [(r["decision"], r["reason"], r["status"]) for r in records]
    assert ("admin", "revoke:bob", 200) in reasons
    assert any(
        d == "refuse" and s == 401 and reason.startswith("admin-auth") for d, reason, s in reasons
    )
    with live.client("bob") as c:
        # revocation is honoured within the registry's refresh interval (0.5 s)
        deadline = time.monotonic() + 2
        while c.post("/v1/models/digits/predict", json={"inputs": [[0.0] * 64]}).status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_unknown_client_is_404(live: LiveGateway, admin: tuple[str, pyotp.TOTP]) -> None:
    key, totp = admin
    r = httpx.post(f"{live.url}/v1/admin/clients/nobody/suspend", headers=_headers(key, totp.now()))
    assert r.status_code == 404


def test_audit_verify_endpoint(
    live: LiveGateway, admin: tuple[str, pyotp.TOTP], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain check over the admin API; a damaged log file is a failed check (ok false,
    the reason in first_bad), not a 400."""
    key, totp = admin
    url = f"{live.url}/v1/admin/audit/verify"
    with live.client() as c:
        assert c.post("/v1/models/digits/predict", json={"inputs": [[0.0] * 64]}).status_code == 200
    r = httpx.get(url, headers=_headers(key, totp.now()))
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True
    assert r.json()["records_checked"] >= 2

    def damaged(*_: object) -> None:
        raise IntegrityError("the audit log file is damaged: database disk image is malformed")

    monkeypatch.setattr(audit, "verify", damaged)
    with access.open_admin_registry(live.config.registry.url) as admins:
        other = admins.enroll("checker")
    code = pyotp.TOTP(other.totp_secret.reveal()).now()
    r = httpx.get(url, headers=_headers(other.admin_key.reveal(), code))
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is False
    assert "damaged" in r.json()["first_bad"]
