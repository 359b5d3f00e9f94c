"""The tamper-evident audit log of every gateway request (stable).

One :class:`AuditLog` per process appends :class:`AuditEvent` values with group commit from a
background thread; each future resolves only once its record is durable, and fails with
:class:`~modelshield.errors.ServiceUnavailableError` when the store cannot write (fail closed).
Records are chained per writer segment with HMAC-SHA256 under the audit key; :func:`verify` stitches
all segments together and names the first bad record. :func:`export` reads records back as JSON;
:func:`marks_by_client` reads the watermark side table. Stores live in :mod:`modelshield.stores`.

The record encoding and hash construction are versioned (``modelshield.audit.record.v1``); the
API names here are stable.
"""

from modelshield.audit._export import export, marks_by_client
from modelshield.audit._keys import (
    audit_key_from_config,
    generate_audit_key,
    parse_audit_key,
    write_audit_key,
)
from modelshield.audit._log import AuditLog
from modelshield.audit._records import (
    AuditEvent,
    AuditRecord,
    MarkRecord,
    SegmentHead,
    WatermarkMark,
    input_digest,
)
from modelshield.audit._store import AuditReader, AuditStore
from modelshield.audit._verify import BadRecord, VerifyReport, verify

__all__ = [
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
]
