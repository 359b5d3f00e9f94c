"""The writer: group commit of chained records from one background thread per log.

Requests hand their event to :meth:`AuditLog.append` and get a future; one thread takes everything
queued, chains it, writes it in ONE transaction and resolves the futures only after the commit.
While it commits, new events queue up and form the next batch, so the commit cost is shared by
every request that arrived meanwhile (group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time as _time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import orjson

from modelshield.audit._records import (
    GENESIS,
    RECORD_DOMAIN,
    AuditEvent,
    AuditRecord,
    MarkRecord,
    RecordKind,
    SegmentHead,
    WatermarkMark,
    head_mac,
    input_hmac_state,
    marks_digest,
)
from modelshield.audit._store import AuditStore
from modelshield.errors import ServiceUnavailableError, ShieldError

__all__ = ["AuditLog"]

_log = logging.getLogger("modelshield.audit")

#: How many other segments' heads a new segment witnesses in its opening record.
WITNESS_LIMIT = 256
_MIN_KEY = 16
_SORTED = orjson.OPT_SORT_KEYS


@dataclass(slots=True)
class _Pending:
    event: AuditEvent
    marks: tuple[WatermarkMark, ...]
    # exactly one of the two: a thread future (append) or an asyncio future and its loop
    future: Future[AuditRecord] | None
    afuture: asyncio.Future[AuditRecord] | None = None
    loop: asyncio.AbstractEventLoop | None = None


@dataclass(slots=True)
class _Tip:
    seq: int
    hash: str


def _safe_segment(writer_id: str) -> str:
    if (
        not writer_id
        or len(writer_id) > 64
        or not all(c.isalnum() or c in "-_." for c in writer_id)
    ):
        raise ValueError("writer_id may use 1-64 letters, digits, '-', '_', '.'")
    return writer_id


class AuditLog:
    """A tamper-evident, fail-closed audit log writer for one process (stable).

    ``store`` is any :class:`~modelshield.audit.AuditStore`; ``key`` the audit HMAC key (at least
    16 bytes; never logged, never in ``repr``). This process writes its own chain segment, named
    ``writer_id`` plus a random suffix, so several processes and replicas never contend for one
    chain; :func:`~modelshield.audit.verify` stitches the segments together.

    ``append`` returns a :class:`concurrent.futures.Future` that resolves to the stored
    :class:`~modelshield.audit.AuditRecord` once it is committed, or fails with
    :class:`~modelshield.errors.ServiceUnavailableError` if the store cannot write. After a failure
    new appends fail at once for ``retry_after`` seconds, then the next batch tries the store again:
    the log recovers without a restart. Create one log per process (after any fork); call
    :meth:`close` on shutdown to flush and write the segment's closing record.

    Group commit: a batch holds at most ``max_batch`` events; when fewer have queued than in the
    previous batch, the writer waits up to ``max_linger`` seconds (and at most a quarter of a
    recent commit's duration) for more. ``clock`` gives the time of the open and close records.
    """

    def __init__(
        self,
        store: AuditStore,
        key: bytes,
        writer_id: str | None = None,
        *,
        clock: Callable[[], float] = _time.time,
        max_batch: int = 1024,
        max_linger: float = 0.002,
        retry_after: float = 0.25,
    ) -> None:
        if not isinstance(key, bytes) or len(key) < _MIN_KEY:
            raise ValueError(f"the audit key must be at least {_MIN_KEY} bytes")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        suffix = secrets.token_hex(8)
        self._segment = f"{_safe_segment(writer_id)}.{suffix}" if writer_id else suffix
        self._store = store
        self._key = key
        # keyed HMAC states set up once; each record or body hashes a copy
        self._chain_mac = hmac.new(key, digestmod=hashlib.sha256)
        self._input_mac = input_hmac_state(key)
        self._clock = clock
        self._max_batch = max_batch
        self._max_linger = max_linger
        self._last_batch = 1
        self._wake_at = 1  # queue length at which an append wakes the writer
        self._commit_seconds = 0.0  # moving average of a commit's duration
        self._retry_after = retry_after
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._inflight: list[_Pending] = []
        # appends made on an event loop, waiting for that loop's next iteration (see _hand_over)
        self._staged: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Pending]] = (
            weakref.WeakKeyDictionary()
        )
        self._closing = False
        self._close_error: ShieldError | None = None
        self._fail_until = 0.0
        self._tip: _Tip | None = None  # None: unknown, read the head before the next batch
        self._opened = False
        self._thread = threading.Thread(
            target=self._run, name=f"modelshield-audit-{self._segment}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"AuditLog(segment={self._segment!r}, store={type(self._store).__name__})"

    @property
    def segment(self) -> str:
        """The id of this writer's chain segment."""
        return self._segment

    # -- the request side -------------------------------------------------------------------

    def input_digest(self, data: bytes) -> str:
        """:func:`~modelshield.audit.input_digest` under this log's key (for the ``input_hmac``
        of an event), a little cheaper: the keyed state is set up once per log."""
        mac = self._input_mac.copy()
        mac.update(data)
        return mac.hexdigest()

    def _enqueue(self, pending: _Pending) -> None:
        if not isinstance(pending.event, AuditEvent):
            raise TypeError("append takes an AuditEvent")
        with self._cond:
            if self._closing:
                raise ServiceUnavailableError("audit log is closed")
            queue = self._queue
            queue.append(pending)
            if len(queue) >= self._wake_at or len(queue) == 1:
                self._cond.notify()

    def append(self, event: AuditEvent, marks: Sequence[WatermarkMark] = ()) -> Future[AuditRecord]:
        """Queue ``event`` (and its watermark ``marks``); the future resolves once durable."""
        future: Future[AuditRecord] = Future()
        if _time.monotonic() < self._fail_until:
            future.set_exception(ServiceUnavailableError("audit store unavailable"))
            return future
        self._enqueue(_Pending(event, tuple(marks), future))
        return future

    async def append_async(
        self, event: AuditEvent, marks: Sequence[WatermarkMark] = ()
    ) -> AuditRecord:
        """:meth:`append` for asyncio: returns the record once it is durable.

        Cheaper than wrapping :meth:`append`: the appends of one event-loop iteration are handed
        to the writer together (one lock, one wake-up) at the start of the next iteration, and
        the writer settles every waiter of one loop with one thread-safe call per batch.
        Cancelling the awaiting task does not withdraw the record: it is still written.
        """
        if _time.monotonic() < self._fail_until:
            raise ServiceUnavailableError("audit store unavailable")
        if not isinstance(event, AuditEvent):
            raise TypeError("append takes an AuditEvent")
        loop = asyncio.get_running_loop()
        afuture: asyncio.Future[AuditRecord] = loop.create_future()
        staged = self._staged.get(loop)
        if staged is None:
            with self._cond:
                staged = self._staged.setdefault(loop, [])
        staged.append(_Pending(event, tuple(marks), None, afuture, loop))
        if len(staged) == 1:
            loop.call_soon(self._hand_over, staged)
        return await afuture

    def _hand_over(self, staged: list[_Pending]) -> None:
        """Move one loop's staged appends to the writer's queue (runs on that loop)."""
        with self._cond:  # close() may hand over from another thread: take each item once
            items = staged[:]
            del staged[: len(items)]  # appends only add at the end, without the lock
            if not items:
                return
            if not self._closing:
                queue = self._queue
                was_empty = not queue
                queue.extend(items)
                if was_empty or len(queue) >= self._wake_at:
                    self._cond.notify()
                return
        _settle(items, None, ServiceUnavailableError("audit log is closed"))

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush what is queued, write the closing record and stop the writer (idempotent).

        Raises :class:`~modelshield.errors.ServiceUnavailableError` if the closing record could
        not be written (the segment then stays "not closed", which ``verify`` reports).
        """
        with self._cond:
            all_staged = list(self._staged.values())
        for staged in all_staged:
            self._hand_over(staged)  # appends staged on a loop that will not run again
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._close_error is not None:
            raise self._close_error

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug, not an outage: fail everything closed, loudly
            _log.critical("audit writer stopped: %s", type(exc).__name__, exc_info=exc)
            with self._cond:
                self._closing = True
                pending = [*self._inflight, *self._queue]
                self._queue.clear()
            _settle(pending, None, ServiceUnavailableError("audit log writer stopped"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                self._linger()
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                closing = self._closing and not self._queue
            if batch:
                self._inflight = batch
                self._commit(batch, close=False)
                self._inflight = []
            if closing:
                self._finish()
                return

    def _linger(self) -> None:
        # Group commit (called with the lock held): when the previous batch was bigger than what
        # has queued so far, its requesters are probably about to come back; wait a little for
        # them (a quarter of a commit's duration, at most max_linger) instead of committing a
        # batch of one and making everyone else wait a whole commit. At low load the previous
        # batch was small and this returns at once.
        target = min(self._last_batch, self._max_batch)
        if self._max_linger <= 0 or len(self._queue) >= target or self._closing:
            return
        deadline = _time.monotonic() + min(self._max_linger, self._commit_seconds / 4)
        self._wake_at = target
        try:
            while len(self._queue) < target and not self._closing:
                remaining = deadline - _time.monotonic()
                if remaining <= 0:
                    return
                self._cond.wait(remaining)
        finally:
            self._wake_at = 1

    def _finish(self) -> None:
        try:
            if self._opened or self._tip is not None:
                self._commit([], close=True)
        except ShieldError as exc:
            self._close_error = exc

    def _record(self, kind: RecordKind, tip: _Tip | None, fields: dict[str, Any]) -> AuditRecord:
        """Chain one record after ``tip``: ``fields`` are the event's, in canonical form."""
        seq = 0 if tip is None else tip.seq + 1
        prev = GENESIS if tip is None else tip.hash
        fields["segment"] = self._segment
        fields["seq"] = seq
        fields["kind"] = kind
        canonical = RECORD_DOMAIN + orjson.dumps(fields, option=_SORTED)
        mac = self._chain_mac.copy()
        mac.update(bytes.fromhex(prev))
        mac.update(canonical)
        digest = mac.hexdigest()
        return AuditRecord(**fields, prev_hash=prev, hash=digest)

    @staticmethod
    def _fields(
        event: AuditEvent | None, time: float, marks: tuple[WatermarkMark, ...]
    ) -> dict[str, Any]:
        if event is None:
            return {
                "time": float(time), "client": None, "key_id": None, "model": None,
                "input_hmac": "", "rows": 0, "output_summary": "", "decision": "", "reason": "",
                "status": 0, "extra": {}, "marks_digest": "",
            }  # fmt: skip
        return {
            "time": event.time, "client": event.client, "key_id": event.key_id,
            "model": event.model, "input_hmac": event.input_hmac, "rows": event.rows,
            "output_summary": event.output_summary, "decision": event.decision,
            "reason": event.reason, "status": event.status, "extra": event.extra,
            "marks_digest": marks_digest(marks),
        }  # fmt: skip

    def _commit(self, batch: list[_Pending], *, close: bool) -> None:
        try:
            if self._tip is None:
                head = self._store.head(self._segment)
                if head is not None:
                    self._tip = _Tip(head.seq, head.hash)
                    self._opened = True
            records: list[AuditRecord] = []
            events: list[AuditRecord] = []
            marks: list[MarkRecord] = []
            tip = self._tip
            if tip is None:
                witness = [
                    [h.segment, h.seq, h.hash]
                    for h in self._store.heads(WITNESS_LIMIT)
                    if h.segment != self._segment
                ]
                fields = self._fields(None, self._clock(), ())
                fields["decision"] = "open"
                fields["extra"] = {"witness": witness}
                opening = self._record("open", None, fields)
                records.append(opening)
                tip = _Tip(opening.seq, opening.hash)
            for item in batch:
                record = self._record("event", tip, self._fields(item.event, 0.0, item.marks))
                records.append(record)
                events.append(record)
                if item.marks:
                    marks.extend(
                        MarkRecord(record.segment, record.seq, i, record.time, m)
                        for i, m in enumerate(item.marks)
                    )
                tip = _Tip(record.seq, record.hash)
            if close:
                fields = self._fields(None, self._clock(), ())
                fields["decision"] = "close"
                closing = self._record("close", tip, fields)
                records.append(closing)
                tip = _Tip(closing.seq, closing.hash)
            last = records[-1]
            head = SegmentHead(
                segment=self._segment,
                seq=last.seq,
                hash=last.hash,
                time=last.time,
                closed=close,
                mac=head_mac(self._key, self._segment, last.seq, last.hash, close),
            )
            started = _time.monotonic()
            self._store.append_batch(records, head, marks)
            took = _time.monotonic() - started
        except Exception as exc:
            self._fail(batch, exc)
            if close:
                raise ServiceUnavailableError(
                    "audit store cannot write the closing record"
                ) from None
            return
        self._tip = tip
        self._opened = True
        self._commit_seconds = 0.8 * self._commit_seconds + 0.2 * took
        self._last_batch = max(1, len(batch))
        _settle(batch, events, None)

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        # The commit may or may not have happened (a lost connection during COMMIT): forget the
        # tip and read the head again before the next batch.
        self._tip = None
        self._fail_until = _time.monotonic() + self._retry_after
        _log.warning(
            "audit store cannot write (%s): failing %d request(s) closed",
            type(exc).__name__,
            len(batch),
        )
        _log.debug("audit store error", exc_info=exc)
        with self._cond:
            queued = self._queue[:]
            self._queue.clear()
        _settle([*batch, *queued], None, ServiceUnavailableError("audit store unavailable"))


def _settle(
    items: list[_Pending], records: list[AuditRecord] | None, error: Exception | None
) -> None:
    """Resolve thread futures directly and asyncio futures with one call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[AuditRecord], Any]]] = {}
    for i, item in enumerate(items):
        outcome: Any = error if records is None else records[i]
        if item.future is not None:
            try:
                if records is None:
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)
            except InvalidStateError:  # cancelled by its caller; the record is written all the same
                pass
        elif item.afuture is not None and item.loop is not None:
            by_loop.setdefault(item.loop, []).append((item.afuture, outcome))
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_in_loop, pairs)


def _settle_in_loop(pairs: list[tuple[asyncio.Future[AuditRecord], Any]]) -> None:
    for afuture, outcome in pairs:
        if afuture.done():
            continue
        if isinstance(outcome, BaseException):
            afuture.set_exception(outcome)
        else:
            afuture.set_result(outcome)
