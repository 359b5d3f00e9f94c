"""Records, encodings (known answers), keys and the public surface of modelshield.audit."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modelshield.audit as audit
from modelshield.audit import (
    AuditEvent,
    AuditLog,
    WatermarkMark,
    audit_key_from_config,
    generate_audit_key,
    input_digest,
    parse_audit_key,
    verify,
    write_audit_key,
)
from modelshield.audit._records import canonical_record, head_mac, record_hash
from modelshield.config import Secret, load_config
from modelshield.errors import ConfigError
from modelshield.stores import MemoryAuditStore

KEY = bytes(range(32))


def test_all_is_exactly_the_public_names() -> None:
    assert set(audit.__all__) == {
        "AuditEvent",
        "AuditLog",
        "AuditReader",
        "AuditRecord",
        "AuditStore",
        "BadRecord",
        "MarkRecord",
        "SegmentHead",
        "VerifyReport",
        "WatermarkMark",
        "audit_key_from_config",
        "export",
        "generate_audit_key",
        "input_digest",
        "marks_by_client",
        "parse_audit_key",
        "verify",
        "write_audit_key",
    }
    for name in audit.__all__:
        assert hasattr(audit, name)


def test_input_digest_known_answer() -> None:
    expected = hmac.new(
        KEY, b"modelshield.audit.input.v1\n" + b'{"inputs": [[1, 2]]}', hashlib.sha256
    ).hexdigest()
    assert input_digest(KEY, b'{"inputs": [[1, 2]]}') == expected
    assert input_digest(KEY, b"") == (
        hmac.new(KEY, b"modelshield.audit.input.v1\n", hashlib.sha256).hexdigest()
    )
    assert input_digest(b"x" * 32, b"a") != input_digest(KEY, b"a")


FIELDS = {
    "segment": "gw.0011223344556677",
    "seq": 1,
    "kind": "event",
    "time": 1_700_000_000.25,
    "client": "alice",
    "key_id": "k1",
    "model": "digits",
    "input_hmac": "ab" * 32,
    "rows": 3,
    "output_summary": "7,1,1",
    "decision": "allow",
    "reason": "",
    "status": 200,
    "extra": {"z": 1, "a": [0.5, "é"]},
    "marks_digest": "",
}


def test_record_hash_follows_the_documented_construction() -> None:
    """An independent implementation (stdlib json) of docs/audit.md gives the same hash."""
    body = json.dumps(FIELDS, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    canonical = b"modelshield.audit.record.v1\n" + body.encode()
    assert canonical_record(**FIELDS) == canonical  # type: ignore[arg-type]
    prev = "11" * 32
    expected = hmac.new(KEY, bytes.fromhex(prev) + canonical, hashlib.sha256).hexdigest()
    assert record_hash(KEY, prev, canonical) == expected


def test_record_hash_golden() -> None:
    """Frozen: a change of the v1 encoding must be deliberate (and get a new version prefix)."""
    canonical = canonical_record(**FIELDS)  # type: ignore[arg-type]
    assert record_hash(KEY, "00" * 32, canonical) == GOLDEN_RECORD
    assert head_mac(KEY, "gw.0011223344556677", 5, "22" * 32, True) == GOLDEN_HEAD


GOLDEN_RECORD = "c888d02207b81b3b0f16b9174a797110209dca2c5e5665b3f79439e411d69b9f"
GOLDEN_HEAD = "3fcb9fd5176c9d29357d77e548e72a7079e0dcd07392e5b6b83c5f3f87a31f3d"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"time": float("nan")}, ValueError),
        ({"time": "now"}, TypeError),
        ({"rows": -1}, ValueError),
        ({"rows": True}, ValueError),
        ({"status": "200"}, TypeError),
        ({"decision": ""}, ValueError),
        ({"output_summary": "x" * 513}, ValueError),
        ({"reason": "x" * 1025}, ValueError),
        ({"extra": {"a": object()}}, ValueError),
        ({"extra": {"a": "x" * 20_000}}, ValueError),
        ({"extra": [1]}, TypeError),
        ({"client": 3}, TypeError),
        ({"input_hmac": b"ab"}, TypeError),
    ],
)
def test_event_validation(change: dict[str, object], error: type[Exception]) -> None:
    fields: dict[str, object] = {
        "time": 1.0,
        "client": None,
        "key_id": None,
        "model": None,
        "input_hmac": "",
        "rows": 0,
        "output_summary": "refused",
        "decision": "refuse",
        "reason": "bad key",
        "status": 401,
    }
    AuditEvent(**fields)  # type: ignore[arg-type]
    with pytest.raises(error):
        AuditEvent(**{**fields, **change})  # type: ignore[arg-type]


def test_event_extra_is_a_private_copy() -> None:
    extra = {"evidence": [1, 2]}
    event = AuditEvent(1, None, None, None, "", 0, "", "refuse", "", 401, extra)
    extra["evidence"].append(3)
    assert event.extra == {"evidence": [1, 2]}


def test_numpy_values_are_stored_as_plain_json() -> None:
    import numpy as np

    event = AuditEvent(
        1.0, "a", "k", "m", "", np.int64(3), "7", "allow", "", np.int32(200),
        {"score": np.float32(0.5), "counts": np.array([1, 2]), "n": np.int64(4)},
    )  # fmt: skip
    assert (type(event.rows), type(event.status)) == (int, int)
    assert event.extra == {"score": 0.5, "counts": [1, 2], "n": 4}
    mark = WatermarkMark("a", "m", "d", b"", np.int64(3))
    assert type(mark.label) is int
    with AuditLog(MemoryAuditStore(), KEY) as log:
        assert log.append(event, marks=[mark]).result(timeout=10).rows == 3


def test_a_mark_without_kind_keeps_its_digest_from_before_kinds() -> None:
    from modelshield.audit._records import mark_digest

    old = WatermarkMark("a", "digits", "ab" * 32, b"\x93NUMPY-row", 4)
    # the encoding of marks before they had kinds: five fields, sorted keys, domain-separated
    body = json.dumps(
        {
            "client": "a",
            "input_digest": "ab" * 32,
            "label": 4,
            "model": "digits",
            "row": hashlib.sha256(b"\x93NUMPY-row").hexdigest(),
        },
        separators=(",", ":"),
    ).encode()
    assert mark_digest(old) == hashlib.sha256(b"modelshield.audit.mark.v1\n" + body).hexdigest()
    kinds = {mark_digest(WatermarkMark("a", "digits", "ab" * 32, b"\x93NUMPY-row", 4, k))
             for k in ("", "keyed", "control@0.15", "runner-up@0.15")}  # fmt: skip
    assert len(kinds) == 4


def test_mark_validation() -> None:
    with pytest.raises(TypeError):
        WatermarkMark("a", "m", "d", "not bytes", 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        WatermarkMark("a", "m", "d", b"", True)
    with pytest.raises(TypeError):
        WatermarkMark("a", "m", "d", b"", 1, "x" * 65)


text = st.text(max_size=20)


@settings(max_examples=40, deadline=None)
@given(
    client=st.none() | text,
    summary=text,
    reason=text,
    extra=st.dictionaries(
        text,
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text,
        max_size=4,
    ),
    time=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_round_trip_any_event_verifies(
    client: str | None, summary: str, reason: str, extra: dict[str, object], time: float
) -> None:
    store = MemoryAuditStore()
    with AuditLog(store, KEY) as log:
        event = AuditEvent(time, client, None, None, "", 1, summary, "allow", reason, 200, extra)
        record = log.append(event).result(timeout=10)
    assert record.extra == extra
    assert record.time == time
    assert verify(store, KEY).ok


def test_generate_and_write_key(tmp_path: Path) -> None:
    key = generate_audit_key()
    assert len(key) == 32
    assert generate_audit_key() != key
    path = write_audit_key(tmp_path / "keys" / "audit.key", key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == key.hex() + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["audit.key"]  # no temp file left
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_audit_key(path, generate_audit_key())
    assert path.read_text() == key.hex() + "\n"
    write_audit_key(path, b"\x01" * 32, overwrite=True)
    assert path.read_text().strip() == "01" * 32
    with pytest.raises(ValueError, match="16 bytes"):
        write_audit_key(tmp_path / "short.key", b"short")


def test_key_from_config_file(tmp_path: Path) -> None:
    write_audit_key(tmp_path / "keys" / "audit.key", KEY)
    (tmp_path / "shield.toml").write_text('[audit]\nkey = { file = "keys/audit.key" }\n')
    assert audit_key_from_config(load_config(tmp_path / "shield.toml")) == KEY


def test_missing_or_bad_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "shield.toml").write_text("[audit]\n")
    with pytest.raises(ConfigError, match=r"audit\.key: no audit key configured"):
        audit_key_from_config(load_config(tmp_path / "shield.toml"))
    with pytest.raises(ConfigError, match="must be hex"):
        parse_audit_key(Secret("not hex"))
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        parse_audit_key(Secret("abcd"))
    assert parse_audit_key(Secret(" " + KEY.hex() + "\n")) == KEY


def test_input_digest_cannot_forge_a_record_hash() -> None:
    """A client who sends ``prev || canonical(forged)`` as its body gets no valid record hash."""
    canonical = canonical_record(**FIELDS)  # type: ignore[arg-type]
    prev = "00" * 32
    body = bytes.fromhex(prev) + canonical
    assert input_digest(KEY, body) != record_hash(KEY, prev, canonical)
