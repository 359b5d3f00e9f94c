"""The dashboard over HTTP against a live gateway: sign-in, sessions, CSRF, headers, actions."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from modelshield import access, audit, vault
from modelshield.gateway import build_app
from modelshield.gateway._dashboard import dashboard_routes

from .conftest import SESSION_TTL, Deployment, uniform_queries

PAGES = ("overview", "clients", "clients/mallory", "audit", "models", "reports")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
BODY = {"inputs": [[0.0] * 64]}


def sign_in(dep: Deployment, code: str | None = None) -> httpx.Client:
    session = dep.browser_session()
    r = session.post(
        "/dashboard/login", data={"admin_key": dep.admin_key, "totp": code or dep.code()}
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/dashboard/overview"
    return session


def csrf_of(session: httpx.Client, path: str = "/dashboard/clients/mallory") -> str:
    r = session.get(path)
    assert r.status_code == 200, r.text
    match = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert match
    return match.group(1)


def act(session: httpx.Client, client: str, action: str, csrf: str | None) -> httpx.Response:
    data = {"action": action} if csrf is None else {"action": action, "csrf": csrf}
    return session.post(f"/dashboard/clients/{client}/action", data=data)


def test_pages_need_a_session(deployment: Deployment) -> None:
    for path in PAGES:
        r = httpx.get(f"{deployment.url}/dashboard/{path}")
        assert r.status_code == 303
        assert r.headers["location"].startswith("/dashboard/login")
        assert r.headers["content-security-policy"] == CSP
    r = httpx.get(f"{deployment.url}/dashboard/audit/export")
    assert r.status_code == 303


def test_sign_in_sets_a_strict_cookie_and_every_page_is_locked_down(
    deployment: Deployment,
) -> None:
    session = deployment.browser_session()
    r = session.post(
        "/dashboard/login", data={"admin_key": deployment.admin_key, "totp": deployment.code()}
    )
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Max-Age=600" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback here; see the TLS test below
    with deployment.client("mallory") as c:
        for batch in uniform_queries(3, 10):
            assert c.post("/v1/models/digits/predict", json={"inputs": batch}).status_code == 200
    for path in PAGES:
        r = session.get(f"/dashboard/{path}")
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        # no inline script or style: every script has a src, no style attribute anywhere
        assert re.findall(r"<script(?![^>]*\bsrc=)", r.text) == []
        assert " style=" not in r.text
        assert "<style" not in r.text
        for secret in (*deployment.keys.values(), deployment.admin_key):
            assert secret not in r.text
    records = deployment.records()
    signed = [x for x in records if x["reason"] == "dashboard:sign-in"]
    assert len(signed) == 1
    assert signed[0]["client"] == "admin:root"


def _asgi_get(app: Starlette, peer: str, path: str) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get(path)

    return asyncio.run(run())


def tls_app(deployment: Deployment) -> Starlette:
    """The dashboard alone, with the cookie settings of a deployment served over TLS."""
    gateway = deployment.gateway
    registry = access.open_registry(deployment.config.registry.url)
    gateway.on_close.append(registry.close)
    routes = dashboard_routes(
        gateway,
        clients=registry,
        audit_store_url=deployment.config.audit.url,
        audit_key=audit.audit_key_from_config(deployment.config),
        secure_cookies=True,
    )
    return Starlette(routes=routes)


def test_secure_cookie_when_serving_over_tls(deployment: Deployment) -> None:
    app = tls_app(deployment)

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            return await c.post(
                "/dashboard/login",
                data={"admin_key": deployment.admin_key, "totp": deployment.code()},
            )

    r = asyncio.run(run())
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    # the __Host- prefix makes browsers insist on Secure, Path=/ and no Domain attribute
    assert cookie.startswith("__Host-modelshield-dashboard=")
    assert "Secure" in cookie
    assert "Path=/" in cookie
    assert "HttpOnly" in cookie


def test_wrong_totp_is_refused_and_audited(deployment: Deployment) -> None:
    good = deployment.code()
    wrong = "000000" if good != "000000" else "111111"
    r = httpx.post(
        f"{deployment.url}/dashboard/login",
        data={"admin_key": deployment.admin_key, "totp": wrong},
    )
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    assert "Invalid admin key or TOTP code" in r.text
    r = httpx.post(
        f"{deployment.url}/dashboard/login",
        data={"admin_key": deployment.keys["alice"], "totp": good},
    )
    assert r.status_code == 401
    reasons = [x["reason"] for x in deployment.records()]
    assert sum(reason.startswith("dashboard-auth:") for reason in reasons) == 2
    # the right code still works once, and only once
    sign_in(deployment, good)
    r = httpx.post(
        f"{deployment.url}/dashboard/login",
        data={"admin_key": deployment.admin_key, "totp": good},
    )
    assert r.status_code == 401


def test_expired_session_is_refused(deployment: Deployment) -> None:
    session = sign_in(deployment)
    csrf = csrf_of(session)
    deployment.clock.advance(SESSION_TTL + 1)
    r = session.get("/dashboard/overview")
    assert r.status_code == 303
    assert r.headers["location"] == "/dashboard/login?expired=1"
    r = act(session, "mallory", "block", csrf)
    assert r.status_code == 401
    assert deployment.gateway.limits.get_flag("mallory") is None
    assert any(x["reason"].startswith("dashboard-auth:session") for x in deployment.records())


@pytest.mark.parametrize("forgery", ["missing", "forged", "other-session"])
def test_forged_csrf_token_is_refused(deployment: Deployment, forgery: str) -> None:
    session = sign_in(deployment)
    real = csrf_of(session)
    token = {
        "missing": None,
        "forged": real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"),
        "other-session": csrf_of(sign_in(deployment)),
    }[forgery]
    assert token != real
    r = act(session, "mallory", "block", token)
    assert r.status_code == 403
    assert deployment.gateway.limits.get_flag("mallory") is None
    assert any(x["reason"] == "dashboard-csrf:client-action" for x in deployment.records())
    with deployment.client("mallory") as c:
        assert c.post("/v1/models/digits/predict", json=BODY).status_code == 200


def test_cross_origin_post_is_refused_even_with_the_token(deployment: Deployment) -> None:
    session = sign_in(deployment)
    csrf = csrf_of(session)
    r = session.post(
        "/dashboard/clients/mallory/action",
        data={"action": "block", "csrf": csrf},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403
    assert "another site" in r.text  # not "invalid CSRF token": the token was good
    assert deployment.gateway.limits.get_flag("mallory") is None
    assert any(x["reason"] == "dashboard-origin:client-action" for x in deployment.records())


def test_actions_set_flags_act_at_once_and_are_audited(deployment: Deployment) -> None:
    session = sign_in(deployment)
    csrf = csrf_of(session)
    with deployment.client("mallory") as c:
        assert c.post("/v1/models/digits/predict", json=BODY).status_code == 200
        r = act(session, "mallory", "throttle", csrf)
        assert r.status_code == 303
        assert deployment.gateway.limits.get_flag("mallory") == "throttle"
        assert act(session, "mallory", "block", csrf).status_code == 303
        assert c.post("/v1/models/digits/predict", json=BODY).status_code == 403
        page = session.get("/dashboard/clients/mallory?done=block").text
        assert "Done: block" in page
        assert act(session, "mallory", "clear", csrf).status_code == 303
        assert deployment.gateway.limits.get_flag("mallory") is None
        assert c.post("/v1/models/digits/predict", json=BODY).status_code == 200
    assert act(session, "nobody", "block", csrf).status_code == 422
    assert act(session, "mallory", "delete", csrf).status_code == 422
    actions = [x for x in deployment.records() if x["output_summary"].startswith("dashboard-")]
    reasons = [x["reason"] for x in actions]
    for expected in ("flag:mallory:throttle", "flag:mallory:block", "flag:mallory:clear"):
        assert expected in reasons
    assert all(x["client"] == "admin:root" for x in actions)
    page = session.get("/dashboard/clients/mallory").text
    for shown in ("flag throttle", "flag block", "flag clear"):
        assert shown in page


def test_sign_out_ends_the_session(deployment: Deployment) -> None:
    session = sign_in(deployment)
    csrf = csrf_of(session, "/dashboard/overview")
    token = session.cookies.get("modelshield-dashboard")
    assert token
    assert session.post("/dashboard/logout", data={"csrf": csrf}).status_code == 303
    replay = httpx.get(
        f"{deployment.url}/dashboard/overview", cookies={"modelshield-dashboard": token}
    )
    assert replay.status_code == 303


def test_tampered_session_cookie_is_refused(deployment: Deployment) -> None:
    session = sign_in(deployment)
    token = session.cookies.get("modelshield-dashboard")
    assert token
    body, _, tag = token.partition(".")
    for forged in (body + "." + tag[:-2] + "AA", "x" + body + "." + tag, "", "a.b", token + "."):
        if forged == token:
            continue
        r = httpx.get(
            f"{deployment.url}/dashboard/overview", cookies={"modelshield-dashboard": forged}
        )
        assert r.status_code == 303, forged


def test_remote_peers_are_not_served(deployment: Deployment) -> None:
    app = build_app(deployment.gateway)
    assert _asgi_get(app, "203.0.113.7", "/dashboard/login").status_code == 404
    assert _asgi_get(app, "::1", "/dashboard/login").status_code == 200
    assert _asgi_get(app, "127.0.0.1", "/dashboard/login").status_code == 200
    assert _asgi_get(app, "203.0.113.7", "/healthz").status_code == 200


def test_audit_page_filters_verifies_and_exports(deployment: Deployment) -> None:
    session = sign_in(deployment)
    with deployment.client("alice") as a, deployment.client("mallory") as m:
        for _ in range(3):
            assert a.post("/v1/models/digits/predict", json=BODY).status_code == 200
            assert m.post("/v1/models/digits/predict", json=BODY).status_code == 200
    page = session.get("/dashboard/audit", params={"client": "alice"}).text
    trail = page.split('id="audit-table"', 1)[1]
    assert trail.count("<td>alice</td>") == 3
    assert "mallory" not in trail
    # records older than the first look-back (10 s) are found by looking further back
    deployment.clock.advance(120)
    page = session.get("/dashboard/audit", params={"client": "alice"}).text
    assert page.split('id="audit-table"', 1)[1].count("<td>alice</td>") == 3
    assert 'data-refresh="0"' in page  # a query, not a live view: the page does not poll
    assert 'data-refresh="1"' in session.get("/dashboard/overview").text
    page = session.get("/dashboard/audit", params={"decision": "admin"}).text
    assert "dashboard:sign-in" in page
    assert "<td>alice</td>" not in page.split('id="audit-table"', 1)[1]
    # reflected filter values are escaped
    page = session.get("/dashboard/audit", params={"client": "<script>x</script>"}).text
    assert "<script>x</script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    csrf = csrf_of(session, "/dashboard/audit")
    assert session.post("/dashboard/audit/verify", data={"csrf": csrf}).status_code == 303
    page = session.get("/dashboard/audit").text
    assert "intact" in page
    assert "verified up to record" in page
    assert session.post("/dashboard/audit/verify", data={"csrf": "nope"}).status_code == 403
    r = session.get("/dashboard/audit/export", params={"client": "alice", "window": "all"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in r.headers["content-disposition"]
    lines = [orjson.loads(line) for line in r.text.splitlines()]
    assert len(lines) == 3
    assert {x["client"] for x in lines} == {"alice"}
    assert all(len(x["hash"]) == 64 for x in lines)
    # filters it does not understand: nothing shown, nothing exported (they once gave everything)
    for bad in ({"decision": "nope"}, {"from": "notadate"}, {"to": "yesterday"}, {"window": "2y"}):
        r = session.get("/dashboard/audit/export", params={"client": "alice", **bad})
        assert r.status_code == 400, bad
        assert r.text.startswith("filters not understood, nothing exported")
        page = session.get("/dashboard/audit", params={"client": "alice", **bad}).text
        assert "Filters not understood, nothing shown" in page
        assert "<code>" not in page.split('id="audit-trail"')[1]  # no record rows
    r = session.get("/dashboard/audit/export", params={"decision": "detect", "window": "all"})
    assert r.status_code == 200  # detect records can be filtered too


def test_models_page_shows_the_seal(deployment: Deployment) -> None:
    session = sign_in(deployment)
    sealed = Path(deployment.config.models["digits"].path)
    info = vault.inspect(sealed)
    page = session.get("/dashboard/models").text
    assert info.signer is not None
    assert info.signer in page
    assert info.payload_digest in page
    assert info.recipients[0].key_id in page
    assert "no certificate yet" in page
    (deployment.reports / "digits.cert.json").write_text('{"issued_at": "2026-11-28"}')
    assert "2026-11-28" in session.get("/dashboard/models").text


def test_reports_page_shows_the_latest_reports(deployment: Deployment) -> None:
    session = sign_in(deployment)
    page = session.get("/dashboard/reports").text
    assert page.count("No report yet.") == 2
    matrix = {
        "matrix": [
            {"attack": "copycat", "defence": "none", "agreement": 0.91},
            {"attack": "copycat", "defence": "labels", "agreement": 0.74},
        ]
    }
    (deployment.reports / "redteam-matrix.json").write_bytes(orjson.dumps(matrix))
    (deployment.reports / "assess-report.html").write_text(
        "<html><script>alert(1)</script><p>risk: medium</p></html>"
    )
    page = session.get("/dashboard/reports").text
    assert "copycat" in page
    assert "0.74" in page
    assert "assess-report.html" in page
    r = session.get("/dashboard/reports/file/assess-report.html")
    assert r.status_code == 200
    assert r.headers["content-security-policy"].startswith("sandbox;")
    assert session.get("/dashboard/reports/file/redteam-matrix.json").status_code == 404
    assert session.get("/dashboard/reports/file/..%2Fshield.toml").status_code == 404


def test_revoking_the_admin_ends_its_sessions(deployment: Deployment) -> None:
    """A session names an admin: once that admin is revoked (by any process), the session is
    refused on its next request, not when its token expires."""
    session = sign_in(deployment)
    assert session.get("/dashboard/overview").status_code == 200
    with access.open_admin_registry(deployment.config.registry.url) as admins:
        admins.revoke(access.parse_key(deployment.admin_key, access.ADMIN_PREFIX).key_id)
    r = session.get("/dashboard/overview")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/dashboard/login")
    assert act(session, "mallory", "block", None).status_code in (401, 403)


def test_sign_out_deletes_a_secure_cookie_securely(deployment: Deployment) -> None:
    """A browser ignores the deletion of a __Host- cookie without Secure: sign-out must send
    the attributes the cookie was set with."""
    app = tls_app(deployment)

    async def run() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            await c.post(
                "/dashboard/login",
                data={"admin_key": deployment.admin_key, "totp": deployment.code()},
            )
            page = await c.get("/dashboard/overview")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf
            out = await c.post(
                "/dashboard/logout",
                data={"csrf": csrf.group(1)},
                headers={"Origin": "https://testserver"},
            )
            return page, out

    page, out = asyncio.run(run())
    assert page.status_code == 200
    assert out.status_code == 303
    deleted = out.headers["set-cookie"]
    assert deleted.startswith("__Host-modelshield-dashboard=")
    assert "Max-Age=0" in deleted
    assert "Secure" in deleted
    assert "samesite=strict" in deleted.lower()


def test_the_peer_is_the_socket_not_x_forwarded_for(deployment: Deployment) -> None:
    """A forwarded-for header neither hides a loopback peer nor lets a remote one in."""
    r = httpx.get(f"{deployment.url}/dashboard/login", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200


def test_model_names_that_are_not_served_make_one_series(deployment: Deployment) -> None:
    """Anyone can put a made-up model name in a path (the request is refused and audited):
    such names are counted together, not drawn one series each."""
    for i in range(30):
        httpx.post(f"{deployment.url}/v1/models/made-up-{i}/predict", json=BODY)
    with deployment.client("alice") as c:
        assert c.post("/v1/models/digits/predict", json=BODY).status_code == 200
    session = sign_in(deployment)
    deployment.clock.advance(10)  # past the view's refresh interval
    text = session.get("/dashboard/overview").text
    assert "made-up-" not in text
    assert "(not served)" in text
