"""The detect subpackage exports exactly its public names."""

from __future__ import annotations

from types import ModuleType

import modelshield.detect as detect

EXPECTED = {
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
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(detect.__all__) == EXPECTED
    public = {
        name
        for name, value in vars(detect).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert public - {"annotations"} == EXPECTED


def test_detector_error_is_a_shield_error() -> None:
    from modelshield.errors import ShieldError

    assert issubclass(detect.DetectorError, ShieldError)
