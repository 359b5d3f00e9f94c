"""The dashboard's routes: sign-in, pages, actions, export and static assets."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from modelshield.audit import AuditRecord, AuditStore, VerifyReport, verify
from modelshield.errors import AuthenticationError, ShieldError
from modelshield.gateway._dashboard import _svg
from modelshield.gateway._dashboard._data import (
    ADMIN_PREFIX,
    ClientView,
    TrafficView,
    histogram_quantiles,
    search,
)
from modelshield.gateway._dashboard._html import badge, csrf_form, e, num, page, table, tile, when
from modelshield.gateway._dashboard._session import Session, SessionSigner, derive_session_key

if TYPE_CHECKING:
    from modelshield.gateway._app import Gateway

_log = logging.getLogger(__name__)

ACTIONS = {"throttle": "throttle", "block": "block", "clear": None}
DECISIONS = ("allow", "degrade", "refuse", "admin", "detect")
FILTER_FIELDS = ("client", "model", "decision", "window", "from", "to")
WINDOWS = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 604800.0, "all": math.inf}
AUDIT_ROWS = 200
MAX_FORM_BYTES = 8192
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# a stored report is shown as its own document, sandboxed: no script, no network, no same origin
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"


class ClientLister(Protocol):
    """The registry operation the dashboard needs: list clients (public fields only)."""

    def list(self, *, include_revoked: bool = False) -> list[Any]: ...


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _parse_time(text: str) -> float | None:
    """A UTC time from an ``<input type=datetime-local>`` or ISO 8601 value (``None`` if blank)."""
    text = text.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class Latency:
    """Request latency percentiles from the gateway's Prometheus histogram, over time."""

    def __init__(self, histogram: Any, window: float) -> None:
        self._histogram = histogram
        self._window = window
        self._snapshots: deque[tuple[float, dict[float, float]]] = deque()

    def _read(self) -> dict[float, float]:
        totals: dict[float, float] = {}
        for metric in self._histogram.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    totals[bound] = totals.get(bound, 0.0) + float(sample.value)
        return totals

    def sample(self, now: float) -> None:
        if self._snapshots and now - self._snapshots[-1][0] < 1.0:
            return
        self._snapshots.append((now, self._read()))
        while self._snapshots and self._snapshots[0][0] < now - self._window:
            self._snapshots.popleft()

    def overall(self) -> dict[float, float | None]:
        """p50, p95 and p99 since the process started (seconds)."""
        return histogram_quantiles(iter(self._read().items()), (0.5, 0.95, 0.99))

    def series(self) -> dict[float, list[tuple[float, float]]]:
        """p50 and p99 between consecutive samples, in milliseconds."""
        out: dict[float, list[tuple[float, float]]] = {0.5: [], 0.99: []}
        snaps = list(self._snapshots)
        for (_, before), (t, after) in itertools.pairwise(snaps):
            delta = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
            qs = histogram_quantiles(iter(delta.items()), (0.5, 0.99))
            for q, value in qs.items():
                if value is not None:
                    out[q].append((t, value * 1000))
        return out


