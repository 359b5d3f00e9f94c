"""Extraction detectors and the response policy (experimental: names may still change).

Pure code over arrays with the clock passed in; per-client state is bounded and serialisable so
that a gateway can keep it in any state store. Detectors follow the estimator contract (``fit``
returns ``self``; ``observe(client, inputs, outputs, now)`` returns an :class:`Observation`).

- :class:`PradaDetector`: PRADA, Juuti, Szyller, Marchal, Asokan, IEEE EuroS&P 2019.
- :class:`OutOfDistributionDetector`: nearest-neighbour distance to a reference sample and PCA
  residual (Ramaswamy et al., SIGMOD 2000; Jackson & Mudholkar, Technometrics 1979).
- :class:`BoundaryDetector`: share of low top-1 margin queries (boundary probing: Tramer et al.,
  USENIX Security 2016; Papernot et al., AsiaCCS 2017; Pal et al., AAAI 2020).
- :class:`CoverageDetector`: feature-space coverage, after the extraction monitor of Kesarwani,
  Mukhoty, Arya, Mehta, ACSAC 2018; mergeable across colluding clients.
- :class:`VolumeDetector`: rows per time window against the tier's norm; near-duplicates.
- :class:`DetectorSuite`: all of them in one call per batch, with a group (tenant) view.
- :class:`ResponsePolicy`: actions (alert, throttle, degrade, block) per tier, with evidence.
"""

from __future__ import annotations

from modelshield.detect._base import Detector, DetectorError, Observation
from modelshield.detect._coverage import CoverageDetector
from modelshield.detect._distribution import BoundaryDetector, OutOfDistributionDetector
from modelshield.detect._policy import (
    Action,
    ActionKind,
    DegradeMode,
    Evidence,
    ResponsePolicy,
    Rule,
    TierPolicy,
)
from modelshield.detect._prada import PradaDetector
from modelshield.detect._suite import DetectorSuite, SuiteResult, calibrate_threshold
from modelshield.detect._volume import VolumeDetector

__all__ = [
    "Action",
    "ActionKind",
    "BoundaryDetector",
    "CoverageDetector",
    "DegradeMode",
    "Detector",
    "DetectorError",
    "DetectorSuite",
    "Evidence",
    "Observation",
    "OutOfDistributionDetector",
    "PradaDetector",
    "ResponsePolicy",
    "Rule",
    "SuiteResult",
    "TierPolicy",
    "VolumeDetector",
    "calibrate_threshold",
]
