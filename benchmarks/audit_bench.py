"""Audit log: group commit against one commit per record, on SQLite (synchronous=FULL).

Both sides use the same AuditLog code, store and durability; only the batch size differs (the
peer commits each record in its own transaction, ``max_batch=1``). Concurrent clients (threads)
each append an event and wait until it is durable, like gateway requests. Phases are interleaved
and repeated; medians are reported.

    python benchmarks/audit_bench.py [--quick]

Last line: JSON with ours, peer, ratio, group_commit_appends_per_s, per_record_appends_per_s,
p50_durable_ms (group commit, under load) and p50_durable_ms_1client (one client alone); and,
for information, group commit with synchronous=NORMAL (no fsync per commit: survives a killed
process, not a power cut), and asyncio tasks in one event loop with append_async (the gateway's
way: appends/s and the loop thread's CPU time per append).

Two processes sharing one file (as two gateway workers do), 16 client threads each: the store's
lock file (``two_process_appends_per_s``) against SQLite's own busy handler alone
(``lock_file=False``: ``two_process_appends_per_s_busy_handler``), and ``two_process_ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from modelshield.audit import AuditEvent, AuditLog, generate_audit_key, input_digest, verify
from modelshield.stores import SQLiteAuditStore


def run_phase(
    path: Path,
    key: bytes,
    *,
    max_batch: int,
    clients: int,
    seconds: float,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
    lock_file: bool = True,
    writer: str = "",
) -> tuple[float, list[float]]:
    """Appends per second and per-append latencies (s) for ``seconds`` of ``clients`` threads."""
    store = SQLiteAuditStore(path, synchronous=synchronous, lock_file=lock_file)
    log = AuditLog(store, key, writer_id=f"b{max_batch}{writer}", max_batch=max_batch)
    body = b'{"inputs": [[0.0, 1.0, 2.0, 3.0]]}'
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds
    barrier = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        mine = latencies[n]
        barrier.wait()
        i = 0
        while time.perf_counter() < stop:
            event = AuditEvent(
                time=time.time(),
                client=f"client-{n}",
                key_id=f"k{n}",
                model="digits",
                input_hmac=input_digest(key, body),
                rows=1,
                output_summary="7",
                decision="allow",
                reason="",
                status=200,
                extra={},
            )
            t0 = time.perf_counter()
            log.append(event).result(timeout=60)
            mine.append(time.perf_counter() - t0)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    log.close()
    store.close()
    flat = [x for per in latencies for x in per]
    return len(flat) / elapsed, flat


def run_async_phase(path: Path, key: bytes, *, clients: int, seconds: float) -> tuple[float, float]:
    """Like :func:`run_phase`, but ``clients`` asyncio tasks in one event loop (as in the gateway).

    Returns appends per second and the event loop thread's CPU time per append in microseconds
    (building the event, the input HMAC, queueing and waking up: what a request pays).
    """
    store = SQLiteAuditStore(path)
    log = AuditLog(store, key, writer_id="async")
    body = b'{"inputs": [[0.0, 1.0, 2.0, 3.0]]}'
    count = 0

    async def client(n: int, stop: float) -> None:
        nonlocal count
        while time.perf_counter() < stop:
            event = AuditEvent(
                time=time.time(),
                client=f"client-{n}",
                key_id=f"k{n}",
                model="digits",
                input_hmac=input_digest(key, body),
                rows=1,
                output_summary="7",
                decision="allow",
                reason="",
                status=200,
                extra={},
            )
            await log.append_async(event)
            count += 1

    async def run() -> tuple[float, float]:
        stop = time.perf_counter() + seconds
        t0, cpu0 = time.perf_counter(), time.thread_time()
        await asyncio.gather(*(client(n, stop) for n in range(clients)))
        return time.perf_counter() - t0, time.thread_time() - cpu0

    elapsed, cpu = asyncio.run(run())
    log.close()
    store.close()
    return count / elapsed, cpu / max(count, 1) * 1e6


def _process_phase(path: Path, key: bytes, lock_file: bool, seconds: float, n: int) -> float:
    rate, _ = run_phase(
        path, key, max_batch=1024, clients=16, seconds=seconds, lock_file=lock_file,
        writer=f"p{n}",
    )  # fmt: skip
    return rate


def run_two_processes(path: Path, key: bytes, *, lock_file: bool, seconds: float) -> float:
    """Appends per second of two processes appending to the same file at once."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        rates = pool.starmap(_process_phase, [(path, key, lock_file, seconds, n) for n in (1, 2)])
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter phases")
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    seconds, repeats = (1.5, 2) if args.quick else (4.0, 3)
    key = generate_audit_key()
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        path = Path(tmp) / "audit.db"
        group_rates: list[float] = []
        single_rates: list[float] = []
        group_lat: list[float] = []
        normal_rates: list[float] = []
        normal_lat: list[float] = []
        for r in range(repeats):
            rate, lat = run_phase(path, key, max_batch=1024, clients=args.clients, seconds=seconds)
            group_rates.append(rate)
            group_lat.extend(lat)
            print(f"[{r}] group commit:      {rate:9.0f} appends/s", flush=True)
            rate, _ = run_phase(path, key, max_batch=1, clients=args.clients, seconds=seconds)
            single_rates.append(rate)
            print(f"[{r}] commit per record: {rate:9.0f} appends/s", flush=True)
            rate, lat = run_phase(
                path, key, max_batch=1024, clients=args.clients, seconds=seconds,
                synchronous="NORMAL",
            )  # fmt: skip
            normal_rates.append(rate)
            normal_lat.extend(lat)
            print(f"[{r}] group commit, synchronous=NORMAL: {rate:9.0f} appends/s", flush=True)
        two_lock: list[float] = []
        two_busy: list[float] = []
        for r in range(repeats):
            two_lock.append(run_two_processes(path, key, lock_file=True, seconds=seconds))
            two_busy.append(run_two_processes(path, key, lock_file=False, seconds=seconds))
            print(
                f"[{r}] two processes: lock file {two_lock[-1]:9.0f} appends/s, "
                f"SQLite busy handler {two_busy[-1]:9.0f}",
                flush=True,
            )
        _, alone = run_phase(path, key, max_batch=1024, clients=1, seconds=seconds / 2)
        async_rate, loop_cpu_us = run_async_phase(path, key, clients=args.clients, seconds=seconds)
        print(
            f"asyncio, {args.clients} tasks, group commit: {async_rate:9.0f} appends/s", flush=True
        )
        store = SQLiteAuditStore(path)
        try:
            report = verify(store, key)
        finally:
            store.close()
        assert report.ok, report.first_bad
        print(f"verified {report.records_checked} records in {report.segments} segments")
    group = statistics.median(group_rates)
    single = statistics.median(single_rates)
    result = {
        "ours": round(group, 1),
        "peer": round(single, 1),
        "ratio": round(group / single, 2),
        "ours_name": "AuditLog group commit (SQLite, synchronous=FULL)",
        "peer_name": "one commit per record (same code, max_batch=1)",
        "clients": args.clients,
        "group_commit_appends_per_s": round(group, 1),
        "per_record_appends_per_s": round(single, 1),
        "p50_durable_ms": round(statistics.median(group_lat) * 1000, 3),
        "p99_durable_ms": round(statistics.quantiles(group_lat, n=100)[98] * 1000, 3),
        "p50_durable_ms_1client": round(statistics.median(alone) * 1000, 3),
        "async_group_commit_appends_per_s": round(async_rate, 1),
        "async_loop_cpu_us_per_append": round(loop_cpu_us, 1),
        "normal_group_commit_appends_per_s": round(statistics.median(normal_rates), 1),
        "normal_p50_durable_ms": round(statistics.median(normal_lat) * 1000, 3),
        "two_process_appends_per_s": round(statistics.median(two_lock), 1),
        "two_process_appends_per_s_busy_handler": round(statistics.median(two_busy), 1),
        "two_process_ratio": round(statistics.median(two_lock) / statistics.median(two_busy), 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
