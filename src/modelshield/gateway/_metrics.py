"""Prometheus metrics of the gateway (names prefixed ``modelshield_``, base units).

No label carries a client id: per-client views belong to the audit log and the dashboard, and
client ids as labels would make the metric cardinality unbounded.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    """The gateway's counters and histogram, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "modelshield_requests",
            "Prediction API requests by model, HTTP status and decision.",
            ["model", "status", "decision"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelshield_request_duration_seconds",
            "Time from receiving a request to having its answer ready, in seconds.",
            ["model"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter(
            "modelshield_rows_served",
            "Input rows answered, by model.",
            ["model"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self._rows_children: dict[str, Any] = {}
        self.refusals = Counter(
            "modelshield_refusals",
            "Refused requests by reason.",
            ["reason"],
            registry=self.registry,
        )

    def observe(
        self, *, model: str, status: int, decision: str, reason: str, seconds: float
    ) -> None:
        key = (model, status, decision)
        children = self._children.get(key)
        if children is None:  # labels() costs a lock and a dict lookup: do it once per key
            children = (
                self.requests.labels(model, str(status), decision),
                self.latency.labels(model),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if status >= 400:
            self.refusals.labels(reason.split(":", 1)[0] or "error").inc()

    def rows_served(self, model: str, rows: int) -> None:
        child = self._rows_children.get(model)
        if child is None:
            child = self._rows_children[model] = self.rows.labels(model)
        child.inc(rows)

    def render(self) -> tuple[bytes, str]:
        """The exposition text (all worker processes' numbers in multiprocess mode)."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
