"""The HTTP gateway: a Starlette application over the guarded pipeline.

The hot path does not parse through pydantic (orjson and numpy only); the OpenAPI document still
describes every endpoint. Every request, accepted or refused, is audited, and a response is sent
only once its audit record is durable: if the audit store cannot write, the answer is 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from modelshield._files import npy_from_bytes
from modelshield.errors import (
    AuthenticationError,
    AuthorizationError,
    InvalidInputError,
    RateLimitedError,
    ServiceUnavailableError,
    ShieldError,
)
from modelshield.gateway._limits import LimitStore
from modelshield.gateway._metrics import GatewayMetrics
from modelshield.gateway._openapi import openapi_document
from modelshield.gateway._pipeline import (
    Answer,
    Clock,
    DeferredObserver,
    Marker,
    Observer,
    Question,
    Tier,
    admit,
    answer,
    answer_many,
    validate,
)
from modelshield.models import Predictor

_log = logging.getLogger(__name__)

JSON = "application/json"
NPY = "application/x-npy"
_THREADPOOL_ROWS = 64  # larger batches are predicted off the event loop
_SEVERITY = {"throttle": 1, "degrade": 2, "block": 3}
#: How soon after a request its deferred detection runs when no next request flushes it first.
IDLE_FLUSH_SECONDS = 0.05


class ClientIdentity(Protocol):
    """What the gateway needs to know about an authenticated client."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    @property
    def tier(self) -> str: ...

    def may_use(self, model: str) -> bool: ...


class Authenticator(Protocol):
    def authenticate(self, api_key: str, now: float) -> Any: ...


class AdminVerifier(Protocol):
    def verify(self, admin_key: str, code: str, now: float) -> Any: ...

    def is_active(self, key_id: str, now: float) -> bool: ...


class AuditSink(Protocol):
    """The audit log seen from the gateway: durable append of one request's record."""

    async def record(self, entry: AuditEntry) -> None: ...


@dataclass(frozen=True)
class AuditEntry:
    """The facts about one request that the audit log keeps."""

    time: float
    client: str | None
    key_id: str | None
    model: str | None
    body: bytes
    rows: int
    output_summary: str
    decision: str
    reason: str
    status: int
    extra: dict[str, Any] = field(default_factory=dict)
    # (input row array, label returned, how the watermark decided it)
    marks: tuple[tuple[Any, Any, str], ...] = ()


class HttpError(Exception):
    """An error answer: status, machine code, human message, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(err: HttpError) -> Response:
    body = orjson.dumps({"error": {"code": err.code, "message": err.message}})
    return Response(body, status_code=err.status, media_type=JSON, headers=err.headers)


def _bearer(request: Request) -> str:
    return _bearer_token(request.headers.get("authorization", ""))


def _bearer_token(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HttpError(401, "unauthenticated", "missing or malformed Authorization: Bearer header")
    return token.strip()


def _predict_headers(raw: list[tuple[bytes, bytes]]) -> tuple[str, str | None, str]:
    """Authorization, Content-Length (``None`` when absent) and Content-Type of a request, in one
    pass over the ASGI headers (names are lower case there); the first of repeated headers counts,
    as with Starlette's ``Headers.get``."""
    auth: bytes | None = None
    length: bytes | None = None
    media: bytes | None = None
    for name, value in raw:
        if name == b"authorization":
            if auth is None:
                auth = value
        elif name == b"content-length":
            if length is None:
                length = value
        elif name == b"content-type" and media is None:
            media = value
    return (
        "" if auth is None else auth.decode("latin-1"),
        None if length is None else length.decode("latin-1"),
        "" if media is None else media.decode("latin-1"),
    )


#: at most one log line per this many seconds about a backing service that is down
UNAVAILABLE_LOG_SECONDS = 10.0
_last_unavailable_log = [-math.inf]


def _warn_unavailable(exc: ServiceUnavailableError) -> None:
    now = time.monotonic()
    if now - _last_unavailable_log[0] >= UNAVAILABLE_LOG_SECONDS:
        _last_unavailable_log[0] = now
        _log.warning("answering 503: %s (said at most every %.0f s)", exc, UNAVAILABLE_LOG_SECONDS)


