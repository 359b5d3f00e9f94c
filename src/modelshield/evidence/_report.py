"""The evidence report: is the suspect our model, and who leaked it? Written for a lawyer.

:func:`gather_evidence` checks the certificate, reveals the committed watermark secrets (their
openings must match the certificate), runs every verification that applies to the suspect
(trigger set, response watermark trace) and, for a trace, reads the leaking client's audit trail
and the audit log's integrity. :func:`render_evidence_html` writes it as a self-contained page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy.typing as npt

from modelshield.errors import IntegrityError
from modelshield.evidence._certificate import Opening, open_commitment, verify_certificate
from modelshield.reports import esc, page, table

PredictFn = Callable[[npt.NDArray[Any]], Any]


@dataclass(frozen=True)
class EvidenceTest:
    """One verification run against the suspect."""

    name: str
    scheme: str
    agreement: float
    trials: int
    matches: int
    chance_rate: float
    p_value: float
    verified: bool
    threshold: float
    client: str | None = None
    note: str = ""


@dataclass(frozen=True)
class EvidenceReport:
    """Everything the report shows; ``to_dict`` is the ``--json`` form."""

    generated_at: str
    suspect: str
    owner: str | None
    certificate_ok: bool
    certificate_detail: str
    commitments_opened: tuple[str, ...]
    tests: tuple[EvidenceTest, ...]
    leaking_client: str | None
    audit_ok: bool | None
    audit_detail: str
    audit_excerpt: tuple[Mapping[str, Any], ...] = ()
    commands: tuple[str, ...] = ()
    certificate: Mapping[str, Any] = field(default_factory=dict)
    #: the suspect file's SHA-256 (hex), when the suspect is a file
    suspect_sha256: str | None = None
    #: the certificate verifies and the suspect file is byte for byte the certified model
    identical_to_certified: bool = False

    @property
    def ours(self) -> bool:
        """True when the certificate verifies and the suspect is the certified file itself or
        at least one watermark test verifies."""
        return self.certificate_ok and (
            self.identical_to_certified or any(t.verified for t in self.tests)
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ours"] = self.ours
        data["tests"] = [asdict(t) for t in self.tests]
        data["audit_excerpt"] = [dict(r) for r in self.audit_excerpt]
        return data


def _test_from(verification: Any, name: str, note: str = "") -> EvidenceTest:
    return EvidenceTest(
        name=name,
        scheme=str(verification.scheme),
        agreement=float(verification.agreement),
        trials=int(verification.trials),
        matches=int(verification.matches),
        chance_rate=float(verification.chance_rate),
        p_value=float(verification.p_value),
        verified=bool(verification.verified),
        threshold=float(verification.threshold),
        client=getattr(verification, "client_id", None),
        note=note,
    )


def gather_evidence(
    *,
    suspect: str,
    suspect_predict: PredictFn,
    certificate: Mapping[str, Any],
    trusted_key: Any,
    openings: Sequence[Opening] = (),
    classes: Sequence[Any],
    input_shape: tuple[int, ...],
    input_range: tuple[float, float] = (0.0, 1.0),
    trigger_size: int = 100,
    response_trace: Callable[[PredictFn], Sequence[Any]] | None = None,
    audit_check: Callable[[str | None], tuple[bool | None, str, list[dict[str, Any]]]]
    | None = None,
    tsa_certificate_pem: bytes | None = None,
    commands: Sequence[str] = (),
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    suspect_sha256: str | None = None,
) -> EvidenceReport:
    """Run every verification that applies and collect the report.

    ``suspect_sha256`` (hex) is the suspect file's digest: when it is the certified model's, the
    report says the suspect is that very file (the watermark tests still run).

    ``response_trace`` runs the per-client response-watermark trace against a predict function and
    returns :class:`~modelshield.watermark.Verification` objects (most significant first);
    ``audit_check`` is called with the leaking client (or ``None``) and returns the audit log's
    integrity, a one-line description and that client's records to excerpt.
    """
    from modelshield import watermark

    owner: str | None = None
    identical = False
    try:
        check = verify_certificate(
            certificate, trusted_key, tsa_certificate_pem=tsa_certificate_pem
        )
        owner = check.owner
        identical = suspect_sha256 is not None and suspect_sha256.lower() == check.model_sha256
        stamp = (
            f"; RFC 3161 time-stamp {check.timestamp}"
            if check.timestamp
            else "; time from the owner's signed clock"
        )
        certificate_ok = True
        detail = (
            f"signed by key {check.signer_key_id} for {check.owner}, issued {check.issued_at}"
            + stamp
        )
    except IntegrityError as exc:
        certificate_ok, detail = False, str(exc)
    opened = tuple(o.name for o in openings if open_commitment(certificate, o))
    tests: list[EvidenceTest] = []
    by_name = {o.name: o for o in openings}
    if "trigger-set" in by_name:
        if "trigger-set" in opened:
            trigger = watermark.make_trigger_set(
                by_name["trigger-set"].secret,
                shape=input_shape,
                classes=classes,
                size=trigger_size,
                low=input_range[0],
                high=input_range[1],
            )
            tests.append(
                _test_from(
                    watermark.verify_trigger_set(suspect_predict, trigger),
                    "trigger set (Adi et al. 2018)",
                    f"{trigger_size} secret out-of-distribution probes with keyed labels",
                )
            )
        else:
            detail += "; the trigger-set opening does NOT match the certificate's commitment"
    leaking: str | None = None
    if response_trace is not None:
        traced = list(response_trace(suspect_predict))
        for verification in traced[:5]:
            tests.append(
                _test_from(
                    verification,
                    "response watermark trace (DAWN, Szyller et al. 2021)",
                    "answers changed on purpose for this client only",
                )
            )
        top = next((v for v in traced if v.verified), None)
        leaking = None if top is None else top.client_id
    audit_ok: bool | None = None
    audit_detail = "no audit log consulted"
    excerpt: list[dict[str, Any]] = []
    if audit_check is not None:
        audit_ok, audit_detail, excerpt = audit_check(leaking)
    return EvidenceReport(
        generated_at=clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        suspect=suspect,
        owner=owner,
        certificate_ok=certificate_ok,
        certificate_detail=detail,
        commitments_opened=opened,
        tests=tuple(tests),
        leaking_client=leaking,
        audit_ok=audit_ok,
        audit_detail=audit_detail,
        audit_excerpt=tuple(excerpt[:20]),
        commands=tuple(commands),
        certificate=certificate,
        suspect_sha256=suspect_sha256,
        identical_to_certified=identical,
    )


def _p(value: float) -> str:
    if value <= 0:
        return "< 1e-300"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


def _odds(p_value: float) -> str:
    if p_value <= 0:
        return "more than 1 in 10^300"
    exponent = -math.log10(p_value)
    return f"about 1 in 10^{exponent:.0f}" if exponent >= 3 else f"about 1 in {1 / p_value:.0f}"


def plain_summary(report: EvidenceReport) -> str:
    """A few sentences a lawyer can read."""
    parts: list[str] = []
    if report.certificate_ok:
        parts.append(
            f"The ownership certificate is genuine: it was signed by {report.owner}'s key and "
            "has not been altered since."
        )
    else:
        parts.append("The ownership certificate could NOT be verified; the findings below lack "
                     "that anchor.")  # fmt: skip
    if report.identical_to_certified:
        parts.append(
            "The suspect file is byte for byte the model the owner certified: its SHA-256 "
            "digest is the one in the signed certificate (another file has the same digest with "
            "a probability of about 1 in 10^77)."
        )
    verified = [t for t in report.tests if t.verified]
    if verified:
        best = min(verified, key=lambda t: t.p_value)
        parts.append(
            f"The suspect model reproduces the owner's secret watermark ({best.name}): it "
            f"favoured the secret answer in {best.matches} of {best.trials} trials. The chance "
            f"that a model made independently matches the secret answers at least this well is "
            f"{_odds(best.p_value)} (p = {_p(best.p_value)})."
        )
    elif report.tests and not report.identical_to_certified:
        parts.append(
            "No watermark was found in the suspect at the required level of confidence; this "
            "report does not show that the suspect was copied from the owner's model."
        )
    elif not report.identical_to_certified:
        parts.append("No watermark test could be run on the suspect.")
    if report.leaking_client:
        parts.append(
            f"The response watermark given only to the API client '{report.leaking_client}' is "
            "present in the suspect: that client's answers were used to train it."
        )
    if report.audit_ok is True:
        parts.append("The API's audit log is intact (its hash chain verifies).")
    elif report.audit_ok is False:
        parts.append("WARNING: the API's audit log failed its integrity check.")
    return " ".join(parts)


def render_evidence_html(report: EvidenceReport) -> str:
    """The report as a self-contained, printable HTML page."""
    verdict = (
        "<p class='ok'>Finding: the suspect is a copy of the certified model.</p>"
        if report.ours
        else "<p class='bad'>Finding: ownership of the suspect is not established.</p>"
    )
    tests = table(
        ["test", "client", "agreement", "matches / trials", "chance rate", "p-value", "verdict"],
        [
            [
                t.name,
                t.client or "-",
                f"{t.agreement:.3f}",
                f"{t.matches} / {t.trials}",
                f"{t.chance_rate:.4f}",
                _p(t.p_value),
                ("verified" if t.verified else "not verified") + f" (threshold {t.threshold:g})",
            ]
            for t in report.tests
        ],
    )
    body = report.certificate.get("body", {}) if isinstance(report.certificate, Mapping) else {}
    cert_rows = [
        ["owner", body.get("owner", "-")],
        ["issued at", body.get("issued_at", "-")],
        ["model SHA-256", (body.get("model") or {}).get("sha256", "-")],
        ["suspect file SHA-256", (report.suspect_sha256 or "- (not a file)")
         + (" (identical: the certified model itself)" if report.identical_to_certified else "")],
        ["signer key id", (body.get("signer") or {}).get("key_id", "-")],
        ["commitments opened", ", ".join(report.commitments_opened) or "-"],
        ["signature check", ("valid: " if report.certificate_ok else "FAILED: ")
         + report.certificate_detail],
    ]  # fmt: skip
    excerpt = table(
        ["time", "client", "model", "rows", "decision", "status", "input HMAC"],
        [
            [
                datetime.fromtimestamp(float(r.get("time", 0)), UTC).strftime("%Y-%m-%d %H:%M:%S"),
                r.get("client"),
                r.get("model"),
                r.get("rows"),
                r.get("decision"),
                r.get("status"),
                str(r.get("input_hmac", ""))[:16] + "...",
            ]
            for r in report.audit_excerpt
        ],
    )
    sections = [
        verdict,
        f"<div class='summary'><b>In plain language.</b> {esc(plain_summary(report))}</div>",
        "<h2>1. Ownership certificate</h2>",
        table(["field", "value"], cert_rows),
        "<h2>2. Verifications against the suspect</h2>",
        "<p>Each test asks the suspect secret questions whose answers only a copy of the owner's "
        "model would know. The p-value is the probability that a model built independently would "
        "match this well by chance. For the trigger set it is an exact binomial test whose "
        "chance rate is estimated from the suspect's own answers. For the response watermark, "
        "the owner's key chose at random which of a client's answers to change (and, for "
        "confident ones, to which wrong answer), so for an independent model those choices are "
        "random picks: the p-value is the exact probability that such picks score at least as "
        "well on the suspect's answers (two exact tests, combined: the changed answers against "
        "the other wrong answers the key could have chosen, and the changed answers against "
        "similar answers that the key left unchanged), multiplied by the number of clients "
        "tested.</p>",
        tests if report.tests else "<p>No test applied.</p>",
        "<h2>3. Who leaked it</h2>",
        f"<p>Identified client: <b>{esc(report.leaking_client or 'none identified')}</b>. "
        f"Audit log: {esc(report.audit_detail)}.</p>",
        excerpt if report.audit_excerpt else "",
        "<h2>4. How to reproduce every figure</h2>",
        "<pre>" + esc("\n".join(report.commands) or "(no commands recorded)") + "</pre>",
        "<h2>5. Certificate (as signed)</h2>",
        "<pre>" + esc(json.dumps(dict(report.certificate), indent=2, sort_keys=True)) + "</pre>",
    ]
    return page(
        "Evidence report: model ownership",
        sections,
        subtitle=f"suspect: {report.suspect} - generated {report.generated_at}",
    )
