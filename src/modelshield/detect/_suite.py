"""All detectors behind one call per query batch, and threshold calibration on honest traffic."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelshield.detect._base import (
    Detector,
    DetectorError,
    FloatArray,
    Observation,
    QueryBatch,
    StatefulDetector,
    as_batch,
    as_labels_and_margins,
    check_width,
    decode_state,
    encode_state,
)
from modelshield.detect._coverage import CoverageDetector
from modelshield.detect._distribution import BoundaryDetector, OutOfDistributionDetector
from modelshield.detect._prada import PradaDetector
from modelshield.detect._volume import VolumeDetector

GROUP_PREFIX = "group:"
_SUITE = "suite"


@dataclass(frozen=True)
class SuiteResult:
    """The observations of every detector for one client (and its group) after one batch."""

    client: str
    observations: tuple[Observation, ...]
    group_observations: tuple[Observation, ...] = ()

    @property
    def all_observations(self) -> tuple[Observation, ...]:
        return self.observations + self.group_observations

    @property
    def flagged(self) -> bool:
        """Whether any detector flags the client or its group."""
        return any(o.flagged for o in self.all_observations)

    @property
    def flagged_detectors(self) -> tuple[str, ...]:
        """Names of the detectors that flag (group views are prefixed ``group:``)."""
        own = [o.detector for o in self.observations if o.flagged]
        group = [GROUP_PREFIX + o.detector for o in self.group_observations if o.flagged]
        return tuple(own + group)


class DetectorSuite:
    """Several detectors observed together, per client and optionally per group of clients.

    ``group`` (a tenant, or ``"*"`` for all clients) is the aggregate view against colluding
    clients (Sybil accounts): the detectors named in ``group_detectors`` also observe the batch
    under the key ``"group:" + group``, so an attack split over many keys adds up there.
    """

    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        group_detectors: Collection[str] = ("ood", "boundary", "coverage"),
    ) -> None:
        self.detectors = tuple(detectors)
        self.group_detectors = tuple(group_detectors)

    @classmethod
    def default(cls, *, random_state: int = 0) -> DetectorSuite:
        """Every detector with its default parameters (thresholds still need calibration)."""
        return cls(
            [
                PradaDetector(random_state=random_state),
                OutOfDistributionDetector(random_state=random_state),
                BoundaryDetector(random_state=random_state),
                CoverageDetector(random_state=random_state),
                VolumeDetector(random_state=random_state),
            ]
        )

    def fit(self, reference_inputs: FloatArray, reference_outputs: Any = None) -> DetectorSuite:
        """Fit every detector on the same reference data; returns ``self``."""
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            raise DetectorError(f"detector names must be unique, got {names}")
        for detector in self.detectors:
            detector.fit(reference_inputs, reference_outputs)
        self._share_projections()
        self._plan()
        self.fitted_ = True
        return self

    def _plan(self) -> None:
        # what observe() would otherwise work out on every call: the input widths to check and
        # how to call each detector (the stateful ones skip their own fitted check: fit() ran)
        widths = [d.n_features_in_ for d in self.detectors if isinstance(d, StatefulDetector)]
        self._widths = tuple(dict.fromkeys(widths))  # distinct, in order
        self._calls = tuple(
            (
                d,
                d._observe_fitted if isinstance(d, StatefulDetector) else None,
                isinstance(d, VolumeDetector),
                d.name in self.group_detectors,
            )
            for d in self.detectors
        )

    def _share_projections(self) -> None:
        # detectors seeded alike draw the same near-duplicate projection: holding one array
        # (never written to) lets a batch be multiplied by it once for all of them
        seen: list[Any] = []
        for detector in self.detectors:
            matrix = getattr(detector, "projection_", None)
            if not isinstance(detector, StatefulDetector) or not isinstance(matrix, np.ndarray):
                continue
            for other in seen:
                if other.dtype == matrix.dtype and np.array_equal(other, matrix):
                    detector.projection_ = other  # type: ignore[attr-defined]
                    break
            else:
                seen.append(matrix)

    def _batch(self, inputs: FloatArray, outputs: Any) -> QueryBatch:
        # the checks every detector makes, once, in the order the first detector makes them
        widths = self._widths
        x = as_batch(inputs, widths[0] if widths else None)
        for width in widths[1:]:
            check_width(x, width)
        labels, margins = as_labels_and_margins(outputs, x.shape[0])
        return QueryBatch(x, labels, margins)

    def detector(self, name: str) -> Detector:
        """The detector called ``name``."""
        for detector in self.detectors:
            if detector.name == name:
                return detector
        raise DetectorError(f"no detector named {name!r}")

    def observe(
        self,
        client: str,
        inputs: FloatArray,
        outputs: Any,
        now: float,
        *,
        group: str | None = None,
        tier: str | None = None,
    ) -> SuiteResult:
        """Observe one batch (``outputs``: the model's probabilities, before any hardening)."""
        if not getattr(self, "fitted_", False):
            raise DetectorError("the detector suite is not fitted: call fit(...) first")
        if client.startswith(GROUP_PREFIX):
            raise DetectorError(f"client names may not start with {GROUP_PREFIX!r}")
        batch = self._batch(inputs, outputs)
        now = float(now)
        own = []
        for detector, observe_fitted, volume, _ in self._calls:
            if volume and tier is not None:
                detector.set_tier(client, tier)  # type: ignore[attr-defined]
            if observe_fitted is not None:
                own.append(observe_fitted(client, batch, now))
            else:
                own.append(detector.observe(client, inputs, outputs, now))
        grouped = []
        if group is not None:
            key = GROUP_PREFIX + group
            for detector, observe_fitted, _, in_group in self._calls:
                if not in_group:
                    continue
                if observe_fitted is not None:
                    grouped.append(observe_fitted(key, batch, now))
                else:
                    grouped.append(detector.observe(key, inputs, outputs, now))
        return SuiteResult(client, tuple(own), tuple(grouped))

    def state_keys(self, client: str, group: str | None = None) -> tuple[str, ...]:
        """The keys whose state :meth:`observe` of ``client`` (in ``group``) changes: what a
        shared state store must load before and save after it."""
        return (client,) if group is None else (client, GROUP_PREFIX + group)

    def state_dict(self, client: str) -> bytes:
        """Every detector's state of ``client`` in one blob (:func:`encode_state`)."""
        blobs = {d.name: np.frombuffer(d.state_dict(client), np.uint8) for d in self.detectors}
        return encode_state(_SUITE, blobs, None)

    def load_state_dict(self, client: str, data: bytes) -> None:
        """Inverse of :meth:`state_dict`. On an error ``client`` has no state left in any detector
        (never a mix of old and new parts)."""
        try:
            blobs, _ = decode_state(_SUITE, data)
            for detector in self.detectors:
                if detector.name not in blobs:
                    raise DetectorError(f"suite state has no {detector.name!r} part")
                detector.load_state_dict(client, blobs[detector.name].tobytes())
        except DetectorError:
            self.forget(client)
            raise

    def forget(self, client: str) -> None:
        """Drop ``client``'s state in every detector."""
        for detector in self.detectors:
            detector.forget(client)

    def max_state_bytes(self) -> int:
        """Upper bound of the memory held per client by all detectors together."""
        return sum(d.max_state_bytes() for d in self.detectors)


def calibrate_threshold(
    honest_scores: Iterable[float], *, quantile: float = 1.0, margin: float = 0.5
) -> float:
    """A threshold above honest traffic: ``top + margin * spread``.

    Run every honest calibration client through the detector, take each client's peak score
    over its stream (its maximum ready score) and pass them here. ``top`` is their
    ``quantile`` (1.0: the maximum, targeting no false positive on the calibration clients);
    ``spread`` is ``top - median`` (at least 5% of ``|top|``), so that heavy-tailed honest
    scores get a wider margin. Report the false-positive rate on other honest clients.
    """
    scores = np.asarray(list(honest_scores), dtype=np.float64)
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise DetectorError("need at least one finite honest score to calibrate")
    if not 0.0 < quantile <= 1.0 or margin < 0:
        raise DetectorError("quantile must be in (0, 1] and margin non-negative")
    top = float(np.quantile(scores, quantile))
    spread = max(top - float(np.median(scores)), 0.05 * abs(top), 1e-6)
    return top + margin * spread
