"""One conformance test over every detector: the estimator contract, observations, state
round-trips, bounded memory, and refusal of malformed input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from modelshield.detect import (
    BoundaryDetector,
    CoverageDetector,
    Detector,
    DetectorError,
    Observation,
    OutOfDistributionDetector,
    PradaDetector,
    VolumeDetector,
)

FACTORIES: dict[str, Callable[[], Detector]] = {
    "prada": lambda: PradaDetector(test_every=4, max_set_rows=16, max_distances=200),
    "ood": lambda: OutOfDistributionDetector(n_components=16, window=32),
    "boundary": lambda: BoundaryDetector(window=32),
    "coverage": lambda: CoverageDetector(max_leaves=64, min_queries=10),
    "volume": lambda: VolumeDetector(rows_per_window=500, recent=32),
}


@pytest.fixture(params=sorted(FACTORIES))
def make(request: pytest.FixtureRequest) -> Callable[[], Detector]:
    return FACTORIES[request.param]


def _stream(held_out: tuple[np.ndarray, np.ndarray], n: int, seed: int = 0):
    x, p = held_out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], n)
    return x[idx], p[idx]


def test_fit_returns_self_and_sets_only_learned_state(make, reference) -> None:
    detector = make()
    before = dict(vars(detector))
    assert detector.fit(*reference) is detector
    learned = set(vars(detector)) - set(before)
    assert learned
    assert all(name.endswith("_") for name in learned)
    # __init__ stored parameters only: re-fitting a clone gives the same parameters
    assert {k: v for k, v in vars(detector).items() if k in before} == before


def test_observe_before_fit_raises(make, held_out) -> None:
    x, p = _stream(held_out, 5)
    with pytest.raises(DetectorError, match="not fitted"):
        make().observe("alice", x, p, 0.0)


def test_observation_is_frozen_and_counts_queries(make, reference, held_out) -> None:
    detector = make().fit(*reference)
    x, p = _stream(held_out, 30)
    first = detector.observe("alice", x[:10], p[:10], 0.0)
    second = detector.observe("alice", x[10:], p[10:], 1.0)
    assert isinstance(first, Observation)
    assert first.detector == detector.name
    assert first.client == "alice"
    assert (first.queries_seen, second.queries_seen) == (10, 30)
    assert second.flagged == (second.ready and second.score >= second.threshold)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.score = 0.0  # type: ignore[misc]
    # clients are independent
    assert detector.observe("bob", x[:3], p[:3], 2.0).queries_seen == 3
    assert set(detector.clients()) == {"alice", "bob"}
    assert detector.peek("alice") == second


def test_state_round_trip_continues_identically(make, reference, held_out) -> None:
    a, b = make().fit(*reference), make().fit(*reference)
    x, p = _stream(held_out, 400, seed=1)
    for i in range(0, 300, 25):
        a.observe("c", x[i : i + 25], p[i : i + 25], float(i))
    blob = a.state_dict("c")
    assert isinstance(blob, bytes)
    b.load_state_dict("c", blob)
    assert b.peek("c") == a.peek("c")
    for i in range(300, 400, 20):
        assert b.observe("c", x[i : i + 20], p[i : i + 20], float(i)) == a.observe(
            "c", x[i : i + 20], p[i : i + 20], float(i)
        )


def test_state_of_unknown_client_is_empty_and_forget_drops(make, reference, held_out) -> None:
    detector = make().fit(*reference)
    assert detector.peek("nobody").queries_seen == 0
    x, p = _stream(held_out, 10)
    detector.observe("c", x, p, 0.0)
    assert detector.state_bytes("c") > 0
    detector.forget("c")
    assert detector.state_bytes("c") == 0
    assert detector.peek("c").queries_seen == 0


def test_memory_is_bounded(make, reference) -> None:
    detector = make().fit(*reference)
    rng = np.random.default_rng(0)
    x_ref, _ = reference
    sizes = []
    for i in range(30):
        x = rng.uniform(0, 1, (100, x_ref.shape[1])).astype(np.float32)
        p = rng.dirichlet(np.ones(10), 100).astype(np.float32)
        detector.observe("c", x, p, float(i))
        sizes.append(detector.state_bytes("c"))
        assert sizes[-1] <= detector.max_state_bytes()
    assert sizes[-1] == sizes[-10]  # stopped growing: 3,000 queries, fixed size
    assert len(detector.state_dict("c")) <= 2 * detector.max_state_bytes() + 4096


def test_corrupt_or_foreign_state_is_refused(make, reference, held_out) -> None:
    detector = make().fit(*reference)
    x, p = _stream(held_out, 50)
    detector.observe("c", x, p, 0.0)
    blob = detector.state_dict("c")
    with pytest.raises(DetectorError):
        detector.load_state_dict("c", blob[: len(blob) // 2])
    with pytest.raises(DetectorError):
        detector.load_state_dict("c", b"not a state")
    other = next(f for name, f in FACTORIES.items() if name != detector.name)().fit(*reference)
    other.observe("c", x, p, 0.0)
    with pytest.raises(DetectorError, match="belong"):
        detector.load_state_dict("c", other.state_dict("c"))


def test_malformed_inputs_are_refused(make, reference, held_out) -> None:
    detector = make().fit(*reference)
    x, p = _stream(held_out, 4)
    with pytest.raises(DetectorError, match="features"):
        detector.observe("c", x[:, :10], p, 0.0)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DetectorError, match="finite"):
        detector.observe("c", bad, p, 0.0)
    with pytest.raises(DetectorError, match="rows"):
        detector.observe("c", x, p[:2], 0.0)
