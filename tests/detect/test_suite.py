"""The detector suite: one call per batch, the group view, state, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from modelshield.detect import (
    DetectorError,
    DetectorSuite,
    OutOfDistributionDetector,
    PradaDetector,
    VolumeDetector,
    calibrate_threshold,
)


@pytest.fixture(scope="module")
def fitted(reference) -> DetectorSuite:
    return DetectorSuite.default().fit(*reference)


def test_observe_returns_one_observation_per_detector(fitted, held_out) -> None:
    x, p = held_out
    result = fitted.observe("alice", x[:30], p[:30], 0.0, tier="free")
    assert [o.detector for o in result.observations] == [
        "prada",
        "ood",
        "boundary",
        "coverage",
        "volume",
    ]
    assert result.group_observations == ()
    assert result.flagged == bool(result.flagged_detectors)
    fitted.forget("alice")


def test_group_view_aggregates_several_clients(fitted, held_out) -> None:
    x, p = held_out
    for i in range(5):
        result = fitted.observe(f"k{i}", x[i * 10 : i * 10 + 10], p[:10], 0.0, group="t")
    assert {o.detector for o in result.group_observations} == {"ood", "boundary", "coverage"}
    assert all(o.client == "group:t" and o.queries_seen == 50 for o in result.group_observations)
    assert all(o.queries_seen == 10 for o in result.observations)
    with pytest.raises(DetectorError, match="group:"):
        fitted.observe("group:t", x[:1], p[:1], 0.0)
    for i in range(5):
        fitted.forget(f"k{i}")
    fitted.forget("group:t")


def test_group_view_flags_a_split_noise_attack(reference, held_out) -> None:
    _x, p = held_out
    suite = DetectorSuite([OutOfDistributionDetector(threshold=1.0, min_queries=20)]).fit(
        *reference
    )
    noise = np.random.default_rng(0).uniform(0, 1, (100, 64)).astype(np.float32)
    for i in range(10):  # ten keys, ten queries each: no key alone is ready
        result = suite.observe(f"sybil{i}", noise[i * 10 : i * 10 + 10], p[:10], 0.0, group="t")
        assert not result.observations[0].ready
    assert result.flagged_detectors == ("group:ood",)


def test_state_round_trip_and_bounds(fitted, reference, held_out) -> None:
    x, p = held_out
    fitted.observe("s", x[:200], p[:200], 0.0)
    blob = fitted.state_dict("s")
    other = DetectorSuite.default().fit(*reference)
    other.load_state_dict("s", blob)
    original = fitted.observe("s", x[200:260], p[200:260], 1.0)
    restored = other.observe("s", x[200:260], p[200:260], 1.0)
    # same verdicts and counts; float32 statistics equal to rounding only: numpy's SIMD loops
    # (einsum) round by the alignment of freshly allocated temporaries, which varies by run
    for a, b in zip(original.observations, restored.observations, strict=True):
        assert (a.detector, a.flagged, a.ready, a.queries_seen) == (
            b.detector,
            b.flagged,
            b.ready,
            b.queries_seen,
        )
        assert b.score == pytest.approx(a.score, rel=1e-5, abs=1e-9)
        assert dict(b.details) == pytest.approx(dict(a.details), rel=1e-4, abs=1e-6)
    assert len(blob) < fitted.max_state_bytes() + 16_384
    with pytest.raises(DetectorError):
        other.load_state_dict("s", b"garbage")
    fitted.forget("s")


def test_unfitted_and_duplicate_names_are_refused(reference, held_out) -> None:
    x, p = held_out
    with pytest.raises(DetectorError, match="not fitted"):
        DetectorSuite.default().observe("c", x[:1], p[:1], 0.0)
    with pytest.raises(DetectorError, match="unique"):
        DetectorSuite([PradaDetector(), PradaDetector()]).fit(*reference)
    with pytest.raises(DetectorError, match="no detector"):
        DetectorSuite([VolumeDetector()]).detector("prada")


def test_calibrate_threshold() -> None:
    # top 0.3, median 0.2: spread 0.1
    assert calibrate_threshold([0.1, 0.3, 0.2], margin=0.5) == pytest.approx(0.35)
    assert calibrate_threshold([2.0, 2.0], margin=1.0) == pytest.approx(2.1)  # 5% of |top|
    assert calibrate_threshold(list(range(101)), quantile=0.5, margin=0.0) == 50
    for bad in ([], [float("nan")]):
        with pytest.raises(DetectorError):
            calibrate_threshold(bad)
    with pytest.raises(DetectorError):
        calibrate_threshold([1.0], quantile=0.0)
