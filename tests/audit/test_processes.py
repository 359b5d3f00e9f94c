"""Several OS processes on one store, a writer killed with SIGKILL, and the CLI exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from modelshield.audit import AuditStore, verify
from modelshield.stores import PostgresAuditStore, SQLiteAuditStore, sqlite_backup

CHILD = Path(__file__).with_name("_child.py")
KEY = bytes(range(100, 132))


def spawn(url: str, writer: str, count: int, schema: str | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, str(CHILD), url, KEY.hex(), writer, str(count)]
    if schema is not None:
        args.append(schema)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def verify_while_running(store: AuditStore, procs: list[subprocess.Popen[str]]) -> int:
    """Verify again and again while the writers commit: never a false alarm."""
    rounds = 0
    while any(p.poll() is None for p in procs) or rounds == 0:
        report = verify(store, KEY)
        assert report.ok, report.first_bad
        rounds += 1
    return rounds


def finish(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.split("\n")


@pytest.mark.slow
def test_two_processes_one_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    store = SQLiteAuditStore(db)
    procs = [spawn(f"sqlite:///{db}", f"p{n}", 300) for n in range(2)]
    try:
        verify_while_running(store, procs)
        outputs = [finish(p) for p in procs]
        for lines in outputs:
            assert "DONE" in lines
        report = verify(store, KEY)
        assert report.ok, report.first_bad
        assert report.segments == 2
        assert report.records_checked == 2 * (300 + 2)
        assert report.open_segments == ()
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.services
def test_two_processes_one_postgres(pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    store = PostgresAuditStore(dsn, schema=schema)
    procs = [spawn(dsn, f"r{n}", 300, schema) for n in range(2)]
    try:
        verify_while_running(store, procs)
        for p in procs:
            assert "DONE" in finish(p)
        report = verify(store, KEY)
        assert report.ok, report.first_bad
        assert report.segments == 2
        assert report.records_checked == 2 * (300 + 2)
    finally:
        store.close()


def _kill_after(proc: subprocess.Popen[str], n_lines: int) -> tuple[str, list[int]]:
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    assert first[0] == "SEGMENT", first
    seqs: list[int] = []
    while len(seqs) < n_lines:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        seqs.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    # lines printed before the kill but not read yet also count as acknowledged
    seqs.extend(int(x) for x in out.split() if x.isdigit())
    assert proc.returncode == -signal.SIGKILL
    return first[1], seqs


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_record(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    survivor = spawn(f"sqlite:///{db}", "ok", 50)
    victim = spawn(f"sqlite:///{db}", "victim", -1)
    segment, acknowledged = _kill_after(victim, 400)
    assert "DONE" in finish(survivor)
    store = SQLiteAuditStore(db)
    try:
        stored = {r.seq for r in store.iter_records() if r.segment == segment}
        assert set(acknowledged) <= stored
        report = verify(store, KEY)
        assert report.ok, report.first_bad  # a crash is not tampering...
        assert report.open_segments == (segment,)  # ... but the segment is reported not closed
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.services
def test_sigkill_loses_no_acknowledged_record_postgres(pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    victim = spawn(dsn, "victim", -1, schema)
    segment, acknowledged = _kill_after(victim, 300)
    store = PostgresAuditStore(dsn, schema=schema)
    try:
        stored = {r.seq for r in store.iter_records() if r.segment == segment}
        assert set(acknowledged) <= stored
        report = verify(store, KEY)
        assert report.ok, report.first_bad
        assert report.open_segments == (segment,)
    finally:
        store.close()


@pytest.mark.slow
def test_backup_while_writing(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    writer = spawn(f"sqlite:///{db}", "w", 400)
    assert writer.stdout is not None
    writer.stdout.readline()
    for _ in range(20):  # wait for some records to exist
        if writer.stdout.readline().strip() == "50":
            break
    copy = sqlite_backup(db, tmp_path / "backup" / "audit-copy.db")
    assert "DONE" in finish(writer)
    store = SQLiteAuditStore(copy)
    try:
        report = verify(store, KEY)
        assert report.ok, report.first_bad  # a consistent snapshot: every batch whole
        assert report.records_checked >= 1
    finally:
        store.close()
    assert not (tmp_path / "backup" / ".audit-copy.db.partial").exists()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelshield", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _deployment(tmp_path: Path) -> Path:
    from modelshield.audit import write_audit_key

    write_audit_key(tmp_path / "keys" / "audit.key", KEY)
    (tmp_path / "shield.toml").write_text(
        '[audit]\nurl = "sqlite:///state/audit.db"\nkey = { file = "keys/audit.key" }\n',
        encoding="utf-8",
    )
    proc = spawn(f"sqlite:///{tmp_path / 'state' / 'audit.db'}", "cli", 20)
    assert "DONE" in finish(proc)
    return tmp_path / "state" / "audit.db"


@pytest.mark.slow
def test_cli_verify_and_export(tmp_path: Path) -> None:
    db = _deployment(tmp_path)
    ok = run_cli("audit", "verify", cwd=tmp_path)  # default ./shield.toml
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout
    assert "22 records" in ok.stdout

    out = run_cli("audit", "export", "--format", "jsonl", "--client", "c1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [orjson.loads(x) for x in out.stdout.splitlines()]
    assert lines
    assert {x["client"] for x in lines} == {"c1"}
    to_file = run_cli(
        "audit", "export", "--since", "2000-01-01T00:00:00", "--format", "jsonl", "-o", "a.jsonl",
        cwd=tmp_path,
    )  # fmt: skip
    assert to_file.returncode == 0, to_file.stderr
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 22
    bad_since = run_cli("audit", "export", "--since", "yesterday", cwd=tmp_path)
    assert bad_since.returncode == 2

    import sqlite3

    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE audit_records SET decision = 'refuse' WHERE seq = 7")
    conn.close()
    tampered = run_cli("audit", "verify", "--config", str(tmp_path / "shield.toml"), cwd=tmp_path)
    assert tampered.returncode == 3
    message = " ".join(tampered.stderr.split())  # the console may wrap long lines
    assert "seq 7" in message
    assert "hash mismatch" in message
    assert "Traceback" not in tampered.stderr

    # an extra that is no JSON object any more: named like any edit (it once crashed verify with
    # exit 1), and an export to a file stops at nothing and leaves no half-written file
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "UPDATE audit_records SET decision = 'allow', extra = 'not json' WHERE seq = 7"
        )
        conn.execute("UPDATE audit_records SET extra = '[1, 2]' WHERE seq = 5")
    conn.close()
    tampered = run_cli("audit", "verify", cwd=tmp_path)
    assert tampered.returncode == 3, tampered.stderr
    message = " ".join(tampered.stderr.split())
    assert "seq 5" in message
    assert "hash mismatch" in message
    dumped = run_cli("audit", "export", "-o", "b.jsonl", cwd=tmp_path)
    assert dumped.returncode == 0, dumped.stderr
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    shown = {x["seq"]: x["extra"] for x in map(orjson.loads, lines)}
    assert shown[7] == {"undecodable_extra": "not json"}
    assert shown[5] == {"undecodable_extra": "[1, 2]"}
    nowhere = run_cli("audit", "export", "-o", "missing/c.jsonl", cwd=tmp_path)
    assert nowhere.returncode == 1
    assert "missing/c.jsonl" in " ".join(nowhere.stderr.split())
    assert "internal error" not in nowhere.stderr


def test_cli_verify_without_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "shield.toml").write_text('[audit]\nurl = "sqlite:///a.db"\n', encoding="utf-8")
    SQLiteAuditStore(tmp_path / "a.db").close()
    result = run_cli("audit", "verify", cwd=tmp_path)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "audit.key" in message
    assert "no audit key configured" in message


def test_cli_verify_without_log(tmp_path: Path) -> None:
    (tmp_path / "shield.toml").write_text(
        f'[audit]\nurl = "sqlite:///none.db"\nkey = "{KEY.hex()}"\n', encoding="utf-8"
    )
    result = run_cli("audit", "verify", cwd=tmp_path)
    assert result.returncode == 1
    assert "no audit log" in " ".join(result.stderr.split())
    assert not (tmp_path / "none.db").exists()


def test_cli_verify_of_a_truncated_log_file_is_an_integrity_failure(tmp_path: Path) -> None:
    """A log file cut short is damage (exit 3), not an unreachable store (exit 1)."""
    import time

    from modelshield.audit import AuditEvent, AuditLog

    db = tmp_path / "a.db"
    store = SQLiteAuditStore(db)
    with AuditLog(store, KEY, "w") as log:
        for _ in range(50):
            event = AuditEvent(
                time=time.time(), client="c", key_id=None, model="m", input_hmac="", rows=1,
                output_summary="x" * 300, decision="allow", reason="", status=200,
            )  # fmt: skip
            log.append(event).result()
    store.close()
    data = db.read_bytes()
    assert len(data) > 8192
    db.write_bytes(data[:5000])
    for extra in ("a.db-wal", "a.db-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    (tmp_path / "shield.toml").write_text(
        f'[audit]\nurl = "sqlite:///a.db"\nkey = "{KEY.hex()}"\n', encoding="utf-8"
    )
    result = run_cli("audit", "verify", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "damaged" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
