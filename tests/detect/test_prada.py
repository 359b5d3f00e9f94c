"""PRADA: the incremental implementation agrees with the paper's algorithm run naively."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import shapiro

from modelshield.detect import DetectorError, PradaDetector


def naive_prada_w(x: np.ndarray, labels: np.ndarray) -> float:
    """Algorithm 1 of Juuti et al. 2019, written out: full growing sets, statistics rebuilt."""
    sets: dict[int, list[np.ndarray]] = {}
    set_d: dict[int, list[float]] = {}
    thr: dict[int, float] = {}
    pooled: list[float] = []
    for row, c in zip(x, labels, strict=True):
        if c not in sets:
            sets[c], set_d[c], thr[c] = [row], [], 0.0
            continue
        d = min(float(np.linalg.norm(row - g)) for g in sets[c])
        pooled.append(d)
        if d > thr[c]:
            sets[c].append(row)
            set_d[c].append(d)
            thr[c] = max(thr[c], float(np.mean(set_d[c]) - np.std(set_d[c])))
    dist = np.asarray(pooled)
    kept = dist[np.abs(dist - dist.mean()) <= 3 * dist.std()]
    return float(shapiro(kept).statistic)


def test_incremental_equals_naive_when_no_bound_is_reached(reference, held_out) -> None:
    x, p = held_out
    rng = np.random.default_rng(3)
    idx = rng.permutation(x.shape[0])[:300]
    xs, ps = x[idx], p[idx]
    detector = PradaDetector(max_set_rows=400, max_distances=1000, test_every=1).fit(*reference)
    for i in range(0, 300, 7):  # odd batch sizes exercise the in-batch pair distances
        obs = detector.observe("c", xs[i : i + 7], ps[i : i + 7], float(i))
    expected = naive_prada_w(xs, ps.argmax(1))
    assert dict(obs.details)["shapiro_w"] == pytest.approx(expected, abs=2e-3)
    assert obs.score == pytest.approx(1 - expected, abs=2e-3)


def test_line_search_pushes_w_down(reference, held_out) -> None:
    x, p = held_out
    detector = PradaDetector(delta=0.9, test_every=1).fit(*reference)
    honest = detector.observe("honest", x[:300], p[:300], 0.0)
    # geometric bisection steps between pairs: distances shrink by half each step
    rows = []
    for i in range(30):
        a, b = x[2 * i], x[2 * i + 1]
        rows += [a + (b - a) * (0.5 + 0.5**k) for k in range(1, 11)]
    q = np.asarray(rows, np.float32)
    probe = detector.observe("probe", q, np.tile(p[:1], (q.shape[0], 1)), 0.0)
    assert probe.ready
    assert honest.ready
    assert probe.score > honest.score
    assert probe.flagged
    assert not honest.flagged


def test_not_ready_before_min_distances(reference, held_out) -> None:
    x, p = held_out
    detector = PradaDetector().fit(*reference)
    obs = detector.observe("c", x[:50], p[:50], 0.0)
    assert not obs.ready
    assert not obs.flagged
    assert obs.score == 0.0


def test_identical_queries_are_not_evidence(reference, held_out) -> None:
    x, p = held_out
    detector = PradaDetector(test_every=1).fit(*reference)
    q = np.repeat(x[:1], 200, axis=0)
    obs = detector.observe("c", q, np.repeat(p[:1], 200, axis=0), 0.0)
    assert obs.ready
    assert obs.score == 0.0


def test_projection_for_wide_inputs_and_bad_parameters() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 300)).astype(np.float32)
    detector = PradaDetector(projection_dim=32).fit(x)
    assert detector.dim_ == 32
    assert detector.n_classes_ == detector.max_classes
    with pytest.raises(DetectorError):
        PradaDetector(max_distances=6000).fit(x)
    with pytest.raises(DetectorError):
        PradaDetector(min_distances=500, max_distances=100).fit(x)


def test_w_is_scipys_shapiro_wilk_statistic() -> None:
    """The detector calls the function under scipy's axis/NaN decorator: the same W."""
    rng = np.random.default_rng(4)
    detector = PradaDetector()
    for n in (120, 1000, 4096):
        d = rng.gamma(2.0, 1.0, n).astype(np.float32)
        d[:3] = [40.0, 45.0, 50.0]  # beyond 3 sigma: removed before the test
        kept = d[np.abs(d - d.mean()) <= 3.0 * d.std()].astype(np.float64)
        assert kept.shape[0] <= n - 3  # (a gamma sample has a few 3-sigma values of its own)
        assert detector._shapiro_w(d) == float(shapiro(kept).statistic)
