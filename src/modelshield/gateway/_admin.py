"""Admin endpoints under ``/v1/admin/``: admin key **and** current TOTP code; every call audited.

Clients are listed (never their secrets), revoked, suspended and resumed; detector flags are
listed, set and cleared; the audit chain can be verified.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelshield.errors import AuthenticationError, ShieldError
from modelshield.gateway._limits import FLAGS

if TYPE_CHECKING:
    from modelshield.gateway._app import Gateway

JSON = "application/json"
_log = logging.getLogger(__name__)


class ClientAdmin(Protocol):
    """The registry operations the admin API needs."""

    def list(self, *, include_revoked: bool = False) -> list[Any]: ...

    def revoke(self, name_or_key_id: str) -> Any: ...

    def suspend(self, name_or_key_id: str) -> Any: ...

    def resume(self, name_or_key_id: str) -> Any: ...


def _client_json(client: Any) -> dict[str, Any]:
    return {
        "name": client.name,
        "key_id": client.key_id,
        "models": sorted(client.models),
        "tier": client.tier,
        "created_at": client.created_at,
        "expires_at": client.expires_at,
        "status": str(client.status),
    }


AdminAction = Callable[[Request, dict[str, Any]], Awaitable[Any]]


def admin_routes(
    gateway: Gateway, clients: ClientAdmin, verify_audit: Callable[[], dict[str, Any]] | None
) -> list[Route]:
    """The admin routes for ``gateway``; each runs only after admin key and TOTP are verified."""
    from modelshield.gateway._app import AuditEntry, HttpError, _bearer, _map_error, error_response

    def endpoint(action: str, run: AdminAction, spec: dict[str, Any]) -> Callable[..., Any]:
        async def handler(request: Request) -> Response:
            started = time.perf_counter()
            now = gateway.clock()
            entry: dict[str, Any] = {
                "time": now, "client": None, "key_id": None, "model": None, "body": b"",
                "rows": 0, "output_summary": action, "decision": "refuse", "reason": "",
            }  # fmt: skip
            try:
                if gateway.admins is None:
                    raise HttpError(404, "not_found", "no such endpoint")
                token = _bearer(request)
                code = request.headers.get("x-totp-code", "")
                try:
                    admin = gateway.admins.verify(token, code, now)
                except AuthenticationError as exc:
                    entry["reason"] = "admin-auth:" + str(getattr(exc, "reason", "") or "invalid")
                    entry["key_id"] = getattr(exc, "key_id", None)
                    raise HttpError(
                        401, "unauthenticated", "invalid admin key or TOTP code"
                    ) from None
                entry["client"], entry["key_id"] = f"admin:{admin.name}", admin.key_id
                result = await run(request, entry)
                entry["decision"] = "admin"
                response = Response(orjson.dumps(result), media_type=JSON)
            except HttpError as err:
                entry["reason"] = entry["reason"] or err.code
                response = error_response(err)
            except ShieldError as exc:
                mapped = _map_error(exc)
                if "unknown" in str(exc).lower() or "no client" in str(exc).lower():
                    mapped = HttpError(404, "not_found", str(exc))
                entry["reason"] = entry["reason"] or mapped.code
                response = error_response(mapped)
            except Exception:  # a bug is still audited and never shows a traceback
                _log.exception("unexpected error in admin endpoint %s", action)
                entry["reason"] = "internal"
                response = error_response(HttpError(500, "internal", "internal error"))
            try:
                await gateway.audit.record(AuditEntry(status=response.status_code, **entry))
            except ShieldError:
                response = error_response(
                    HttpError(503, "unavailable", "audit log unavailable", {"Retry-After": "1"})
                )
            gateway.metrics.observe(
                model="",
                status=response.status_code,
                decision="admin" if response.status_code < 400 else "refuse",
                reason=str(entry["reason"]),
                seconds=time.perf_counter() - started,
            )
            return response

        handler.openapi = spec  # type: ignore[attr-defined]
        return handler

    def op(summary: str, op_id: str, method: str, params: tuple[str, ...] = ()) -> dict[str, Any]:
        from modelshield.gateway._openapi import ADMIN_ERRORS

        body: dict[str, Any] = {
            "summary": summary,
            "operationId": op_id,
            "security": [{"adminKey": [], "totp": []}],
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ],
            "responses": {
                "200": {
                    "description": "done",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **ADMIN_ERRORS,
            },
        }
        return {method: body}

    async def list_clients(request: Request, entry: dict[str, Any]) -> Any:
        return {"clients": [_client_json(c) for c in clients.list(include_revoked=True)]}

    def _forget(name: str) -> None:
        # a cleared flag starts the client afresh: its detector state would raise it again
        for observer in gateway.observers.values():
            forget = getattr(observer, "forget", None)
            if callable(forget):
                forget(name)

    def status_change(kind: str) -> AdminAction:
        async def run(request: Request, entry: dict[str, Any]) -> Any:
            name = str(request.path_params["client"])
            entry["reason"] = f"{kind}:{name}"
            client = getattr(clients, kind)(name)
            if kind == "suspend":
                gateway.limits.set_flag(client.name, "block")
            elif kind == "resume":
                gateway.limits.set_flag(client.name, None)
                _forget(client.name)
            return {"client": _client_json(client)}

        return run

    async def list_flags(request: Request, entry: dict[str, Any]) -> Any:
        return {"flags": gateway.limits.flags()}

    async def set_flag(request: Request, entry: dict[str, Any]) -> Any:
        name = str(request.path_params["client"])
        try:
            payload = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise HttpError(400, "bad_request", "body is not valid JSON") from None
        if not isinstance(payload, dict) or "flag" not in payload:
            # a body without the field must not read as "clear the flag"
            raise HttpError(422, "invalid_input", 'the body must be {"flag": FLAG or null}')
        flag = payload["flag"]
        if flag is not None and flag not in FLAGS:
            raise HttpError(422, "invalid_input", f"flag must be one of {', '.join(FLAGS)} or null")
        if name not in {c.name for c in clients.list()}:
            raise HttpError(404, "not_found", "no client of that name with a live key")
        gateway.limits.set_flag(name, flag)
        if flag is None:
            _forget(name)
        entry["reason"] = f"flag:{name}:{flag or 'clear'}"
        return {"client": name, "flag": flag}

    async def clear_flag(request: Request, entry: dict[str, Any]) -> Any:
        name = str(request.path_params["client"])
        gateway.limits.set_flag(name, None)
        _forget(name)
        entry["reason"] = f"flag:{name}:clear"
        return {"client": name, "flag": None}

    async def audit_verify(request: Request, entry: dict[str, Any]) -> Any:
        if verify_audit is None:
            raise HttpError(404, "not_found", "audit verification is not available here")
        return await asyncio.to_thread(verify_audit)

    return [
        Route(
            "/v1/admin/clients",
            endpoint("list-clients", list_clients, op("List clients", "adminListClients", "get")),
            methods=["GET"],
        ),
        *[
            Route(
                f"/v1/admin/clients/{{client}}/{kind}",
                endpoint(
                    kind,
                    status_change(kind),
                    op(
                        f"{kind.capitalize()} a client",
                        f"admin{kind.capitalize()}",
                        "post",
                        ("client",),
                    ),
                ),
                methods=["POST"],
            )
            for kind in ("revoke", "suspend", "resume")
        ],
        Route(
            "/v1/admin/flags",
            endpoint("list-flags", list_flags, op("List detector flags", "adminListFlags", "get")),
            methods=["GET"],
        ),
        Route(
            "/v1/admin/flags/{client}",
            endpoint("set-flag", set_flag, op("Set a flag", "adminSetFlag", "put", ("client",))),
            methods=["PUT"],
        ),
        Route(
            "/v1/admin/flags/{client}",
            endpoint(
                "clear-flag",
                clear_flag,
                op("Clear a flag", "adminClearFlag", "delete", ("client",)),
            ),
            methods=["DELETE"],
        ),
        Route(
            "/v1/admin/audit/verify",
            endpoint(
                "audit-verify", audit_verify, op("Verify the audit log", "adminAuditVerify", "get")
            ),
            methods=["GET"],
        ),
    ]
