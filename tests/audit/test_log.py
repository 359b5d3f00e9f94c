"""AuditLog: round trips on every store, group commit, fail closed and recovery, marks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any

import pytest

from modelshield.audit import (
    AuditEvent,
    AuditLog,
    AuditRecord,
    AuditStore,
    MarkRecord,
    SegmentHead,
    WatermarkMark,
    export,
    input_digest,
    marks_by_client,
    verify,
)
from modelshield.errors import ServiceUnavailableError
from modelshield.stores import MemoryAuditStore


def event(i: int = 0, client: str | None = "alice", t: float = 1_700_000_000.0) -> AuditEvent:
    return AuditEvent(
        time=t + i + 0.123456789,  # full double precision must survive every store
        client=client,
        key_id="k1" if client else None,
        model="digits",
        input_hmac=input_digest(b"k" * 32, str(i).encode()),
        rows=1 + i % 3,
        output_summary=str(i % 10),
        decision="allow" if i % 5 else "refuse",
        reason="" if i % 5 else "over budget",
        status=200 if i % 5 else 429,
        extra={"score": i / 7, "nested": {"b": [1, 2], "a": None}},
    )


def test_round_trip_and_verify(store: AuditStore, key: bytes) -> None:
    log = AuditLog(store, key, writer_id="gw-1")
    futures = [log.append(event(i)) for i in range(200)]
    records = [f.result(timeout=10) for f in futures]
    log.close()
    assert [r.seq for r in records] == list(range(1, 201))  # seq 0 is the open record
    assert records[3].extra == {"score": 3 / 7, "nested": {"a": None, "b": [1, 2]}}
    assert log.segment.startswith("gw-1.")
    report = verify(store, key)
    assert report.ok, report.first_bad
    assert report.records_checked == 202  # open + 200 + close
    assert report.segments == 1
    assert report.open_segments == ()
    assert report.verified_until is not None
    assert report.verified_until >= 1_700_000_000.0 + 199
    assert records[7].time == 1_700_000_000.0 + 7 + 0.123456789
    exported = list(export(store))
    assert [e["seq"] for e in exported if e["kind"] == "event"] == list(range(1, 201))
    stored = {(r["segment"], r["seq"]): r for r in exported}
    assert stored[(log.segment, 5)] == records[4].to_dict()


def test_export_filters(store: AuditStore, key: bytes) -> None:
    with AuditLog(store, key) as log:
        for i in range(10):
            log.append(event(i, client="alice" if i % 2 else "bob"))
    bob = list(export(store, client="bob"))
    assert [e["client"] for e in bob] == ["bob"] * 5
    late = list(export(store, since=1_700_000_000.0 + 7))
    assert [e["time"] for e in late if e["kind"] == "event"] == [
        1_700_000_007.123456789,
        1_700_000_008.123456789,
        1_700_000_009.123456789,
    ]
    times = [e["time"] for e in export(store)]
    assert times == sorted(times)


def test_marks_written_with_their_record(store: AuditStore, key: bytes) -> None:
    mark = WatermarkMark("alice", "digits", "ab" * 32, b"\x93NUMPY-row", 7)
    with AuditLog(store, key) as log:
        plain = log.append(event(1)).result(timeout=10)
        marked = log.append(event(2), marks=[mark, mark]).result(timeout=10)
    assert plain.marks_digest == ""
    assert marked.marks_digest != ""
    got = marks_by_client(store)
    assert list(got) == ["alice"]
    assert [(m.seq, m.index, m.mark) for m in got["alice"]] == [
        (marked.seq, 0, mark),
        (marked.seq, 1, mark),
    ]
    assert verify(store, key).marks_checked == 2


def test_mark_kinds_are_kept_and_covered_by_the_chain(
    store_and_raw: tuple[AuditStore, Any], key: bytes
) -> None:
    store, raw = store_and_raw
    kinds = ["keyed", "runner-up@0.15", "control@0.15", ""]
    marks = [
        WatermarkMark("bob", "digits", "cd" * 32, b"\x93NUMPY-" + k.encode(), 3, k) for k in kinds
    ]
    with AuditLog(store, key) as log:
        log.append(event(1), marks=marks).result(timeout=10)
    assert [m.mark.kind for m in marks_by_client(store)["bob"]] == kinds
    assert verify(store, key).ok
    if raw is not None:  # a kind changed in the store is found
        raw.sql("UPDATE audit_marks SET kind = 'runner-up@0.15' WHERE kind = 'control@0.15'")
        assert not verify(store, key).ok


def test_several_threads_one_log(store: AuditStore, key: bytes) -> None:
    log = AuditLog(store, key)
    results: list[AuditRecord] = []
    lock = threading.Lock()

    def work(offset: int) -> None:
        got = [log.append(event(offset + i)).result(timeout=20) for i in range(50)]
        with lock:
            results.extend(got)

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(r.seq for r in results) == list(range(1, 201))
    assert verify(store, key).ok


def test_two_logs_share_a_store_and_witness_each_other(store: AuditStore, key: bytes) -> None:
    first = AuditLog(store, key, writer_id="a")
    first.append(event(0)).result(timeout=10)
    second = AuditLog(store, key, writer_id="b")
    opening = None
    for i in range(20):
        (first if i % 2 else second).append(event(i)).result(timeout=10)
    first.close()
    second.close()
    opening = next(r for r in store.iter_records(kind="open") if r.segment == second.segment)
    assert [w[0] for w in opening.extra["witness"]] == [first.segment]
    report = verify(store, key)
    assert report.ok, report.first_bad
    assert report.segments == 2
    assert report.witnesses_checked == 1


def test_async_append(key: bytes) -> None:
    store = MemoryAuditStore()
    log = AuditLog(store, key)

    async def main() -> list[AuditRecord]:
        return list(await asyncio.gather(*(log.append_async(event(i)) for i in range(30))))

    records = asyncio.run(main())
    log.close()
    assert sorted(r.seq for r in records) == list(range(1, 31))


class CountingStore:
    """A memory store that counts commits and can be switched off (a database that went away)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.inner = MemoryAuditStore()
        self.down = False
        self.commits = 0
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def _check(self) -> None:
        if self.down:
            raise OSError("connection refused")

    def append_batch(
        self, records: Sequence[AuditRecord], head: SegmentHead, marks: Sequence[MarkRecord]
    ) -> None:
        self.gate.wait(10)
        self._check()
        self.commits += 1
        self.inner.append_batch(records, head, marks)

    def head(self, segment: str) -> SegmentHead | None:
        self._check()
        return self.inner.head(segment)

    def heads(self, limit: int | None = None) -> list[SegmentHead]:
        self._check()
        return self.inner.heads(limit)

    def iter_records(self, **kwargs: Any) -> Iterator[AuditRecord]:
        return self.inner.iter_records(**kwargs)

    def iter_marks(self) -> Iterator[MarkRecord]:
        return self.inner.iter_marks()

    def snapshot(self) -> AbstractContextManager[MemoryAuditStore]:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


