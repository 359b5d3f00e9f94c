"""Behaviour of the out-of-distribution, boundary, coverage and volume detectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelshield.detect import (
    BoundaryDetector,
    CoverageDetector,
    DetectorError,
    OutOfDistributionDetector,
    VolumeDetector,
)


def test_ood_scores_noise_far_above_held_out_data(reference, held_out) -> None:
    detector = OutOfDistributionDetector().fit(reference[0])
    x, p = held_out
    honest = detector.observe("honest", x[:200], p[:200], 0.0)
    noise = np.random.default_rng(0).uniform(0, 1, (64, 64)).astype(np.float32)
    attack = detector.observe("noise", noise, p[:64], 0.0)
    assert honest.ready
    assert attack.ready
    assert attack.score > 5 * max(honest.score, 0.5)
    stats = detector.query_statistics(x)
    assert np.abs(np.median(stats, axis=0)).max() < 0.5  # held-out rows are centred


def test_ood_needs_min_distinct_queries_and_ignores_resends(reference, held_out) -> None:
    detector = OutOfDistributionDetector(min_queries=20).fit(reference[0])
    x, p = held_out
    resent = np.repeat(x[:5], 40, axis=0)
    obs = detector.observe("c", resent, np.repeat(p[:5], 40, axis=0), 0.0)
    assert obs.queries_seen == 200
    assert not obs.ready
    assert dict(obs.details)["distinct_queries"] == 5


def test_boundary_counts_low_margins(reference, held_out) -> None:
    detector = BoundaryDetector(low_margin=0.5, threshold=4.0).fit(reference[0])
    x, _ = held_out
    confident = np.tile(np.eye(10, dtype=np.float32)[0], (64, 1))
    unsure = np.tile(np.array([0.4, 0.35] + [0.25 / 8] * 8, np.float32), (64, 1))
    assert detector.observe("a", x[:64], confident, 0.0).score == 0.0
    obs = detector.observe("b", x[:64], unsure, 0.0)
    assert dict(obs.details)["low_margin_share"] == 1.0
    assert obs.score == pytest.approx(-64 * np.log10(detector.rate_))  # P(all 64 low)
    assert obs.flagged
    few = detector.observe("c", x[:64], np.vstack([unsure[:3], confident[:61]]), 0.0)
    assert 0 < few.score < 4.0  # 3 of 64 is honest-looking


def test_boundary_with_labels_only_counts_label_flips(reference, held_out) -> None:
    detector = BoundaryDetector(threshold=4.0).fit(reference[0])
    x, _ = held_out
    base = np.repeat(x[:40], 2, axis=0)
    base[1::2] += 1e-3  # near-duplicate pairs...
    same = np.repeat(np.arange(40) % 10, 2)
    flipped = same.copy()
    flipped[1::2] = (flipped[1::2] + 1) % 10  # ...whose second member changes label
    assert detector.observe("same", base, same, 0.0).score == 0.0
    obs = detector.observe("flip", base, flipped, 0.0)
    assert obs.flagged
    assert dict(obs.details)["low_margin_share"] == pytest.approx(0.5)  # pairs: 0 then 1


def test_coverage_ratio_and_merge(reference, held_out) -> None:
    detector = CoverageDetector(max_leaves=64, min_queries=10).fit(*reference)
    x, p = held_out
    e = [detector.expected_coverage(n) for n in (1, 10, 100, 10_000)]
    assert e == sorted(e)
    assert e[0] == pytest.approx(1.0)
    assert e[-1] <= detector.n_leaves_
    one_class = p.argmax(1) == 0
    narrow = detector.observe("narrow", x[one_class], p[one_class], 0.0)
    wide = detector.observe("wide", x[:200], p[:200], 0.0)
    assert narrow.score < wide.score
    assert dict(narrow.details)["coverage_ratio"] < dict(wide.details)["coverage_ratio"]
    merged = detector.merge("group:t", ("narrow", "wide"))
    assert merged.queries_seen == narrow.queries_seen + wide.queries_seen
    covered = dict(merged.details)["leaves_covered"]
    assert covered >= dict(wide.details)["leaves_covered"]
    with pytest.raises(DetectorError, match="outputs"):
        CoverageDetector().fit(reference[0])


def test_coverage_expectation_table_equals_the_formula(reference) -> None:
    """The honest expectation and spread are looked up from a table grown on demand (shared by
    every client): the same values as the formula, up to and past the table's end."""
    from modelshield.detect import _coverage

    detector = CoverageDetector(max_leaves=64).fit(*reference)
    p = detector.leaf_p_
    limit, chunk = _coverage._TABLE_LIMIT, _coverage._TABLE_CHUNK
    counts = [1, 2, chunk - 1, chunk, chunk + 1, 3 * chunk + 5, limit - 1, limit, 5 * limit]
    for n in counts:
        q = 1.0 - (1.0 - p) ** n
        expected, sd = detector._expected_and_sd(n)
        assert expected == pytest.approx(q.sum(), rel=1e-9)
        assert sd == pytest.approx(math.sqrt(max((q * (1 - q)).sum(), 1e-12)), rel=1e-9)
        assert detector.table_.shape[1] <= limit
    assert detector.table_.shape[1] == limit
    assert detector.expected_coverage(chunk + 1) == detector._expected_and_sd(chunk + 1)[0]
    for bad in (-1, 2.5, True):
        with pytest.raises(DetectorError, match="non-negative int"):
            detector.expected_coverage(bad)  # type: ignore[arg-type]
    fresh = CoverageDetector(max_leaves=64).fit(*reference)
    fresh._expected_and_sd(3)
    assert fresh.table_.shape[1] == chunk  # grown a chunk at a time, not to the end at once


def test_volume_window_slides_and_tiers_have_norms(reference, held_out) -> None:
    detector = VolumeDetector(
        rows_per_window=100,
        tier_rows_per_window={"gold": 1000},
        window_seconds=60.0,
        n_buckets=6,
    ).fit(reference[0])
    x, p = held_out
    for t in range(0, 50, 10):
        obs = detector.observe("c", x[:30], p[:30], float(t))
    assert obs.score == pytest.approx(150 / 100)
    assert obs.flagged
    later = detector.observe("c", x[:10], p[:10], 200.0)  # everything before slid out
    assert later.score == pytest.approx(0.1)
    assert not later.flagged
    detector.set_tier("g", "gold")
    gold = detector.observe("g", x[:150], p[:150], 0.0)
    assert gold.score == pytest.approx(0.15)
    assert not gold.flagged


def test_volume_reports_near_duplicates(reference, held_out) -> None:
    detector = VolumeDetector().fit(reference[0])
    x, p = held_out
    detector.observe("c", x[:20], p[:20], 0.0)
    obs = detector.observe("c", x[:20] + 1e-3, p[:20], 1.0)
    assert dict(obs.details)["near_duplicate_share"] == pytest.approx(20 / 40)
    fresh = detector.observe("d", x[:40], p[:40], 0.0)
    assert dict(fresh.details)["near_duplicate_share"] < 0.2
