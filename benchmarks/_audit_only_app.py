"""A reference point for the gateway benchmark: the bare endpoint plus a durable audit record.

The same endpoint as :mod:`benchmarks._bare_app` (orjson in, ONNX Runtime, orjson out), and
before each response one audit record (time, HMAC of the body, labels, status, the hash of the
previous record) committed to SQLite in WAL mode with the guarded server's ``synchronous``
setting. Group commit on the event loop: the records of one loop iteration are inserted and
committed together by a callback at the next iteration, and their responses wait for it. No
authentication, limits, validation, hardening, metrics or error handling: the cheapest way we
found to write the one part of the guarded path that every request pays, so that the
benchmark can say how much of the gap to the bare endpoint that part alone explains. (The same
group commit in a writer thread, as the gateway does it to keep the event loop free during
the fsync, measured lower on our 2-core machines.)

Started by uvicorn like the bare app: ``BARE_MODEL`` names the model, ``AUDIT_ONLY_DB`` the
SQLite file and ``AUDIT_ONLY_SYNCHRONOUS`` its synchronous setting (FULL by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sqlite3
import time

import numpy as np
import orjson
from benchmarks._bare_app import open_session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_INSERT = "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)"


class LoopGroupCommit:
    """``append`` returns a future that resolves once the record's transaction committed."""

    def __init__(self, path: str, synchronous: str) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        # made where the app is built, used only on the event loop thread after that
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS audit (time REAL, input_hmac BLOB, labels TEXT,"
            " status INTEGER, prev_hash BLOB, hash BLOB)"
        )
        self._prev = bytes(32)
        self._pending: list[tuple[tuple[object, ...], asyncio.Future[None]]] = []

    def append(self, digest: bytes, labels: str, status: int) -> asyncio.Future[None]:
        record_hash = hashlib.sha256(self._prev + digest + labels.encode()).digest()
        row = (time.time(), digest, labels, status, self._prev, record_hash)
        self._prev = record_hash
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._pending.append((row, done))
        if len(self._pending) == 1:
            loop.call_soon(self._commit)
        return done

    def _commit(self) -> None:
        batch, self._pending = self._pending, []
        self._conn.execute("BEGIN")
        self._conn.executemany(_INSERT, [row for row, _ in batch])
        self._conn.execute("COMMIT")
        for _, done in batch:
            if not done.done():
                done.set_result(None)


def create_app() -> Starlette:
    session, input_name = open_session()
    audit = LoopGroupCommit(
        os.environ["AUDIT_ONLY_DB"], os.environ.get("AUDIT_ONLY_SYNCHRONOUS", "FULL")
    )
    mac_key = os.urandom(32)

    async def predict(request: Request) -> Response:
        raw = await request.body()
        body = orjson.loads(raw)
        x = np.asarray(body["inputs"], dtype=np.float32)
        labels, proba = session.run(None, {input_name: x})
        label_list = labels.tolist()
        digest = hmac.digest(mac_key, raw, "sha256")
        await audit.append(digest, orjson.dumps(label_list).decode(), 200)
        return Response(
            orjson.dumps(
                {"labels": label_list, "probabilities": proba},
                option=orjson.OPT_SERIALIZE_NUMPY,
            ),
            media_type="application/json",
        )

    return Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"])])
