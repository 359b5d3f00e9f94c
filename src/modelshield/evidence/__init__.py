"""Proof of ownership: signed, timestamped certificates (stable: format version 1).

:func:`create_certificate` binds an owner to a model's digests, commitments to its watermark
secrets, the licence and a trade-secret notice, signed with Ed25519 and optionally countersigned by
an RFC 3161 time-stamp authority; :func:`verify_certificate` checks all of it.
"""

from modelshield.evidence._certificate import (
    DEFAULT_NOTICE,
    FORMAT,
    VERSION,
    CertificateCheck,
    Opening,
    canonical,
    commit,
    commitment,
    create_certificate,
    dump_certificate,
    dump_openings,
    file_sha256,
    load_certificate,
    load_openings,
    open_commitment,
    verify_certificate,
)
from modelshield.evidence._report import (
    EvidenceReport,
    EvidenceTest,
    gather_evidence,
    plain_summary,
    render_evidence_html,
)
from modelshield.evidence._tsa import (
    TimestampToken,
    build_request,
    request_timestamp,
    tsa_timestamper,
    verify_token,
)

__all__ = [
    "DEFAULT_NOTICE",
    "FORMAT",
    "VERSION",
    "CertificateCheck",
    "EvidenceReport",
    "EvidenceTest",
    "Opening",
    "TimestampToken",
    "build_request",
    "canonical",
    "commit",
    "commitment",
    "create_certificate",
    "dump_certificate",
    "dump_openings",
    "file_sha256",
    "gather_evidence",
    "load_certificate",
    "load_openings",
    "open_commitment",
    "plain_summary",
    "render_evidence_html",
    "request_timestamp",
    "tsa_timestamper",
    "verify_certificate",
    "verify_token",
]