class Dashboard:
    """Everything the dashboard routes share: the gateway, the audit view, the session signer."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        clients: ClientLister,
        store: AuditStore,
        audit_key: bytes,
        reports_dir: Path | None,
        model_paths: Mapping[str, Path],
        secure_cookies: bool,
        session_ttl: float,
        refresh_seconds: float,
        allow_remote: bool,
        window: float,
        bucket: float,
    ) -> None:
        self.gateway = gateway
        self.clients = clients
        self.store = store
        self.audit_key = audit_key
        self.reports_dir = reports_dir
        self.model_paths = dict(model_paths)
        self.secure_cookies = secure_cookies
        self.refresh_seconds = refresh_seconds
        self.allow_remote = allow_remote
        self.signer = SessionSigner(derive_session_key(audit_key), ttl=session_ttl)
        self.view = TrafficView(store, window=window, bucket=bucket, models=gateway.models)
        self.latency = Latency(gateway.metrics.latency, window)
        self.verification: tuple[float, VerifyReport] | None = None
        self._digests: dict[tuple[str, float, int], str] = {}
        self.cookie = "__Host-modelshield-dashboard" if secure_cookies else "modelshield-dashboard"

    # ---- plumbing -------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        now = self.gateway.clock()
        session = self.signer.check(request.cookies.get(self.cookie), now)
        admins = self.gateway.admins
        if session is not None and (admins is None or not admins.is_active(session.key_id, now)):
            return None  # the admin was revoked, suspended or locked out since signing in
        return session

    def guarded(self, handler: Callable[[Request], Awaitable[Response]]) -> Any:
        async def endpoint(request: Request) -> Response:
            host = request.client.host if request.client is not None else None
            if not self.allow_remote and not _is_loopback(host):
                return _secure(Response("not found", status_code=404, media_type="text/plain"))
            return _secure(await handler(request))

        return endpoint

    async def audit(
        self,
        session_or_admin: Session | None,
        action: str,
        reason: str,
        status: int,
        *,
        admin: str | None = None,
        key_id: str | None = None,
    ) -> bool:
        """Write the audit record of one dashboard action; ``False`` if the log is down."""
        from modelshield.gateway._app import AuditEntry

        if session_or_admin is not None:
            admin, key_id = session_or_admin.admin, session_or_admin.key_id
        entry = AuditEntry(
            time=self.gateway.clock(),
            client=f"{ADMIN_PREFIX}{admin}" if admin else None,
            key_id=key_id,
            model=None,
            body=b"",
            rows=0,
            output_summary=f"dashboard-{action}",
            decision="admin" if status < 400 else "refuse",
            reason=reason,
            status=status,
        )
        try:
            await self.gateway.audit.record(entry)
        except ShieldError:
            _log.error("audit log unavailable: dashboard action %s not recorded", action)
            return False
        return True

    def refresh_and_render(
        self, render: Callable[[Request, Session], str], request: Request, session: Session
    ) -> str:
        """Fold in new records, then render while no other thread changes the view."""
        now = self.gateway.clock()
        self.view.refresh(now)
        with self.view.lock:
            self.latency.sample(now)
            return render(request, session)

    def html(
        self,
        request: Request,
        session: Session,
        title: str,
        active: str,
        body: str,
        *,
        live: bool = True,
    ) -> Response:
        text = page(
            title=title,
            active=active,
            body=body,
            admin=session.admin,
            csrf=self.signer.csrf_token(session),
            refresh=self.refresh_seconds if live else 0,
            now=self.gateway.clock(),
        )
        return HTMLResponse(text)

    def to_login(self, request: Request) -> Response:
        expired = self.cookie in request.cookies
        response = RedirectResponse(
            "/dashboard/login" + ("?expired=1" if expired else ""), status_code=303
        )
        if expired:
            self.drop_cookie(request, response)
        return response

    def drop_cookie(self, request: Request, response: Response) -> None:
        """Delete the session cookie with the attributes it was set with (a browser ignores a
        ``__Host-`` cookie, deletion included, that is not ``Secure``)."""
        response.delete_cookie(
            self.cookie,
            path="/",
            secure=self.secure_cookies or request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    async def form(self, request: Request) -> dict[str, str] | None:
        """A small ``application/x-www-form-urlencoded`` body as a dict (``None`` if not one)."""
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                return None
            chunks.append(chunk)
        try:
            text = b"".join(chunks).decode("ascii")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            return None
        return dict(pairs)

    def same_origin(self, request: Request) -> bool:
        """A state-changing request must come from this origin when the browser says where from."""
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        return origin == expected

    async def checked_post(
        self, request: Request, action: str
    ) -> tuple[Session, dict[str, str]] | Response:
        """The session and form of a state-changing POST, or the refusal to send."""
        session = self.session(request)
        if session is None:
            await self.audit(None, action, f"dashboard-auth:session:{action}", 401)
            return HTMLResponse(
                "<!doctype html><title>Session expired</title>"
                '<p>Your session has expired. <a href="/dashboard/login">Sign in again</a>.</p>',
                status_code=401,
            )
        form = await self.form(request)
        token = form.get("csrf") if form is not None else None
        refusal = None
        if not self.same_origin(request):  # named apart: the fix differs (proxy Host header)
            refusal = ("dashboard-origin", "the request came from another site (its Origin)")
        elif form is None or not self.signer.check_csrf(
            session, token if isinstance(token, str) else None
        ):
            refusal = ("dashboard-csrf", "invalid or missing CSRF token")
        if refusal is not None:
            await self.audit(session, action, f"{refusal[0]}:{action}", 403)
            return HTMLResponse(
                f"<!doctype html><title>Refused</title><p>Refused: {refusal[1]}."
                ' <a href="/dashboard/overview">Back</a></p>',
                status_code=403,
            )
        assert form is not None
        return session, form

    # ---- sign-in ----------------------------------------------------------------------------

    def login_page(self, message: str = "", *, error: bool = False) -> str:
        note = f'<p class="{"error" if error else "notice"}" id="login-message">{e(message)}</p>'
        body = (
            '<div class="login"><form method="post" action="/dashboard/login" id="login">'
            + (note if message else "")
            + '<label for="admin_key">Admin key</label>'
            '<input id="admin_key" name="admin_key" type="password" autocomplete="off" required>'
            '<label for="totp">TOTP code</label>'
            '<input id="totp" name="totp" inputmode="numeric" autocomplete="one-time-code" '
            'pattern="[0-9]{6,8}" required>'
            '<button type="submit">Sign in</button></form></div>'
        )
        return page(
            title="Sign in",
            active="",
            body=body,
            admin=None,
            csrf=None,
            refresh=0,
            now=self.gateway.clock(),
        )

    async def login_get(self, request: Request) -> Response:
        if self.session(request) is not None:
            return RedirectResponse("/dashboard/overview", status_code=303)
        expired = request.query_params.get("expired") == "1"
        return HTMLResponse(self.login_page("Your session has expired." if expired else ""))

    async def login_post(self, request: Request) -> Response:
        form = await self.form(request)
        admin_key = form.get("admin_key") if form is not None else None
        code = form.get("totp") if form is not None else None
        now = self.gateway.clock()
        refused = HTMLResponse(
            self.login_page("Invalid admin key or TOTP code.", error=True), status_code=401
        )
        if (
            self.gateway.admins is None
            or not self.same_origin(request)
            or not isinstance(admin_key, str)
            or not isinstance(code, str)
        ):
            await self.audit(None, "sign-in", "dashboard-auth:malformed", 401)
            return refused
        try:
            admin = await asyncio.to_thread(self.gateway.admins.verify, admin_key, code, now)
        except AuthenticationError as exc:
            reason = str(getattr(exc, "reason", "") or "invalid")
            await self.audit(
                None, "sign-in", f"dashboard-auth:{reason}", 401,
                key_id=getattr(exc, "key_id", None),
            )  # fmt: skip
            return refused
        token, session = self.signer.issue(str(admin.name), str(admin.key_id), now)
        if not await self.audit(session, "sign-in", "dashboard:sign-in", 303):
            return HTMLResponse(self.login_page("Audit log unavailable.", error=True), 503)
        response = RedirectResponse("/dashboard/overview", status_code=303)
        response.set_cookie(
            self.cookie,
            token,
            max_age=int(self.signer.ttl),
            path="/",
            secure=self.secure_cookies or request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        checked = await self.checked_post(request, "sign-out")
        if isinstance(checked, Response):
            return checked
        session, _ = checked
        self.signer.end(session, self.gateway.clock())
        await self.audit(session, "sign-out", "dashboard:sign-out", 303)
        response = RedirectResponse("/dashboard/login", status_code=303)
        self.drop_cookie(request, response)
        return response

    async def root(self, request: Request) -> Response:
        return RedirectResponse("/dashboard/overview", status_code=303)

    # ---- pages ------------------------------------------------------------------------------

    def page_route(
        self,
        active: str,
        title: str,
        render: Callable[[Request, Session], str],
        *,
        live: bool = True,
    ) -> Any:
        """A page; ``live`` pages poll for fresh figures (Audit, Models, Reports do not)."""

        async def handler(request: Request) -> Response:
            session = self.session(request)
            if session is None:
                return self.to_login(request)
            body = await asyncio.to_thread(self.refresh_and_render, render, request, session)
            heading = title.format(**{k: str(v) for k, v in request.path_params.items()})
            return self.html(request, session, heading, active, body, live=live)

        return handler

    def flags(self) -> dict[str, str]:
        try:
            return self.gateway.limits.flags()
        except ShieldError:
            return {}

    def registry_clients(self) -> list[Any]:
        try:
            return list(self.clients.list(include_revoked=True))
        except ShieldError:
            return []

    def overview(self, request: Request, session: Session) -> str:
        now = self.gateway.clock()
        view = self.view
        t0, t1 = view.start(now), now
        flags = self.flags()
        requests = sum(view.total(c) for c in view.model_requests.values())
        rows = sum(view.total(c) for c in view.model_rows.values())
        refused = sum(view.total(c) for c in view.refusals.values())
        active = sum(
            1 for c in view.clients.values() if c.last_seen is not None and c.last_seen > now - 300
        )
        pct = self.latency.overall()

        def ms(q: float) -> str:
            value = pct.get(q)
            return "-" if value is None else f"{value * 1000:.1f} ms"

        minutes = f"{view.window / 60:g} min"
        tiles = (
            '<div class="tiles" id="tiles" data-live>'
            + tile(f"requests, last {minutes}", f"{requests:,}", tile_id="tile-requests")
            + tile(f"rows answered, last {minutes}", f"{rows:,}", tile_id="tile-rows")
            + tile(f"refused, last {minutes}", f"{refused:,}", alert=refused > 0)
            + tile("active clients (5 min)", f"{active:,}", tile_id="tile-active")
            + tile("open flags", f"{len(flags):,}", alert=bool(flags), tile_id="tile-flags")
            + tile("latency p50", ms(0.5))
            + tile("latency p95", ms(0.95))
            + tile("latency p99", ms(0.99))
            + "</div>"
        )
        per_model = [(m, view.series(c, now)) for m, c in sorted(view.model_requests.items())]
        rows_model = [(m, view.series(c, now)) for m, c in sorted(view.model_rows.items())]
        refusal_over_time = [(r, view.series(c, now)) for r, c in sorted(view.refusals.items())]
        refusal_totals = sorted(
            ((r, float(view.total(c))) for r, c in view.refusals.items()), key=lambda x: -x[1]
        )
        lat = self.latency.series()
        charts = (
            '<div class="charts" id="charts" data-live>'
            + '<div class="card">'
            + _svg.line_chart(per_model, title="Requests per model", t0=t0, t1=t1)
            + '</div><div class="card">'
            + _svg.line_chart(rows_model, title="Rows answered per model", t0=t0, t1=t1)
            + '</div><div class="card">'
            + _svg.bar_chart(refusal_totals, title=f"Refusals by reason, last {minutes}")
            + '</div><div class="card">'
            + _svg.line_chart(refusal_over_time, title="Refusals over time", t0=t0, t1=t1)
            + '</div><div class="card">'
            + _svg.line_chart(
                [("p50", lat[0.5]), ("p99", lat[0.99])],
                title="Latency (this process)",
                unit=" ms",
                t0=t0,
                t1=t1,
            )
            + "</div></div>"
        )
        flag_rows = [
            (
                f'<a href="/dashboard/clients/{e(name)}">{e(name)}</a>',
                badge(flag),
                e(when(self._last_flag_time(name))),
            )
            for name, flag in sorted(flags.items())
        ]
        flag_table = (
            '<div id="open-flags" data-live><h2>Open flags</h2>'
            + table(("client", "flag", "since"), flag_rows, table_id="flags-table")
            + "</div>"
        )
        note = ""
        if view.caught_up is not None:
            note = (
                '<p class="notice" id="catching-up">Reading the audit log: charts cover records '
                f"up to {e(when(view.caught_up))} so far.</p>"
            )
        return note + tiles + flag_table + charts

    def _last_flag_time(self, name: str) -> float | None:
        view = self.view.clients.get(name)
        if view is None:
            return None
        times = [a.time for a in view.actions if a.action.startswith("flag")]
        return max(times) if times else None

    def budget_rule(self, client: Any) -> Any:
        tier = self.gateway.tiers.get(str(getattr(client, "tier", "")))
        return None if tier is None else tier.rule

    def budget_series(self, view: ClientView, rule: Any, now: float) -> list[tuple[float, float]]:
        """Share of the budget used in each bucket (rows counted in this view's window)."""
        out: list[tuple[float, float]] = []
        used, window = 0, None
        for t, _ in self.view.series(view.rows, now):
            index = 0 if rule.budget_seconds is None else int(t // rule.budget_seconds)
            if index != window:
                used, window = 0, index
            used += view.rows.get(self.view.index(t), 0)
            out.append((t, 100.0 * used / max(1, rule.budget_rows)))
        return out

    def clients_page(self, request: Request, session: Session) -> str:
        now = self.gateway.clock()
        flags = self.flags()
        registered = {c.name: c for c in self.registry_clients()}
        names = sorted(set(registered) | set(self.view.clients))
        rows = []
        for name in names:
            client = registered.get(name)
            view = self.view.clients.get(name) or ClientView()
            rule = self.budget_rule(client) if client is not None else None
            budget = "-"
            if rule is not None:
                series = self.budget_series(view, rule, now)
                budget = f"{series[-1][1]:.0f}%" if series else "0%"
            top = max(
                view.latest_scores().values(),
                key=lambda s: s.score / s.threshold if s.threshold else 0.0,
                default=None,
            )
            score = "-"
            if top is not None:
                limit = "" if top.threshold is None else f" / {top.threshold:g}"
                score = f"{e(top.detector)} {top.score:.3g}{e(limit)}"
            status = str(getattr(client, "status", "unregistered"))
            rows.append(
                (
                    f'<a href="/dashboard/clients/{e(name)}">{e(name)}</a>',
                    f"<code>{e(getattr(client, 'key_id', '-'))}</code>",
                    e(getattr(client, "tier", "-")),
                    badge(status),
                    num(self.view.total(view.requests)),
                    num(self.view.total(view.rows)),
                    num(self.view.total(view.refused)),
                    e(budget),
                    badge(flags[name]) if name in flags else "-",
                    score,
                    e(when(view.last_seen)),
                )
            )
        headers = ("client", "key id", "tier", "status", "requests", "rows", "refused",
                   "budget used", "flag", "top detector score", "last seen")  # fmt: skip
        return (
            f'<p class="muted">Traffic of the last {self.view.window / 60:g} minutes, from the '
            "audit log. Key ids only: no API key secret is ever stored or shown.</p>"
            '<div id="clients" data-live>'
            + table(headers, rows, table_id="clients-table")
            + "</div>"
        )

    def client_page(self, request: Request, session: Session) -> str:
        name = str(request.path_params["client"])
        now = self.gateway.clock()
        t0, t1 = self.view.start(now), now
        registered = {c.name: c for c in self.registry_clients()}
        client = registered.get(name)
        view = self.view.clients.get(name)
        if client is None and view is None:
            return f'<p class="error">No client named {e(name)}.</p>'
        view = view or ClientView()
        flag = self.flags().get(name)
        csrf = self.signer.csrf_token(session)
        action = f"/dashboard/clients/{name}/action"
        done = request.query_params.get("done", "")
        notice = (
            f'<p class="notice" id="done">Done: {e(done)} ({e(name)}), '
            "recorded in the audit log.</p>"
            if done in ACTIONS
            else ""
        )
        facts = table(
            ("key id", "tier", "status", "models", "flag", "last seen"),
            [
                (
                    f"<code>{e(getattr(client, 'key_id', '-'))}</code>",
                    e(getattr(client, "tier", "-")),
                    badge(str(getattr(client, "status", "unregistered"))),
                    e(", ".join(sorted(getattr(client, "models", ())))),
                    f'<span id="client-flag">{badge(flag) if flag else "none"}</span>',
                    e(when(view.last_seen)),
                )
            ],
        )
        buttons = (
            '<div class="card" id="actions">'
            + csrf_form(action, csrf, "Throttle", fields={"action": "throttle"}, css="warn",
                        button_id="action-throttle")
            + " "
            + csrf_form(action, csrf, "Block", fields={"action": "block"}, css="danger",
                        button_id="action-block")
            + " "
            + csrf_form(action, csrf, "Clear flag", fields={"action": "clear"},
                        button_id="action-clear")
            + ' <span class="muted">Each action is written to the audit log.</span></div>'
        )  # fmt: skip
        charts = [
            _svg.line_chart(
                [
                    ("requests", self.view.series(view.requests, now)),
                    ("refused", self.view.series(view.refused, now)),
                ],
                title="Requests",
                t0=t0,
                t1=t1,
            ),
            _svg.line_chart(
                [("rows", self.view.series(view.rows, now))], title="Rows answered", t0=t0, t1=t1
            ),
        ]
        rule = self.budget_rule(client) if client is not None else None
        if rule is not None:
            charts.append(
                _svg.line_chart(
                    [("budget used", self.budget_series(view, rule, now))],
                    title=f"Budget used (of {rule.budget_rows:,} rows)",
                    unit="%",
                    threshold=100.0,
                    t0=t0,
                    t1=t1,
                )
            )
        for detector, scores in sorted(view.scores.items()):
            threshold = next((s.threshold for s in reversed(scores) if s.threshold), None)
            charts.append(
                _svg.line_chart(
                    [(detector, [(s.time, s.score) for s in scores])],
                    title=f"Detector {detector}",
                    threshold=threshold,
                    t0=t0,
                    t1=t1,
                )
            )
        if not view.scores:
            charts.append(
                '<p class="muted">No detector scores for this client yet (scores appear when '
                "detection writes evidence to the audit log).</p>"
            )
        actions = table(
            ("time", "by", "action", "status"),
            [
                (e(when(a.time)), e(a.who), badge(a.action), e(a.status))
                for a in reversed(view.actions)
            ],
            table_id="actions-table",
        )
        return (
            notice
            + f'<div id="client-facts" data-live>{facts}</div>'
            + buttons
            + '<div class="charts" id="client-charts" data-live>'
            + "".join(f'<div class="card">{c}</div>' for c in charts)
            + "</div>"
            + f'<div id="client-actions" data-live><h2>Flags and actions</h2>{actions}</div>'
        )

    def audit_filters(self, request: Request) -> dict[str, Any]:
        """The audit filters of the query string; ``problems`` names every value that is not
        understood (then nothing is shown or exported: an export must never hold more records
        than were asked for)."""
        q = request.query_params
        problems = []
        window = q.get("window", "1h")
        if window not in WINDOWS:
            problems.append(f"last: not one of {', '.join(WINDOWS)}")
            window = "1h"
        now = self.gateway.clock()
        since = _parse_time(q.get("from", ""))
        if since is None and q.get("from", "").strip():
            problems.append("from: not a date and time (YYYY-MM-DDTHH:MM)")
        if q.get("to", "").strip() and _parse_time(q.get("to", "")) is None:
            problems.append("to: not a date and time (YYYY-MM-DDTHH:MM)")
        if since is None and math.isfinite(WINDOWS[window]):
            since = now - WINDOWS[window]
        decision = q.get("decision", "")
        if decision and decision not in DECISIONS:
            problems.append(f"decision: not one of {', '.join(DECISIONS)}")
        return {
            "problems": problems,
            "client": q.get("client", "").strip()[:200] or None,
            "model": q.get("model", "").strip()[:200] or None,
            "decision": decision if decision in DECISIONS else None,
            "since": since,
            "until": _parse_time(q.get("to", "")),
            "window": window,
            "raw": {k: q.get(k, "") for k in FILTER_FIELDS},
        }

    def audit_records(self, f: Mapping[str, Any], limit: int) -> list[AuditRecord]:
        """The newest ``limit`` matching records. The store reads oldest first, so look back
        10 s from the end, then 10 times further each pass until enough match: a busy log is
        not read from the start of the range to show its last 200 records."""
        end = f["until"] if f["until"] is not None else self.gateway.clock()
        floor = f["since"]
        span = 10.0
        while True:
            start: float | None = end - span
            last = False
            if floor is not None and start is not None and start <= floor:
                start, last = floor, True
            elif floor is None and span > 1e9:
                start, last = None, True
            records = self.store.iter_records(since=start, client=f["client"], by_time=True)
            try:
                found = search(
                    records, model=f["model"], decision=f["decision"], until=f["until"],
                    limit=limit,
                )  # fmt: skip
            finally:
                close = getattr(records, "close", None)
                if close is not None:
                    close()
            if len(found) >= limit or last:
                return found
            span *= 10

    def audit_page(self, request: Request, session: Session) -> str:
        f = self.audit_filters(request)
        raw = f["raw"]
        csrf = self.signer.csrf_token(session)
        records: list[AuditRecord] = []
        if f["problems"]:
            failure = (
                '<p class="error" id="filter-problems">Filters not understood, nothing shown: '
                + e("; ".join(f["problems"]))
                + "</p>"
            )
        else:
            try:
                records = self.audit_records(f, AUDIT_ROWS)
                failure = ""
            except ShieldError as exc:
                failure = f'<p class="error">Audit store unavailable: {e(exc)}</p>'
        window_options = "".join(
            f'<option value="{k}"{" selected" if k == f["window"] else ""}>{k}</option>'
            for k in WINDOWS
        )
        decision_options = '<option value="">any</option>' + "".join(
            f'<option value="{d}"{" selected" if d == f["decision"] else ""}>{d}</option>'
            for d in DECISIONS
        )
        filters = (
            '<form class="filters" method="get" action="/dashboard/audit" id="audit-filters">'
            f'<label>client<input name="client" value="{e(raw["client"])}"></label>'
            f'<label>model<input name="model" value="{e(raw["model"])}"></label>'
            f'<label>decision<select name="decision">{decision_options}</select></label>'
            f'<label>last<select name="window">{window_options}</select></label>'
            f'<label>from (UTC)<input name="from" type="datetime-local" value="{e(raw["from"])}">'
            "</label>"
            f'<label>to (UTC)<input name="to" type="datetime-local" value="{e(raw["to"])}">'
            "</label>"
            '<button type="submit">Filter</button>'
            f'<a href="/dashboard/audit/export?{e(urlencode(raw))}" id="export">Export (JSON lines)'
            "</a></form>"
        )
        status = self.verification_html(csrf)
        rows = [
            (
                e(when(r.time)),
                e(r.client or "-"),
                e(r.model or "-"),
                badge(r.decision),
                e(r.status),
                e(r.reason or "-"),
                num(r.rows),
                f"<code>{e(r.segment[:12])}:{r.seq}</code>",
            )
            for r in records
        ]
        trail = table(
            ("time", "client", "model", "decision", "status", "reason", "rows", "record"),
            rows,
            table_id="audit-table",
        )
        return (
            status
            + filters
            + failure
            + f'<div id="audit-trail" data-live><p class="muted">Newest {AUDIT_ROWS} matching '
            f"records, newest first.</p>{trail}</div>"
        )

    def verification_html(self, csrf: str) -> str:
        button = csrf_form(
            "/dashboard/audit/verify", csrf, "Verify the chain now", button_id="verify"
        )
        if self.verification is None:
            state = '<p id="verify-status">Not verified since this gateway started.</p>'
        else:
            at, report = self.verification
            good = report.last_good
            last = "none" if good is None else f"{good[0]}:{good[1]}"
            verdict = badge("intact", "ok") if report.ok else badge("TAMPERED", "bad")
            bad = "" if report.first_bad is None else f"; first bad record: {e(report.first_bad)}"
            state = (
                f'<p id="verify-status">{verdict} checked {e(when(at))}: '
                f"{report.records_checked:,} records in {report.segments} segments; verified up "
                f"to record <code>{e(last)}</code> (newest time {e(when(report.verified_until))})"
                f"{bad}; {len(report.open_segments)} open segments.</p>"
            )
        return (
            f'<div class="card" id="verification"><h2>Chain verification</h2>{state}{button}</div>'
        )

    def models_page(self, request: Request, session: Session) -> str:
        from modelshield import vault

        cards = []
        for name, predictor in sorted(self.gateway.models.items()):
            path = self.model_paths.get(name)
            facts: list[tuple[str, str]] = [
                ("classes", e(", ".join(str(c) for c in predictor.classes))),
                ("input", f"<code>{e(json.dumps(predictor.input_spec.to_dict()))}</code>"),
                (
                    "extraction detection",
                    badge("on", "ok")
                    if name in getattr(self.gateway, "observers", {})
                    else badge("off"),
                ),
                (
                    "response watermark",
                    badge("on", "ok") if name in self.gateway.markers else badge("off"),
                ),
            ]
            if path is None:
                facts.append(("file", '<span class="muted">not configured here</span>'))
            else:
                facts.append(("file", f"<code>{e(path)}</code>"))
                digest = self.file_digest(path)
                facts.append(("file SHA-256", f"<code>{e(digest or 'unreadable')}</code>"))
                try:
                    info = vault.inspect(path)
                except (ShieldError, OSError):
                    facts.append(("sealed", badge("no: plain file", "bad")))
                else:
                    facts.append(("sealed", badge(f"yes, format v{info.format_version}", "ok")))
                    facts.append(("signer", f"<code>{e(info.signer or 'unsigned')}</code>"))
                    facts.append(("payload digest", f"<code>{e(info.payload_digest)}</code>"))
                    facts.append(
                        (
                            "recipients",
                            "<br>".join(
                                f"{e(r.kind)} <code>{e(r.key_id)}</code> {e(r.detail)}"
                                for r in info.recipients
                            ),
                        )
                    )
            cert = self.certificate(name, path)
            facts.append(("certificate", cert))
            rows = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in facts)
            cards.append(
                f'<div class="card model" id="model-{e(name)}"><h2>{e(name)}</h2>'
                f"<table>{rows}</table></div>"
            )
        return (
            '<p class="muted">What each model file\'s sealed header says. Read here without a '
            "key, it is not authenticated: the signature and the header MAC are checked when "
            "the gateway opens the model.</p>" + "".join(cards)
        )

    def file_digest(self, path: Path) -> str | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (str(path), stat.st_mtime, stat.st_size)
        if key not in self._digests:
            digest = hashlib.sha256()
            try:
                with path.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError:
                return None
            self._digests[key] = digest.hexdigest()
        return self._digests[key]

    def certificate(self, name: str, path: Path | None) -> str:
        candidates = []
        if path is not None:
            candidates.append(path.with_name(path.name + ".cert.json"))
        if self.reports_dir is not None:
            candidates.append(self.reports_dir / f"{name}.cert.json")
        for candidate in candidates:
            if candidate.is_file():
                try:
                    data = orjson.loads(candidate.read_bytes())
                except (OSError, orjson.JSONDecodeError):
                    return badge("unreadable", "bad")
                issued = data.get("issued_at") if isinstance(data, dict) else None
                label = badge("present", "ok")
                return f"{label} <code>{e(candidate.name)}</code> {e(issued or '')}"
        return '<span class="muted">no certificate yet</span>'

    def latest_report(self, patterns: tuple[str, ...]) -> Path | None:
        if self.reports_dir is None or not self.reports_dir.is_dir():
            return None
        found = [p for pattern in patterns for p in self.reports_dir.glob(pattern) if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime, default=None)

    def reports_page(self, request: Request, session: Session) -> str:
        matrix_path = self.latest_report(("*matrix*.json", "*redteam*.json", "*red-team*.json"))
        assess_path = self.latest_report(("*assess*.html", "*risk*.html"))
        parts = ['<div class="card" id="redteam"><h2>Red-team matrix</h2>']
        if matrix_path is None:
            parts.append('<p class="muted">No report yet.</p>')
        else:
            parts.append(
                f'<p class="muted">{e(matrix_path.name)}, written '
                f"{e(when(matrix_path.stat().st_mtime))}</p>"
            )
            parts.append(render_json_report(matrix_path))
        parts.append('</div><div class="card" id="assessment"><h2>Risk assessment</h2>')
        if assess_path is None:
            parts.append('<p class="muted">No report yet.</p>')
        else:
            link = "/dashboard/reports/file/" + quote(assess_path.name, safe="")
            parts.append(
                f'<p><a href="{e(link)}" id="assessment-link">'
                f"{e(assess_path.name)}</a>, written {e(when(assess_path.stat().st_mtime))} "
                "(opens sandboxed: no script runs).</p>"
            )
        parts.append("</div>")
        return "".join(parts)

    async def report_file(self, request: Request) -> Response:
        if self.session(request) is None:
            return self.to_login(request)
        name = str(request.path_params["name"])
        path = self.latest_report(("*assess*.html", "*risk*.html"))
        if path is None or name != path.name:
            return Response("not found", status_code=404, media_type="text/plain")
        response = HTMLResponse(await asyncio.to_thread(path.read_bytes))
        response.headers["Content-Security-Policy"] = REPORT_CSP
        return response

    # ---- actions ----------------------------------------------------------------------------

    async def client_action(self, request: Request) -> Response:
        name = str(request.path_params["client"])
        checked = await self.checked_post(request, "client-action")
        if isinstance(checked, Response):
            return checked
        session, form = checked
        action = form.get("action")
        registered = {c.name for c in self.registry_clients()}
        known = name in registered or name in self.view.clients  # (a lookup needs no lock)
        if not isinstance(action, str) or action not in ACTIONS or not known:
            await self.audit(session, "client-action", f"dashboard-invalid:{name}", 422)
            return HTMLResponse("<!doctype html><p>Unknown client or action.</p>", 422)
        flag = ACTIONS[action]
        try:
            self.gateway.limits.set_flag(name, flag)
        except ShieldError:
            await self.audit(session, action, f"flag:{name}:{flag or 'clear'}", 503)
            return HTMLResponse("<!doctype html><p>State store unavailable.</p>", 503)
        if not await self.audit(session, action, f"flag:{name}:{flag or 'clear'}", 200):
            return HTMLResponse("<!doctype html><p>Audit log unavailable.</p>", 503)
        self.view.expire()  # the page shown next includes this action
        return RedirectResponse(
            f"/dashboard/clients/{name}?{urlencode({'done': action})}", status_code=303
        )

    async def verify_post(self, request: Request) -> Response:
        checked = await self.checked_post(request, "audit-verify")
        if isinstance(checked, Response):
            return checked
        session, _ = checked
        report = await asyncio.to_thread(verify, self.store, self.audit_key)
        self.verification = (self.gateway.clock(), report)
        reason = "dashboard:audit-verify:" + ("ok" if report.ok else "tampered")
        await self.audit(session, "audit-verify", reason, 200)
        return RedirectResponse("/dashboard/audit", status_code=303)

    async def export(self, request: Request) -> Response:
        session = self.session(request)
        if session is None:
            return self.to_login(request)
        f = self.audit_filters(request)
        if f["problems"]:
            await self.audit(session, "audit-export", "dashboard:audit-export:bad-filter", 400)
            return _secure(
                Response(
                    "filters not understood, nothing exported: " + "; ".join(f["problems"]),
                    status_code=400,
                    media_type="text/plain",
                )
            )
        await self.audit(session, "audit-export", "dashboard:audit-export", 200)

        def lines() -> Iterator[bytes]:
            for record in self.store.iter_records(
                since=f["since"], client=f["client"], by_time=True
            ):
                if f["until"] is not None and record.time > f["until"]:
                    break
                if f["model"] and record.model != f["model"]:
                    continue
                if f["decision"] and record.decision != f["decision"]:
                    continue
                yield orjson.dumps(record.to_dict()) + b"\n"

        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.gateway.clock()))
        return StreamingResponse(
            lines(),
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.jsonl"'},
        )

    async def static(self, request: Request) -> Response:
        name = str(request.path_params["name"])
        media = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}.get(name)
        if media is None:
            return Response("not found", status_code=404, media_type="text/plain")
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        response = Response(data, media_type=media)
        response.headers["Cache-Control"] = "no-cache"
        return response


