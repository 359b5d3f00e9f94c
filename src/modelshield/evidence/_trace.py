"""Glue between a deployment and the evidence: its response-watermark trace and its audit trail."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelshield.config import Config
from modelshield.errors import ConfigError

PredictFn = Callable[[Any], Any]
PROBES = 16


def _watermark_key(config: Config) -> bytes:
    if not config.watermark.enabled or config.watermark.key is None:
        raise ConfigError(
            f"{config.source or 'configuration'}: watermark: the deployment has no response "
            "watermark to trace ([watermark] enabled = true with a key)"
        )
    try:
        return bytes.fromhex(config.watermark.key.reveal().strip())
    except ValueError:
        raise ConfigError(f"{config.source}: watermark.key: not a hex key") from None


def response_trace(
    config: Config, *, model: str | None = None, victim: Any = None
) -> Callable[[PredictFn], list[Any]]:
    """A function that traces a suspect against every client's watermarked answers.

    The marked answers are read back from the audit store; the model that gave them (the
    deployment's own, opened from its seal, or ``victim``) recomputes each mark's cell and honest
    label, so that the trace needs nothing the audit log did not keep. The suspect is also asked
    about 16 noisy copies of each marked query (``PROBES``), which reveals marks a copy learned
    only partly without making the test inexact.
    """
    from modelshield import audit, watermark
    from modelshield.gateway import load_served_model
    from modelshield.stores import open_audit_store

    key = _watermark_key(config)
    name = model or next(iter(config.models), None)
    if name is None or name not in config.models:
        raise ConfigError(f"{config.source}: models: no model {model!r} to trace")
    predictor = victim if victim is not None else load_served_model(name, config.models[name])
    mark = watermark.ResponseWatermark(
        key,
        classes=predictor.classes,
        share=config.watermark.share,
        uncertain_share=config.watermark.uncertain_share,
        uncertain_below=config.watermark.uncertain_below,
        image_shape=config.models[name].image_shape,
    )
    store = open_audit_store(config.audit.url)
    try:
        by_client = audit.marks_by_client(store)
    finally:
        store.close()
    records: dict[str, list[Any]] = {}
    for client, stored in by_client.items():
        rows = [
            np.load(io.BytesIO(m.mark.row), allow_pickle=False)
            for m in stored
            if m.mark.model == name
        ]
        if not rows:
            continue
        batch = np.stack([np.asarray(r).reshape(predictor.input_spec.shape) for r in rows])
        marks = mark.select(client, batch, outputs=predictor.predict_proba(batch))
        records[client] = list(marks.records)
    shape = predictor.input_spec.shape

    def run(predict: PredictFn) -> list[Any]:
        result: list[Any] = watermark.trace(
            predict, records, classes=predictor.classes, input_shape=shape, probes=PROBES
        )
        return result

    return run


def audit_check(
    config: Config,
) -> Callable[[str | None], tuple[bool | None, str, list[dict[str, Any]]]]:
    """The audit log's integrity and the named client's latest records (for the report)."""
    from modelshield import audit
    from modelshield.stores import open_audit_store

    def check(client: str | None) -> tuple[bool | None, str, list[dict[str, Any]]]:
        store = open_audit_store(config.audit.url)
        try:
            report = audit.verify(store, audit.audit_key_from_config(config))
            excerpt: Sequence[dict[str, Any]] = (
                [] if client is None else list(audit.export(store, client=client))[-20:]
            )
        finally:
            store.close()
        detail = (
            f"intact: {report.records_checked} chained records in {report.segments} segment(s)"
            if report.ok
            else f"FAILED at {report.first_bad}"
        )
        return report.ok, detail, list(excerpt)

    return check