def _map_error(exc: ShieldError) -> HttpError:
    if isinstance(exc, AuthenticationError):
        return HttpError(401, "unauthenticated", "invalid API key")
    if isinstance(exc, AuthorizationError):
        return HttpError(403, "forbidden", str(exc))
    if isinstance(exc, RateLimitedError):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(np.ceil(exc.retry_after))))
        return HttpError(429, "rate_limited", str(exc), headers)
    if isinstance(exc, InvalidInputError):
        message = str(exc)
        if message.startswith("too many rows"):  # the same 413 and code as a body too large
            return HttpError(413, "too_large", message)
        return HttpError(422, "invalid_input", message)
    if isinstance(exc, ServiceUnavailableError):
        _warn_unavailable(exc)  # the caller learns nothing of the cause; the operator must
        return HttpError(
            503, "unavailable", "service temporarily unavailable", {"Retry-After": "1"}
        )
    return HttpError(400, "bad_request", str(exc))


def _load_npy(body: bytes) -> Any:
    """A ``.npy`` body (its header checked against its size before anything is allocated)."""
    try:
        return npy_from_bytes(body)
    except InvalidInputError as exc:
        raise HttpError(400, "bad_request", f"not a valid .npy array: {exc}") from None


def _holds_bool(value: Any) -> bool:
    """Whether a JSON boolean is anywhere in ``value`` (nested lists, walked without recursion:
    orjson accepts 1,024 levels, more than Python's stack would)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False


def parse_inputs(body: bytes, content_type: str) -> Any:
    """Decode a request body into an array-like (JSON ``{"inputs": [...]}`` or ``.npy``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == NPY:
        return _load_npy(body)
    if media in (JSON, ""):
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise HttpError(400, "bad_request", "body is not valid JSON") from None
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise HttpError(400, "bad_request", 'body must be a JSON object {"inputs": [[...]]}')
        inputs = payload["inputs"]
        if not isinstance(inputs, list):
            raise HttpError(422, "invalid_input", '"inputs" must be a list of rows')
        # numpy would read true/false as 1/0; the search is only paid by a body that has them
        if (b"true" in body or b"false" in body) and _holds_bool(inputs):
            raise HttpError(422, "invalid_input", "inputs must be numbers, not true or false")
        return inputs
    raise HttpError(415, "unsupported_media_type", f"use {JSON} or {NPY}")


@dataclass
class Gateway:
    """Everything one gateway process serves with."""

    models: dict[str, Predictor]
    tiers: dict[str, Tier]
    registry: Authenticator
    limits: LimitStore
    audit: AuditSink
    admins: AdminVerifier | None = None
    markers: dict[str, Marker] = field(default_factory=dict)  # per model
    observers: dict[str, Observer] = field(default_factory=dict)  # per model
    max_body_bytes: int = 1_048_576
    body_timeout: float = 30.0  # seconds a body may take to arrive (then 408)
    clock: Clock = time.time
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    admin_routes: list[Route] = field(default_factory=list)
    on_close: list[Callable[[], None]] = field(default_factory=list)
    idle_flush_seconds: float = IDLE_FLUSH_SECONDS
    _idle_flush: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)
    # requests reading their body -> when they must have it; the sweeper cancels the late ones
    _reading: dict[asyncio.Task[Any], float] = field(default_factory=dict, init=False, repr=False)
    _late: set[asyncio.Task[Any]] = field(default_factory=set, init=False, repr=False)
    _sweeper: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)
    _sweeper_loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _detached: set[asyncio.Future[None]] = field(default_factory=set, init=False, repr=False)
    # client -> a flag (and its evidence) found but not yet set: the state store was down
    _unapplied: dict[str, tuple[str, dict[str, Any]]] = field(
        default_factory=dict, init=False, repr=False
    )
    # model -> the batches waiting to be answered together at the end of this loop turn
    _questions: dict[str, list[tuple[Question, asyncio.Future[Answer]]]] = field(
        default_factory=dict, init=False, repr=False
    )
    # client -> when (time.monotonic) its latest batch was deferred
    _deferred_at: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    # client -> the requests waiting for this loop round's flush of its released rows
    _waiting: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = field(
        default_factory=dict, init=False, repr=False
    )

    async def read_body(self, request: Request, declared: str | None) -> bytes:
        """The body, at most ``max_body_bytes`` (``declared``: the Content-Length header).

        Reads the ASGI messages directly rather than through ``Request.stream()`` (an async
        generator per request)."""
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > self.max_body_bytes
        ):
            raise HttpError(413, "too_large", f"body larger than {self.max_body_bytes} bytes")
        receive = request.receive
        chunks: list[bytes] = []
        size = 0
        # a deadline per request, checked by one timer for all (asyncio.timeout costs about 8 us
        # a request: a twentieth of the guarded path)
        task = asyncio.current_task()
        if task is not None:
            self._reading[task] = time.monotonic() + self.body_timeout
            loop = asyncio.get_running_loop()
            if self._sweeper is None or self._sweeper_loop is not loop:  # a new loop: re-arm
                self._sweeper_loop = loop
                self._sweeper = loop.call_later(1.0, self._sweep)
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:  # the rest is not read: end the connection
                    raise HttpError(
                        413,
                        "too_large",
                        f"body larger than {self.max_body_bytes} bytes",
                        {"Connection": "close"},
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except asyncio.CancelledError:
            if task is None or task not in self._late:
                raise
            self._late.discard(task)
            if task.uncancel() > 0:  # the server cancelled it too (shutting down): let it go
                raise
            # cancelled by the sweeper only: answer, and end the connection (uvicorn would keep
            # it open for a client that goes on trickling bytes)
            raise HttpError(
                408,
                "timeout",
                f"the body did not arrive within {self.body_timeout:g} s",
                {"Connection": "close"},
            ) from None
        finally:
            if task is not None:
                self._reading.pop(task, None)
                self._late.discard(task)

    def _sweep(self) -> None:
        """Cancel the body reads that are past their deadline; run again while any is going."""
        now = time.monotonic()
        for task, deadline in list(self._reading.items()):
            if deadline <= now and task not in self._late:
                self._late.add(task)
                task.cancel()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(1.0, self._sweep) if self._reading else None

    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        now = self.clock()
        model_name = str(request.path_params["name"])[:200]  # the path is the caller's: bound it
        entry: dict[str, Any] = {
            "time": now, "client": None, "key_id": None, "model": model_name, "body": b"",
            "rows": 0, "output_summary": "refused", "decision": "refuse", "reason": "",
        }  # fmt: skip
        after: list[Callable[[], None]] = []
        try:
            response = await self._predict(request, now, entry, after)
        except HttpError as err:
            entry["reason"] = entry["reason"] or err.code
            response = error_response(err)
        except ShieldError as exc:
            mapped = _map_error(exc)
            entry["reason"] = entry["reason"] or mapped.code
            response = error_response(mapped)
        except ClientDisconnect:  # gone before its body arrived: audited, nobody to answer
            entry["reason"] = "client_disconnect"
            response = error_response(
                HttpError(499, "client_disconnect", "the client closed the connection")
            )
        except Exception:  # a bug must still be audited and must not leak a traceback
            _log.exception("unexpected error while answering a prediction")
            entry["reason"] = "internal"
            response = error_response(HttpError(500, "internal", "internal error"))
        metric_model = model_name if model_name in self.models else "unknown"
        response = await self._finish(response, entry, metric_model, started)
        for hook in after:
            hook()
        return response

    async def _predict(
        self,
        request: Request,
        now: float,
        entry: dict[str, Any],
        after: list[Callable[[], None]],
    ) -> Response:
        """Answer one prediction request; ``after`` collects what to run once it is answered."""
        authorization, declared, content_type = _predict_headers(request.scope["headers"])
        token = _bearer_token(authorization)
        try:
            client = self.registry.authenticate(token, now)
        except AuthenticationError as exc:
            entry["reason"] = "auth:" + str(getattr(exc, "reason", "") or "invalid")
            # the public key id of a key that parsed (revoked, expired, wrong secret...): which
            # key is being tried is for the audit record, never for the caller
            entry["key_id"] = getattr(exc, "key_id", None)
            raise HttpError(401, "unauthenticated", "invalid API key") from None
        entry["client"], entry["key_id"] = client.name, client.key_id
        model_name = entry["model"]
        predictor = self.models.get(model_name)
        if predictor is None or not client.may_use(model_name):
            entry["reason"] = "scope"
            shown = model_name if len(model_name) <= 64 else model_name[:61] + "..."
            raise HttpError(404, "not_found", f"no model named {shown!r} for this key")
        tier = self.tiers.get(client.tier)
        if tier is None:
            entry["reason"] = "tier"
            raise HttpError(403, "forbidden", "this key's tier is not configured")
        body = await self.read_body(request, declared)
        entry["body"] = body
        inputs = parse_inputs(body, content_type)
        batch = validate(predictor, inputs)
        entry["rows"] = int(batch.shape[0])
        await self._observe_earlier(client.name, entry)  # their flag acts on this request
        decision = admit(self.limits, client.name, tier, batch.shape[0], now)
        observer = self.observers.get(model_name)
        deferred = _deferred(observer)
        degraded = decision.flag == "degrade"
        marker = self.markers.get(model_name)
        if batch.shape[0] > _THREADPOOL_ROWS:
            result = await asyncio.to_thread(
                answer, predictor, batch, tier, self.rng,
                client=client.name, degraded=degraded, marker=marker,
            )  # fmt: skip
        else:
            result = await self._answer_soon(
                model_name, Question(batch, tier, client.name, degraded)
            )
        if deferred is not None:
            if deferred.defer(client.name, batch, result.scores, now, client.tier):
                flag, evidence = deferred.flush(client.name)  # too many rows waiting
                self._escalate(client.name, flag, evidence, entry, decision.flag)
            else:
                after.append(functools.partial(deferred.release, client.name))
                self._deferred_at[client.name] = time.monotonic()
                self._schedule_idle_flush()
        elif observer is not None:
            flag, evidence = observer.observe(client.name, batch, result.scores, now, client.tier)
            self._escalate(client.name, flag, evidence, entry, decision.flag)
        entry["decision"] = "degrade" if degraded else "allow"
        entry["output_summary"] = ",".join(str(label) for label in result.labels[:16])
        if result.marked_rows.size:
            entry["marks"] = tuple(
                (batch[i], result.labels[i], kind)
                for i, kind in zip(result.marked_rows.tolist(), result.marked_kinds, strict=True)
            )
        payload: dict[str, Any] = {"model": model_name, "labels": result.labels}
        if result.probabilities is not None:
            payload["probabilities"] = result.probabilities
        self.metrics.rows_served(model_name, int(batch.shape[0]))  # model_name is served here
        return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)

    def _answer_soon(self, model: str, question: Question) -> asyncio.Future[Answer]:
        """Answer ``question`` together with the other small batches of ``model`` that reach
        this point in the same turn of the event loop: one prediction for all of them (see
        :func:`~modelshield.gateway._pipeline.answer_many`)."""
        loop = asyncio.get_running_loop()
        queue = self._questions.get(model)
        if queue is None:
            if not self._questions:
                loop.call_soon(self._answer_questions)
            queue = self._questions[model] = []
        future: asyncio.Future[Answer] = loop.create_future()
        queue.append((question, future))
        return future

    def _answer_questions(self) -> None:
        """Answer every waiting batch, one prediction per model; when that fails, each batch
        alone, so that an error reaches only the request it belongs to."""
        questions, self._questions = self._questions, {}
        for model, items in questions.items():
            live = [(q, f) for q, f in items if not f.done()]
            if not live:
                continue
            predictor, marker = self.models[model], self.markers.get(model)
            try:
                answers = answer_many(predictor, [q for q, _ in live], self.rng, marker=marker)
            except Exception:
                for q, future in live:
                    try:
                        future.set_result(
                            answer(
                                predictor, q.batch, q.tier, self.rng,
                                client=q.client, degraded=q.degraded, marker=marker,
                            )
                        )  # fmt: skip
                    except Exception as exc:
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, answers, strict=True):
                future.set_result(result)

    def _escalate(
        self,
        client: str,
        flag: str | None,
        evidence: dict[str, Any],
        entry: dict[str, Any],
        current: str | None = None,
        *,
        look_up: bool = False,
    ) -> None:
        """Set ``flag`` when it is stronger than the client's ``current`` one (read from the
        store when ``look_up``; escalate only: a flag is cleared by an admin, never by quieter
        traffic) and note it in the audit ``entry``."""
        if flag is not None:
            try:
                if look_up:
                    current = self.limits.get_flag(client)
                if _SEVERITY[flag] > _SEVERITY.get(current or "", 0):
                    self.limits.set_flag(client, flag)
                    entry["extra"] = {"flag": flag, "evidence": evidence}
                    return
            except Exception:
                # the rows that raised it are observed already: keep the flag until it is set
                kept = self._unapplied.get(client)
                if kept is None or _SEVERITY[flag] >= _SEVERITY[kept[0]]:
                    self._unapplied[client] = (flag, evidence)
                raise
        if "flag" in entry.get("extra", {}):
            return
        if evidence.get("alert"):
            entry["extra"] = {"flag": "alert", "evidence": evidence["alert"]}
        elif evidence.get("scores"):
            entry["extra"] = {"scores": evidence["scores"]}  # for the dashboard's charts

    async def _observe_earlier(self, client: str, entry: dict[str, Any]) -> None:
        """Before admitting ``client``: set a flag that could not be set earlier, then observe the
        client's deferred rows of every model whose response went out (flags are per client, not
        per model).

        The observation is shared: every request of the client that arrives in the same turn of
        the event loop waits for one flush at the end of that turn, so that the detectors see the
        rows of many concurrent requests in one batch (their cost per row falls several times).
        The flush sets the flags it finds itself; the first of those requests carries what it
        found in its audit record."""
        kept = self._unapplied.pop(client, None)
        if kept is not None:
            self._escalate(client, kept[0], kept[1], entry, look_up=True)
        if not any(
            deferred.has_released(client)
            for deferred in map(_deferred, self.observers.values())
            if deferred is not None
        ):
            return
        waiting = self._waiting.get(client)
        if waiting is None:
            if not self._waiting:
                asyncio.get_running_loop().call_soon(self._flush_waiting)
            waiting = self._waiting[client] = []
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        waiting.append(future)
        try:
            extra = await future
        except asyncio.CancelledError:
            # gone after the flush handed it the evidence (the flag is set): audit it anyway
            if future.done() and not future.cancelled() and future.exception() is None:
                found = future.result()
                if found is not None:
                    self._record_detection(client, None, self.clock(), {"extra": found})
            raise
        if extra is None:
            return
        if "flag" not in entry.get("extra", {}):
            entry["extra"] = extra
        elif "flag" in extra:  # this record carries an earlier flag already: one of its own
            self._record_detection(client, None, self.clock(), {"extra": extra})

    def _flush_waiting(self) -> None:
        """Observe the released rows of every client with requests waiting (see
        :meth:`_observe_earlier`) and set the flags found, model by model, before any of those
        requests goes on. The first waiting request gets the audit evidence (the others
        ``None``); when nobody waits any more it gets a record of its own. A failure reaches
        every waiting request, after the other models' rows were observed and their flags set
        (a flag the state store refused is kept for the client's next request)."""
        waiting, self._waiting = self._waiting, {}
        for client, futures in waiting.items():
            found: dict[str, Any] = {}
            error: Exception | None = None
            for deferred in map(_deferred, self.observers.values()):
                if deferred is None:
                    continue
                try:
                    flag, evidence = deferred.flush(client, released_only=True)
                    self._escalate(client, flag, evidence, found, look_up=True)
                except Exception as exc:
                    error = error or exc
            live = [f for f in futures if not f.done()]
            if error is None and live:
                live[0].set_result(found.get("extra"))
                for future in live[1:]:
                    future.set_result(None)
                continue
            self._record_detection(client, None, self.clock(), found)
            if error is not None:
                for future in live:
                    future.set_exception(error)

    def _schedule_idle_flush(self) -> None:
        if self._idle_flush is None:
            loop = asyncio.get_running_loop()
            self._idle_flush = loop.call_later(self.idle_flush_seconds, self._flush_idle)

    def _flush_idle(self, *, everything: bool = False) -> None:
        """Observe the deferred batches of every client that sent nothing for
        ``idle_flush_seconds`` (of all clients when ``everything``), on the event loop after the
        responses went out; a flag found here is set at once and audited in a record of its own.

        A client that keeps sending is left to its own next requests, which observe its answered
        rows in larger batches (a flush every ``idle_flush_seconds`` would cut them up)."""
        self._idle_flush = None
        now = self.clock()
        for client in list(self._unapplied):
            kept = self._unapplied.pop(client)
            entry: dict[str, Any] = {}
            try:
                self._escalate(client, kept[0], kept[1], entry, look_up=True)
            except Exception:  # kept again by _escalate; retried at the client's next request
                _log.warning("cannot set the detection flag of a client yet")
                continue
            self._record_detection(client, None, now, entry)
        quiet_since = time.monotonic() - self.idle_flush_seconds
        busy = False
        for model_name, observer in self.observers.items():
            deferred = _deferred(observer)
            if deferred is None:
                continue
            for client in deferred.pending_clients():
                if not everything and self._deferred_at.get(client, 0.0) > quiet_since:
                    busy = True
                    continue
                entry = {}
                try:
                    flag, evidence = deferred.flush(client)
                    self._escalate(client, flag, evidence, entry, look_up=True)
                except Exception:  # a flag found is kept and set at the next chance
                    _log.exception("deferred extraction detection failed")
                    continue
                self._record_detection(client, model_name, now, entry)
        for client in [c for c, at in self._deferred_at.items() if everything or at <= quiet_since]:
            del self._deferred_at[client]
        if busy:
            self._schedule_idle_flush()

    def _record_detection(
        self, client: str, model: str | None, now: float, entry: dict[str, Any]
    ) -> None:
        """Audit what a flush off the request path found, in a record of its own."""
        if "extra" not in entry:
            return
        record = AuditEntry(
            time=now, client=client, key_id=None, model=model, body=b"", rows=0,
            output_summary="", decision="detect", reason="detection", status=0,
            extra=entry["extra"],
        )  # fmt: skip
        task = asyncio.ensure_future(self._record_detached(record))
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def _record_detached(self, record: AuditEntry) -> None:
        try:
            await self.audit.record(record)
        except Exception:  # the flag is set; only its record is missing: say so loudly
            _log.error(
                "audit store unavailable: the detection result for client %s was not recorded "
                "(flag %s)", record.client, record.extra.get("flag"),
            )  # fmt: skip

    async def drain(self) -> None:
        """Observe every deferred batch and wait for the records of what that found (call
        before :meth:`close` on shutdown, on the serving loop)."""
        if self._idle_flush is not None:
            self._idle_flush.cancel()
        self._flush_idle(everything=True)
        if self._detached:
            await asyncio.gather(*self._detached, return_exceptions=True)

    async def _finish(
        self, response: Response, entry: dict[str, Any], model: str | None, started: float
    ) -> Response:
        try:
            await self.audit.record(AuditEntry(status=response.status_code, **entry))
        except ServiceUnavailableError:
            _log.error("audit store unavailable: refusing to answer without a record")
            response = error_response(
                HttpError(503, "unavailable", "audit log unavailable", {"Retry-After": "1"})
            )
        self.metrics.observe(
            model=model or "",
            status=response.status_code,
            decision=str(entry["decision"]) if response.status_code < 500 else "error",
            reason=str(entry["reason"]) if response.status_code >= 400 else "",
            seconds=time.perf_counter() - started,
        )
        return response

    async def list_models(self, request: Request) -> Response:
        started = time.perf_counter()
        now = self.clock()
        entry: dict[str, Any] = {
            "time": now, "client": None, "key_id": None, "model": None, "body": b"",
            "rows": 0, "output_summary": "", "decision": "refuse", "reason": "",
        }  # fmt: skip
        try:
            client = self.registry.authenticate(_bearer(request), now)
            entry["client"], entry["key_id"] = client.name, client.key_id
            models = [
                {
                    "name": name,
                    "input": predictor.input_spec.to_dict(),
                    "classes": list(predictor.classes),
                }
                for name, predictor in sorted(self.models.items())
                if client.may_use(name)
            ]
            entry["decision"], entry["output_summary"] = "allow", "list"
            response = Response(orjson.dumps({"models": models}), media_type=JSON)
        except HttpError as err:
            entry["reason"] = err.code
            response = error_response(err)
        except ShieldError as exc:
            mapped = _map_error(exc)
            entry["reason"] = mapped.code
            entry["key_id"] = getattr(exc, "key_id", None)
            response = error_response(mapped)
        return await self._finish(response, entry, None, started)

    async def healthz(self, request: Request) -> Response:
        return Response(orjson.dumps({"status": "ok"}), media_type=JSON)

    async def metrics_endpoint(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def openapi(self, request: Request) -> Response:
        """The OpenAPI document for the caller's models (a client key is needed: the document
        describes each model's exact input rows, which an anonymous caller has no need for)."""
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "time": self.clock(), "client": None, "key_id": None, "model": None, "body": b"",
            "rows": 0, "output_summary": "", "decision": "refuse", "reason": "",
        }  # fmt: skip
        try:
            client = self.registry.authenticate(_bearer(request), entry["time"])
            entry["client"], entry["key_id"] = client.name, client.key_id
            visible = {n: p for n, p in self.models.items() if client.may_use(n)}
            entry["decision"], entry["output_summary"] = "allow", "openapi"
            response = Response(orjson.dumps(openapi_document(self, visible)), media_type=JSON)
        except HttpError as err:
            entry["reason"] = err.code
            response = error_response(err)
        except ShieldError as exc:
            mapped = _map_error(exc)
            entry["reason"] = mapped.code
            entry["key_id"] = getattr(exc, "key_id", None)
            response = error_response(mapped)
        return await self._finish(response, entry, None, started)

    async def refuse_route(self, request: Request, err: HttpError) -> Response:
        """The answer to a path or method that no endpoint serves, audited like any refusal
        (the method and the first 200 characters of the path go into ``extra``)."""
        entry: dict[str, Any] = {
            "time": self.clock(), "client": None, "key_id": None, "model": None, "body": b"",
            "rows": 0, "output_summary": "refused", "decision": "refuse",
            "reason": "route:" + err.code,
            "extra": {"method": request.method[:16], "path": request.url.path[:200]},
        }  # fmt: skip
        return await self._finish(error_response(err), entry, None, time.perf_counter())

    def close(self) -> None:
        if self._idle_flush is not None:
            self._idle_flush.cancel()
            self._idle_flush = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for hook in reversed(self.on_close):
            try:
                hook()
            except Exception:  # closing must go on whatever one resource does
                _log.exception("error while closing the gateway")


