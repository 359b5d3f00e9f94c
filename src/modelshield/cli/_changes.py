"""Audit records of changes made on the command line (clients, admins, flags).

The admin API and the dashboard audit every change they make; the command line does the same
here, in a chain segment of its own (``cli.*``). A change is made first and recorded after: a
revocation must not wait for the audit store. If the record cannot be written the command says
so and exits 1, with the change made. A configuration without an audit key (a registry used on
its own, no gateway) has no log to write to, and nothing is recorded.
"""

from __future__ import annotations

import time
from typing import Any

from modelshield.cli._app import err_console
from modelshield.config import Config
from modelshield.errors import ShieldError


def record_change(
    settings: Config,
    *,
    reason: str,
    summary: str,
    key_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Append the audit record of one change (``client = admin:cli``, ``decision = admin``);
    raises :class:`~modelshield.errors.ShieldError` when it cannot be written."""
    from modelshield import audit
    from modelshield.stores import open_audit_store

    key = audit.audit_key_from_config(settings)
    store = open_audit_store(settings.audit.url)
    try:
        with audit.AuditLog(store, key, writer_id="cli") as log:
            log.append(
                audit.AuditEvent(
                    time=time.time(),
                    client="admin:cli",
                    key_id=key_id,
                    model=None,
                    input_hmac="",
                    rows=0,
                    output_summary=summary,
                    decision="admin",
                    reason=reason,
                    status=200,
                    extra=extra or {},
                )
            ).result(timeout=30)
    finally:
        store.close()


def audited(
    settings: Config,
    what: str,
    *,
    reason: str,
    summary: str,
    key_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """:func:`record_change`, or a warning naming the change ``what`` that was made without
    its record; ``False`` then (the command should exit 1 once it has printed its result)."""
    if settings.audit.key is None:
        return True
    try:
        record_change(settings, reason=reason, summary=summary, key_id=key_id, extra=extra)
    except ShieldError as exc:
        err_console.print(
            f"warning: {what}, but its audit record could not be written: {exc}",
            markup=False,
        )
        return False
    return True
