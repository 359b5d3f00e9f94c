"""A writer process for the multi-process and crash tests (not collected by pytest).

usage: python _child.py URL KEY_HEX WRITER_ID COUNT [SCHEMA]

Appends COUNT events (forever if COUNT < 0) in groups of 8 in flight, and prints the seq of each
record as soon as its future resolved (flushed), after a first line ``SEGMENT <id>``.
"""

from __future__ import annotations

import sys
import time

from modelshield.audit import AuditEvent, AuditLog, input_digest
from modelshield.stores import PostgresAuditStore, open_audit_store


def main() -> None:
    url, key_hex, writer, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    key = bytes.fromhex(key_hex)
    if len(sys.argv) > 5:
        store = PostgresAuditStore(url, schema=sys.argv[5])
    else:
        store = open_audit_store(url)
    log = AuditLog(store, key, writer_id=writer)
    print("SEGMENT", log.segment, flush=True)
    i = 0
    while count < 0 or i < count:
        futures = []
        for _ in range(8 if count < 0 else min(8, count - i)):
            event = AuditEvent(
                time=time.time(),
                client=f"c{i % 3}",
                key_id="k",
                model="digits",
                input_hmac=input_digest(key, str(i).encode()),
                rows=1,
                output_summary="7",
                decision="allow",
                reason="",
                status=200,
                extra={"writer": writer, "i": i},
            )
            futures.append(log.append(event))
            i += 1
        for future in futures:
            print(future.result(timeout=30).seq, flush=True)
    log.close()
    store.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
