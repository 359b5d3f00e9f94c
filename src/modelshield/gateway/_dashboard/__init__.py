"""The monitoring dashboard served by the gateway under ``/dashboard`` (private).

Sign-in with an admin key and a TOTP code; a signed session cookie (HttpOnly, SameSite=Strict,
Secure over TLS) with a fixed lifetime; a CSRF token on every state-changing form; a strict
Content-Security-Policy (scripts and styles only from the gateway, no inline code). Pages:
Overview, Clients (with throttle, block and clear actions, each an audit record), Audit
(filter, verify, export), Models and Reports. Charts are server-rendered SVG; one small served
script refreshes the live parts of a page by polling. Only loopback peers are served unless
``allow_remote`` is set (put a TLS proxy in front then). See docs/dashboard.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.routing import Route

from modelshield.gateway._dashboard._routes import ClientLister, Dashboard, routes

if TYPE_CHECKING:
    from modelshield.gateway._app import Gateway

__all__ = ["ClientLister", "dashboard_routes"]


def dashboard_routes(
    gateway: Gateway,
    *,
    clients: ClientLister,
    audit_store_url: str,
    audit_key: bytes,
    reports_dir: Path | None = None,
    model_paths: Mapping[str, Path] | None = None,
    secure_cookies: bool = False,
    session_ttl: float = 1800.0,
    refresh_seconds: float = 5.0,
    allow_remote: bool = False,
    window_seconds: float = 900.0,
    bucket_seconds: float = 5.0,
) -> list[Route]:
    """The dashboard's routes for ``gateway``; append them to ``gateway.admin_routes``.

    ``clients`` is the client registry (listed, never its secrets); the dashboard reads the audit
    log through its own connection to ``audit_store_url`` (closed with the gateway) and derives
    its session key from ``audit_key``, so every replica sharing that key accepts a session.
    ``reports_dir`` holds red-team results (``*matrix*.json``) and assessments
    (``*assess*.html``); ``model_paths`` names each served model's file (for the Models page).
    """
    from modelshield.stores import open_audit_store

    store = open_audit_store(audit_store_url)
    gateway.on_close.append(store.close)
    dashboard = Dashboard(
        gateway,
        clients=clients,
        store=store,
        audit_key=audit_key,
        reports_dir=reports_dir,
        model_paths=model_paths or {},
        secure_cookies=secure_cookies,
        session_ttl=session_ttl,
        refresh_seconds=refresh_seconds,
        allow_remote=allow_remote,
        window=window_seconds,
        bucket=bucket_seconds,
    )
    return routes(dashboard)