Handler = Callable[[Request], Awaitable[Response]]


def _deferred(observer: Observer | None) -> DeferredObserver | None:
    """``observer`` when it can observe after the response (see :class:`DeferredObserver`)."""
    if observer is not None and callable(getattr(observer, "defer", None)):
        return cast(DeferredObserver, observer)
    return None


async def _server_error(request: Request, exc: Exception) -> Response:
    _log.exception("unexpected error", exc_info=exc)
    return error_response(HttpError(500, "internal", "internal error"))


def build_app(gateway: Gateway) -> Any:
    """The ASGI application serving ``gateway``."""
    routes = [
        Route("/v1/models/{name}/predict", gateway.predict, methods=["POST"]),
        Route("/v1/models", gateway.list_models, methods=["GET"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/metrics", gateway.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", gateway.openapi, methods=["GET"]),
        *gateway.admin_routes,
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            try:
                await gateway.drain()
            finally:
                gateway.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        return await gateway.refuse_route(request, HttpError(404, "not_found", "no such endpoint"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return await gateway.refuse_route(
            request, HttpError(405, "method_not_allowed", "method not allowed")
        )

    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: method_not_allowed, 500: _server_error},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return _FastPredict(app, gateway)


class _FastPredict:
    """Serve ``POST /v1/models/{name}/predict`` without Starlette's router and middleware stack
    (about a fifth of the per-request cost on a 1-row request); everything else goes to ``app``.
    An unexpected exception still becomes a JSON 500, never a traceback."""

    def __init__(self, app: Starlette, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        self.state = app.state
        self.routes = app.routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and path.startswith("/v1/models/")
            and path.endswith("/predict")
        ):
            name = path[len("/v1/models/") : -len("/predict")]
            if name and "/" not in name:
                request = Request(scope, receive)
                request.scope["path_params"] = {"name": name}
                try:
                    response = await self.gateway.predict(request)
                except (
                    Exception
                ) as exc:  # the same last resort as Starlette's ServerErrorMiddleware
                    _log.exception("unexpected error", exc_info=exc)
                    response = error_response(HttpError(500, "internal", "internal error"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
