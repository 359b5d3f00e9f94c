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
) -> Callable[..., list[Any]]:
    """A function that traces a suspect against every client's watermarked answers.

    The marked answers are read back from the audit store with what was decided for each (the
    label returned and the mark's kind); the model that gave them (the deployment's own, opened
    from its seal, or ``victim``) recomputes each mark's cell, honest label and runner-up, so
    that the trace needs nothing the audit log did not keep and does not depend on the marking
    rates configured now. The suspect is also asked
    about 16 noisy copies of each marked query (``PROBES``), which reveals marks a copy learned
    only partly without making the test inexact.

    The function returned takes the suspect's ``predict`` and, when the suspect exposes them
    (a model file), its ``proba`` function and the classes of its columns: the trace then reads
    the suspect's probabilities (``trace(..., scores=True)``), which verifies more copies.
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
    store = open_audit_store(config.audit.url, read_only=True)
    try:
        by_client = audit.marks_by_client(store)
    finally:
        store.close()
    records: dict[str, list[Any]] = {}
    for client, stored in by_client.items():
        kept = [m.mark for m in stored if m.mark.model == name]
        if not kept:
            continue
        batch = np.stack(
            [
                np.asarray(np.load(io.BytesIO(m.row), allow_pickle=False)).reshape(
                    predictor.input_spec.shape
                )
                for m in kept
            ]
        )
        # what was decided when the answers were given (not the rates configured now)
        records[client] = list(
            mark.records(
                client,
                batch,
                outputs=predictor.predict_proba(batch),
                labels=[m.label for m in kept],
                kinds=[m.kind for m in kept],
            )
        )
    shape = predictor.input_spec.shape
    classes = tuple(predictor.classes)

    def run(
        predict: PredictFn,
        proba: PredictFn | None = None,
        proba_classes: Sequence[Any] | None = None,
    ) -> list[Any]:
        order = _column_order(proba_classes, classes) if proba is not None else None
        if proba is not None and order is not None:
            # the suspect's probabilities: a sharper test than its labels (see trace)
            def scores(x: Any) -> Any:
                return np.asarray(proba(x))[:, order]

            by_scores: list[Any] = watermark.trace(
                scores, records, classes=classes, input_shape=shape, scores=True
            )
            return by_scores
        result: list[Any] = watermark.trace(
            predict, records, classes=classes, input_shape=shape, probes=PROBES
        )
        return result

    return run


def _column_order(suspect: Sequence[Any] | None, ours: Sequence[Any]) -> list[int] | None:
    """The suspect's probability columns in the order of ``ours``; ``None`` when its classes are
    not the same labels (then the trace uses its labels)."""
    from modelshield.watermark._keys import label_key

    if suspect is None:
        return None
    position = {label_key(c): i for i, c in enumerate(suspect)}
    if len(position) != len(suspect) or set(position) != {label_key(c) for c in ours}:
        return None
    return [position[label_key(c)] for c in ours]


def audit_check(
    config: Config,
) -> Callable[[str | None], tuple[bool | None, str, list[dict[str, Any]]]]:
    """The audit log's integrity and the named client's latest records (for the report)."""
    from modelshield import audit
    from modelshield.stores import open_audit_store

    def check(client: str | None) -> tuple[bool | None, str, list[dict[str, Any]]]:
        store = open_audit_store(config.audit.url, read_only=True)
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