def test_group_commit_batches_what_queued(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key)
    log.append(event(0)).result(timeout=10)
    store.gate.clear()  # hold the writer inside a commit while requests queue up
    blocked = log.append(event(1))
    queued = [log.append(event(i)) for i in range(2, 302)]
    store.gate.set()
    blocked.result(timeout=10)
    for f in queued:
        f.result(timeout=10)
    log.close()
    # first commit, the held one, then the 300 queued ones in one batch, then the close
    assert store.commits <= 5
    assert verify(store, key).ok


def test_group_commit_respects_max_batch(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key, max_batch=10)
    store.gate.clear()
    futures = [log.append(event(i)) for i in range(100)]
    store.gate.set()
    for f in futures:
        f.result(timeout=10)
    log.close()
    assert store.commits >= 10
    assert verify(store, key).ok


def test_fail_closed_then_recovers_without_restart(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key, retry_after=0.05)
    assert log.append(event(0)).result(timeout=10).seq == 1
    store.down = True
    failed = [log.append(event(i)) for i in range(1, 20)]
    for f in failed:
        with pytest.raises(ServiceUnavailableError):
            f.result(timeout=10)
    # while failing, new appends fail at once (no record is ever resolved unwritten)
    fast: Future[AuditRecord] = log.append(event(99))
    with pytest.raises(ServiceUnavailableError):
        fast.result(timeout=10)
    store.down = False
    deadline = 0
    while True:
        deadline += 1
        try:
            record = log.append(event(100)).result(timeout=10)
            break
        except ServiceUnavailableError:
            assert deadline < 200
            threading.Event().wait(0.01)
    assert record.seq == 2  # the chain continues after the last durable record
    log.close()
    report = verify(store, key)
    assert report.ok, report.first_bad
    assert report.records_checked == 4


