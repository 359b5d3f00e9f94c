"""Extraction detection and the response watermark, plugged into the guarded pipeline.

:class:`DetectionObserver` feeds each answered batch to a fitted
:class:`~modelshield.detect.DetectorSuite` and turns the response policy's strongest action into a
flag in the state store (``throttle``, ``degrade`` or ``block``); the flag acts on the client's
next request on every replica. :class:`WatermarkMarker` asks a
:class:`~modelshield.watermark.ResponseWatermark` which rows of this client's batch to answer with
the client's keyed wrong label.

Detection may follow the response: the gateway hands each answered batch to
:meth:`DetectionObserver.defer` and calls :meth:`DetectionObserver.flush` for a client before
admitting that client's next request, so a flag still acts on the next request while the detectors
see the rows of several requests in one batch (their cost per row falls about tenfold). Rows that
no next request flushes are observed by the gateway's idle flush shortly after.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.models._base import FloatArray

_log = logging.getLogger(__name__)

_FLAG_OF = {"throttle": "throttle", "degrade": "degrade", "block": "block"}

#: Deferred rows per client past which the gateway observes at once instead of later.
MAX_PENDING_ROWS = 4096


@dataclass(slots=True)
class _Deferred:
    inputs: FloatArray
    scores: FloatArray
    now: float
    tier: str


class DetectionObserver:
    """Observe batches with a detector suite; decide with a response policy (per tier).

    The flag returned is the strongest enforcing action, or ``None``. ``alert`` actions are
    logged and sent to ``webhook`` when set (off the request path), at most once per client every
    ``alert_interval`` seconds (a client that keeps tripping a detector would otherwise raise an
    alert on every request); the evidence of an alert that was raised comes back under
    ``"alert"`` so that the gateway audits it. A flagged client cannot tell from its answers
    which detector fired: the rules count flags, they do not name detectors.

    Deferred mode (see the module docstring): :meth:`defer` keeps an answered batch,
    :meth:`release` marks that its response has gone out, and :meth:`flush` observes a client's
    deferred batches together. ``flush(client, released_only=True)``, called before the client's
    next request is admitted, does nothing while none of them has been released: a request sent
    while the earlier ones were still being answered is not their "next request", and skipping it
    is what lets one observation cover many concurrent requests.
    """

    def __init__(
        self,
        suite: Any,
        policy: Any,
        *,
        group: str | None = "*",
        webhook: Callable[[dict[str, Any]], None] | None = None,
        alert_interval: float = 60.0,
    ) -> None:
        self.suite = suite
        self.policy = policy
        self.group = group
        self.webhook = webhook
        self.alert_interval = alert_interval
        self._lock = threading.Lock()
        self._alerted: dict[str, float] = {}  # client -> time of its last alert
        self._pending: dict[str, list[_Deferred]] = {}
        self._pending_rows: dict[str, int] = {}
        self._released: dict[str, int] = {}  # client -> released batches among the pending

    def observe(
        self, client: str, inputs: FloatArray, scores: FloatArray, now: float, tier: str = ""
    ) -> tuple[str | None, dict[str, Any]]:
        with self._lock:  # detector state is per process; batches of one client stay ordered
            result = self.suite.observe(
                client, inputs, scores, now, group=self.group, tier=tier or None
            )
            observations = tuple(result.observations) + tuple(result.group_observations)
            actions = self.policy.decide(
                client=client, tier=tier or "standard", observations=observations, now=now
            )
            alert = next((a for a in actions if a.kind == "alert"), None)
            if alert is not None:
                last = self._alerted.get(client)
                if last is not None and now - last < self.alert_interval:
                    alert = None  # raised recently: the audit and the log have it already
                else:
                    self._alerted[client] = now
        latest = {
            o.detector: {"score": round(float(o.score), 6), "threshold": float(o.threshold)}
            for o in result.observations
            if o.ready and np.isfinite(o.score)
        }
        out: dict[str, Any] = {"scores": latest} if latest else {}
        if alert is not None:
            out["alert"] = alert.to_dict()
            _log.warning("extraction alert for client %s: %s", client, out["alert"]["evidence"])
            if self.webhook is not None:
                threading.Thread(target=self.webhook, args=(out["alert"],), daemon=True).start()
        strongest = self.policy.strongest(actions)
        flag = None if strongest is None else _FLAG_OF.get(strongest.kind)
        if flag is None or strongest is None:
            return None, out
        evidence = strongest.to_dict()
        evidence["scores"] = latest
        if alert is not None:
            evidence["alert"] = out["alert"]  # audited even when the flag does not escalate
        return flag, evidence

    def defer(
        self, client: str, inputs: FloatArray, scores: FloatArray, now: float, tier: str = ""
    ) -> bool:
        """Keep an answered batch for a later :meth:`flush`; ``True`` when ``client`` has
        :data:`MAX_PENDING_ROWS` or more rows waiting (then flush now: memory stays bounded)."""
        with self._lock:
            self._pending.setdefault(client, []).append(_Deferred(inputs, scores, now, tier))
            rows = self._pending_rows.get(client, 0) + int(inputs.shape[0])
            self._pending_rows[client] = rows
        return rows >= MAX_PENDING_ROWS

    def release(self, client: str) -> None:
        """One of ``client``'s deferred batches has been answered (its response went out)."""
        with self._lock:
            if client in self._pending:
                self._released[client] = self._released.get(client, 0) + 1

    def pending_clients(self) -> list[str]:
        """The clients with deferred batches."""
        with self._lock:
            return list(self._pending)

    def flush(
        self, client: str, *, released_only: bool = False
    ) -> tuple[str | None, dict[str, Any]]:
        """Observe ``client``'s deferred batches as one batch, in the order they were answered.

        The rows are observed at the time of the latest of them (a volume window may see a burst
        a few milliseconds late). Returns what :meth:`observe` returns; ``(None, {})`` when
        nothing was pending, or when ``released_only`` and no pending batch was released.
        """
        with self._lock:
            if released_only and not self._released.get(client):
                return None, {}
            batches = self._pending.pop(client, None)
            self._pending_rows.pop(client, None)
            self._released.pop(client, None)
        if not batches:
            return None, {}
        last = batches[-1]
        if len(batches) == 1:
            inputs, scores = last.inputs, last.scores
        else:
            inputs = np.concatenate([b.inputs for b in batches])
            scores = np.concatenate([b.scores for b in batches])
        return self.observe(client, inputs, scores, last.now, last.tier)


class WatermarkMarker:
    """Mark a keyed share of each client's answers (DAWN-style, neighbourhood-stable)."""

    def __init__(self, watermark: Any) -> None:
        self.watermark = watermark

    def mark(
        self, client: str, inputs: FloatArray, scores: FloatArray
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        marks = self.watermark.select(client, inputs, outputs=scores)
        return marks.rows.astype(np.intp), marks.labels.astype(np.intp)
