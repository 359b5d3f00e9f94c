"""Extraction detection and the response watermark, plugged into the guarded pipeline.

:class:`DetectionObserver` feeds each answered batch to a fitted
:class:`~modelshield.detect.DetectorSuite` and turns the response policy's strongest action into a
flag in the state store (``throttle``, ``degrade`` or ``block``); the flag acts on the client's
next request on every replica. :class:`WatermarkMarker` asks a
:class:`~modelshield.watermark.ResponseWatermark` which rows of this client's batch to answer with
the client's keyed wrong label.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.models._base import FloatArray

_log = logging.getLogger(__name__)

_FLAG_OF = {"throttle": "throttle", "degrade": "degrade", "block": "block"}


class DetectionObserver:
    """Observe batches with a detector suite; decide with a response policy (per tier).

    ``alert`` actions are logged (and sent to ``webhook`` when set, off the request path); the
    flag returned is the strongest enforcing action, or ``None``. A flagged client cannot tell
    from its answers which detector fired: the rules count flags, they do not name detectors.
    """

    def __init__(
        self,
        suite: Any,
        policy: Any,
        *,
        group: str | None = "*",
        webhook: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.suite = suite
        self.policy = policy
        self.group = group
        self.webhook = webhook
        self._lock = threading.Lock()

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
        latest = {
            o.detector: {"score": round(float(o.score), 6), "threshold": float(o.threshold)}
            for o in result.observations
            if o.ready and np.isfinite(o.score)
        }
        strongest = self.policy.strongest(actions)
        if strongest is None:
            return None, {"scores": latest} if latest else {}
        evidence = strongest.to_dict()
        evidence["scores"] = latest
        if strongest.kind == "alert" or any(a.kind == "alert" for a in actions):
            _log.warning("extraction alert for client %s: %s", client, evidence["evidence"])
            if self.webhook is not None:
                threading.Thread(target=self.webhook, args=(evidence,), daemon=True).start()
        return _FLAG_OF.get(strongest.kind), evidence


class WatermarkMarker:
    """Mark a keyed share of each client's answers (DAWN-style, neighbourhood-stable)."""

    def __init__(self, watermark: Any) -> None:
        self.watermark = watermark

    def mark(
        self, client: str, inputs: FloatArray, scores: FloatArray
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        marks = self.watermark.select(client, inputs, outputs=scores)
        return marks.rows.astype(np.intp), marks.labels.astype(np.intp)