def test_store_down_from_the_start_then_up(key: bytes) -> None:
    store = CountingStore()
    store.down = True
    log = AuditLog(store, key, retry_after=0.01)
    with pytest.raises(ServiceUnavailableError):
        log.append(event(0)).result(timeout=10)
    store.down = False
    threading.Event().wait(0.05)
    assert log.append(event(1)).result(timeout=10).seq == 1
    log.close()
    assert verify(store, key).ok


def test_close_fails_loudly_when_store_is_down(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key)
    log.append(event(0)).result(timeout=10)
    store.down = True
    with pytest.raises(ServiceUnavailableError):
        log.close()
    store.down = False
    report = verify(store, key)
    assert report.ok
    assert report.open_segments == (log.segment,)


def test_append_after_close_is_refused(key: bytes) -> None:
    log = AuditLog(MemoryAuditStore(), key)
    log.close()
    log.close()  # idempotent
    with pytest.raises(ServiceUnavailableError):
        log.append(event(0))


def test_cancelled_future_is_still_written(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key)
    store.gate.clear()
    first = log.append(event(0))
    second = log.append(event(1))
    assert second.cancel()
    store.gate.set()
    first.result(timeout=10)
    log.close()
    assert sum(1 for r in store.iter_records(kind="event")) == 2


def test_key_is_not_in_repr(key: bytes) -> None:
    log = AuditLog(MemoryAuditStore(), key)
    try:
        assert key.hex() not in repr(log)
        assert repr(key) not in repr(log)
    finally:
        log.close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        AuditLog(MemoryAuditStore(), b"short")
    with pytest.raises(ValueError, match="writer_id"):
        AuditLog(MemoryAuditStore(), b"k" * 32, writer_id="bad id/")
    log = AuditLog(MemoryAuditStore(), b"k" * 32)
    try:
        with pytest.raises(TypeError):
            log.append({"not": "an event"})  # type: ignore[arg-type]
    finally:
        log.close()


def test_async_append_fails_closed_and_recovers(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key, retry_after=0.05)

    async def main() -> None:
        await log.append_async(event(0))
        store.down = True
        results = await asyncio.gather(
            *(log.append_async(event(i)) for i in range(1, 10)), return_exceptions=True
        )
        assert all(isinstance(r, ServiceUnavailableError) for r in results)
        with pytest.raises(ServiceUnavailableError):  # at once, while the store is failing
            await log.append_async(event(10))
        store.down = False
        await asyncio.sleep(0.1)
        record = await log.append_async(event(11))
        assert record.seq == 2

    asyncio.run(main())
    log.close()
    assert verify(store, key).ok


def test_async_cancelled_request_is_still_written(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key)

    async def main() -> None:
        store.gate.clear()
        task = asyncio.ensure_future(log.append_async(event(0)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store.gate.set()
        await log.append_async(event(1))

    asyncio.run(main())
    log.close()
    assert [r.output_summary for r in store.iter_records(kind="event")] == ["0", "1"]


def test_a_writer_bug_fails_closed_instead_of_hanging(key: bytes) -> None:
    class Broken(CountingStore):
        def append_batch(self, *args: Any) -> None:
            raise SystemExit("not an outage: a bug")

    log = AuditLog(Broken(), key)
    with pytest.raises(ServiceUnavailableError):
        log.append(event(0)).result(timeout=10)
    log._thread.join(5)
    with pytest.raises(ServiceUnavailableError):
        log.append(event(1))


def test_async_appends_of_one_loop_iteration_share_one_commit(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key)

    async def main() -> list[AuditRecord]:
        return list(await asyncio.gather(*(log.append_async(event(i)) for i in range(50))))

    records = asyncio.run(main())
    log.close()
    assert sorted(r.seq for r in records) == list(range(1, 51))
    assert store.commits == 2  # the 50 events (with the opening record), then the closing one
    assert verify(store, key).ok


def test_close_writes_appends_still_staged_on_the_loop(key: bytes) -> None:
    store = CountingStore()
    log = AuditLog(store, key)

    async def main() -> AuditRecord:
        task = asyncio.ensure_future(log.append_async(event(0)))
        await asyncio.sleep(0)  # the append is staged; the loop has not handed it over yet
        log.close()
        return await task

    record = asyncio.run(main())
    assert record.seq == 1
    assert [r.output_summary for r in store.iter_records(kind="event")] == ["0"]