def render_json_report(path: Path) -> str:
    """A red-team result file as a table: a list of records, or an attack x defence mapping."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return '<p class="error">The report could not be read.</p>'
    if isinstance(data, dict):
        for key in ("matrix", "results", "rows", "cells"):
            if key in data:
                data = data[key]
                break
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        columns: list[str] = []
        for record in data[:500]:
            columns.extend(k for k in record if k not in columns)
        rows = [[e(_cell(r.get(c))) for c in columns] for r in data[:500]]
        return table(columns[:12], [r[:12] for r in rows], table_id="matrix")
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        inner: list[str] = []
        for value in data.values():
            inner.extend(k for k in value if k not in inner)
        rows = [
            [f"<strong>{e(row)}</strong>", *(e(_cell(values.get(c))) for c in inner)]
            for row, values in data.items()
        ]
        return table(["", *inner], rows, table_id="matrix")
    text = json.dumps(data, indent=2)[:20000]
    return f"<pre>{e(text)}</pre>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict | list):
        return json.dumps(value)[:200]
    return "" if value is None else str(value)


def routes(dashboard: Dashboard) -> list[Route]:
    """Every dashboard route, each behind the loopback check and with the security headers."""
    g = dashboard.guarded
    d = dashboard
    return [
        Route("/dashboard", g(d.root), methods=["GET"]),
        Route("/dashboard/", g(d.root), methods=["GET"]),
        Route("/dashboard/login", g(d.login_get), methods=["GET"]),
        Route("/dashboard/login", g(d.login_post), methods=["POST"]),
        Route("/dashboard/logout", g(d.logout), methods=["POST"]),
        Route("/dashboard/overview", g(d.page_route("overview", "Overview", d.overview)),
              methods=["GET"]),
        Route("/dashboard/clients", g(d.page_route("clients", "Clients", d.clients_page)),
              methods=["GET"]),
        Route("/dashboard/clients/{client}",
              g(d.page_route("clients", "Client {client}", d.client_page)), methods=["GET"]),
        Route("/dashboard/clients/{client}/action", g(d.client_action), methods=["POST"]),
        Route("/dashboard/audit", g(d.page_route("audit", "Audit", d.audit_page, live=False)),
              methods=["GET"]),
        Route("/dashboard/audit/verify", g(d.verify_post), methods=["POST"]),
        Route("/dashboard/audit/export", g(d.export), methods=["GET"]),
        Route("/dashboard/models", g(d.page_route("models", "Models", d.models_page, live=False)),
              methods=["GET"]),
        Route("/dashboard/reports",
              g(d.page_route("reports", "Reports", d.reports_page, live=False)), methods=["GET"]),
        Route("/dashboard/reports/file/{name}", g(d.report_file), methods=["GET"]),
        Route("/dashboard/static/{name}", g(d.static), methods=["GET"]),
    ]  # fmt: skip
