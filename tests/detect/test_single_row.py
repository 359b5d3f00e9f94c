"""One-row requests take a shorter path through every detector (fewer numpy calls, work shared
through the suite): it must give exactly what the general (batch) path gives, observation for
observation and state for state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from modelshield.detect import (
    BoundaryDetector,
    CoverageDetector,
    DetectorError,
    DetectorSuite,
    OutOfDistributionDetector,
    PradaDetector,
    VolumeDetector,
)
from modelshield.detect._base import (
    ProjectedRow,
    QueryBatch,
    RecentRows,
    StatefulDetector,
    as_batch,
    as_labels_and_margins,
    decode_state,
)

Request = tuple[np.ndarray, np.ndarray, str, str | None, str | None, float]


def _default() -> DetectorSuite:
    return DetectorSuite.default(random_state=3)


def _small() -> DetectorSuite:
    # small windows and rings: they fill and wrap within the stream
    return DetectorSuite(
        [
            PradaDetector(test_every=4, max_set_rows=16, max_distances=200, min_distances=50),
            OutOfDistributionDetector(n_components=16, window=32, recent=16, min_queries=5),
            BoundaryDetector(window=32, recent=16, low_margin=0.3, min_queries=5),
            CoverageDetector(max_leaves=64, min_queries=10),
            VolumeDetector(
                rows_per_window=500,
                recent=8,
                window_seconds=60.0,
                n_buckets=6,
                tier_rows_per_window={"gold": 50},
            ),
        ]
    )


FACTORIES: dict[str, Callable[[], DetectorSuite]] = {"default": _default, "small": _small}


def _general(suite: DetectorSuite) -> DetectorSuite:
    for detector in suite.detectors:
        assert isinstance(detector, StatefulDetector)
        detector._fast_single_row = False
    return suite


def _stream(held_out: tuple[np.ndarray, np.ndarray], seed: int, n: int) -> Iterator[Request]:
    """Honest rows, exact re-sends, near-duplicates, noise and rescaled rows; probabilities or
    labels only; one-row requests with a few batches between them; clients in a group; time
    that stays in a slot, jumps ahead and goes back."""
    x, p = held_out
    rng = np.random.default_rng(seed)
    # digits are small integers, whose sums of squares are exact: jitter them once so that an
    # exact re-send can come out at a (clipped) negative squared distance
    x = (x + rng.uniform(-0.4, 0.4, x.shape)).astype(np.float32)
    sent: list[int] = []
    now = 0.0
    for k in range(n):
        rows = 1 if k % 9 else int(rng.integers(2, 6))
        kind = rng.choice(
            ["fresh", "resend", "near", "noise", "scaled"], p=[0.4, 0.2, 0.2, 0.1, 0.1]
        )
        idx = rng.integers(0, x.shape[0], rows)
        if kind in ("resend", "near") and sent:
            idx = rng.choice(sent, rows)
        sent.extend(idx.tolist())
        xs = x[idx].copy()
        ps = p[idx].copy()
        if kind == "near":
            xs += rng.normal(0, 1e-3, xs.shape).astype(np.float32)
        elif kind == "noise":
            xs = rng.uniform(0, 16, xs.shape).astype(np.float32)
            ps = rng.dirichlet(np.full(p.shape[1], 0.3), rows).astype(np.float32)
        elif kind == "scaled":
            xs *= np.float32(rng.uniform(0.2, 3.0))
        outputs = ps.argmax(axis=1) if rng.random() < 0.15 else ps
        client = "a" if rng.random() < 0.7 else "b"
        group = "t" if rng.random() < 0.5 else None
        tier = ("gold" if rng.random() < 0.5 else "free") if rng.random() < 0.1 else None
        step = rng.choice([0.0, 0.5, 7.0, 45.0, -20.0], p=[0.3, 0.4, 0.15, 0.1, 0.05])
        now = max(0.0, now + float(step))
        yield xs, outputs, client, group, tier, now


def _states(suite: DetectorSuite, client: str) -> list[Any]:
    out = []
    for detector in suite.detectors:
        arrays, meta = decode_state(detector.name, detector.state_dict(client))
        out.append((meta, {k: v.tolist() for k, v in sorted(arrays.items())}))
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("config", sorted(FACTORIES))
def test_one_row_path_equals_general_path(reference, held_out, config: str, seed: int) -> None:
    fast = FACTORIES[config]().fit(*reference)
    general = _general(FACTORIES[config]().fit(*reference))
    singles = 0
    for xs, outputs, client, group, tier, now in _stream(held_out, seed, 450):
        got = fast.observe(client, xs, outputs, now, group=group, tier=tier)
        want = general.observe(client, xs, outputs, now, group=group, tier=tier)
        assert got == want
        singles += xs.shape[0] == 1
    assert singles > 350
    for client in ("a", "b", "group:t"):
        assert _states(fast, client) == _states(general, client)
    # the stream reached the verdicts, not only the warm-up
    last = fast.observe("a", xs[:1], outputs[:1], now)
    assert all(o.ready for o in last.observations)


def test_one_row_path_after_state_loads_and_divergent_rings(reference, held_out) -> None:
    """Rings restored from a store, or rings of two detectors that hold different rows, must
    not borrow each other's nearest-row search."""
    fast = _small().fit(*reference)
    general = _general(_small().fit(*reference))
    stream = list(_stream(held_out, 5, 300))
    for xs, outputs, client, _group, _tier, now in stream[:150]:
        assert fast.observe(client, xs, outputs, now) == general.observe(client, xs, outputs, now)
    # c: the whole suite's state of a, restored (equal rings in ood and boundary)
    # d: ood restored from a, boundary from b (rings of equal size, different rows)
    for suite in (fast, general):
        suite.load_state_dict("c", suite.state_dict("a"))
        suite.load_state_dict("d", suite.state_dict("a"))
        boundary = suite.detector("boundary")
        boundary.load_state_dict("d", boundary.state_dict("b"))
    for xs, outputs, _client, _group, _tier, now in stream[150:]:
        for client in ("c", "d"):
            got = fast.observe(client, xs, outputs, now)
            assert got == general.observe(client, xs, outputs, now)
    for client in ("c", "d"):
        assert _states(fast, client) == _states(general, client)


@pytest.mark.parametrize("name", ["prada", "ood", "boundary", "coverage", "volume"])
def test_one_row_path_alone_equals_general_path(reference, held_out, name: str) -> None:
    """Each detector on its own (``observe``, no suite to share the work)."""
    fast = _small().fit(*reference).detector(name)
    general = _general(_small().fit(*reference)).detector(name)
    for xs, outputs, client, _group, _tier, now in _stream(held_out, 7, 300):
        assert fast.observe(client, xs, outputs, now) == general.observe(client, xs, outputs, now)


@pytest.mark.parametrize("size", [3, 16, 64])
def test_one_row_ring_search_equals_the_batch_search(size: int) -> None:
    """Exact re-sends whose squared distance rounds below 0 (clipped, the first such row
    counts), ties, label flips, a ring that fills and wraps."""
    rng = np.random.default_rng(size)
    one, general = RecentRows(size), RecentRows(size)
    sent: list[np.ndarray] = []
    clipped = 0
    for _ in range(800):
        if sent and rng.random() < 0.5:
            z = sent[int(rng.integers(0, len(sent)))]
        else:  # float16 values (as stored) of mixed magnitudes: float32 sums round
            scale = 2.0 ** rng.integers(-8, 6, (1, 16))
            z = (rng.standard_normal((1, 16)) * scale).astype(np.float16).astype(np.float32)
            sent.append(z)
        if one.fill:
            ring = one.rows[: one.fill]
            d2 = np.einsum("ij,ij->i", z, z) + one.sq[: one.fill] - 2.0 * (z @ ring.T)[0]
            clipped += bool((d2 < 0).any())
        label = int(rng.integers(0, 3))
        got = one.check_and_add_one(ProjectedRow(z), label, 0.5)
        dup, flip = general.check_and_add(z, np.array([label]), 0.5)
        assert got == (bool(dup[0]), bool(flip[0]))
        assert one.rows.tobytes() == general.rows.tobytes()
        assert one.sq.tobytes() == general.sq.tobytes()
        assert one.labels.tolist() == general.labels.tolist()
    assert clipped > 0  # the clipped branch ran


def test_rings_with_the_same_rows_share_one_batch_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rings fed the same batches through one memo search once per batch and answer, each
    with its own radius, what a ring searching on its own answers."""
    from modelshield.detect import _base

    calls: list[int] = []
    real = _base.sq_distances

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(_base, "sq_distances", counting)
    rng = np.random.default_rng(5)
    first, second = RecentRows(16), RecentRows(16)
    alone_small, alone_large = RecentRows(16), RecentRows(16)  # radius 0.5 and 2.0, no memo
    other_size = RecentRows(8)  # holds other rows: never shares a search
    pool = rng.standard_normal((6, 16))
    for _ in range(60):
        n = int(rng.integers(2, 7))
        fresh = rng.standard_normal((n, 16))
        z = np.where(rng.random((n, 1)) < 0.5, pool[rng.integers(0, 6, n)], fresh)
        z = z.astype(np.float16).astype(np.float32)
        labels = rng.integers(0, 3, n)
        memo: dict[Any, Any] = {}
        before = len(calls)
        got_small = first.check_and_add(z, labels, 0.5, memo)
        searched = len(calls) - before
        got_large = second.check_and_add(z, labels, 2.0, memo)
        assert len(calls) - before == searched  # the second ring reused the first one's search
        other_size.check_and_add(z, labels, 0.5, memo)
        assert len(calls) - before > searched
        for got, want in (
            (got_small, alone_small.check_and_add(z, labels, 0.5)),
            (got_large, alone_large.check_and_add(z, labels, 2.0)),
        ):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
        assert first.token is second.token
        assert first.rows.tobytes() == second.rows.tobytes() == alone_small.rows.tobytes()
    assert first.fill == 16  # the rings filled and wrapped


def test_one_row_labels_and_margins_equal_the_batch_ones() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.5), 500)
    probs[::7, 3] = probs[::7].max(axis=1)  # ties for the top class
    probs[::11, :] = 0.1  # all equal
    probs[5::13, 2] = probs[5::13].max(axis=1) * 0.999999  # margins below float32 resolution
    for dtype in (np.float32, np.float64):
        batch = probs.astype(dtype)
        labels, margins = as_labels_and_margins(batch, batch.shape[0])
        assert margins is not None
        for i in range(batch.shape[0]):
            one_label, one_margin = as_labels_and_margins(batch[i : i + 1], 1)
            assert one_margin is not None
            assert one_label.dtype == np.int64
            assert one_margin.dtype == np.float32
            assert one_label[0] == labels[i]
            assert one_margin.tobytes() == margins[i : i + 1].tobytes()
    nan_row = np.array([[0.2, np.nan, 0.9]], np.float32)  # numpy's NaN rules, as in batches
    two = as_labels_and_margins(np.concatenate([nan_row, nan_row]), 2)
    one = as_labels_and_margins(nan_row, 1)
    assert one[0][0] == two[0][0]
    assert one[1] is not None
    assert two[1] is not None
    assert np.isnan(one[1][0])
    assert np.isnan(two[1][0])


def test_finiteness_check_accepts_extreme_values_and_refuses_non_finite() -> None:
    big = np.full((1, 784), np.finfo(np.float32).max, np.float32)
    assert as_batch(big).shape == (1, 784)  # the float64 sum cannot overflow
    assert as_batch(-big).shape == (1, 784)
    for bad in (np.inf, -np.inf, np.nan):
        x = np.zeros((3, 8), np.float32)
        x[1, 2] = bad
        with pytest.raises(DetectorError, match="finite"):
            as_batch(x)
    mixed = np.zeros((1, 8), np.float32)
    mixed[0, :2] = (np.inf, -np.inf)  # inf - inf: still refused
    with pytest.raises(DetectorError, match="finite"):
        as_batch(mixed)


def test_suite_refuses_malformed_requests_before_any_state_changes(reference, held_out) -> None:
    suite = _small().fit(*reference)
    x, p = held_out
    with pytest.raises(DetectorError, match="features"):
        suite.observe("a", x[:1, :10], p[:1], 0.0)
    with pytest.raises(DetectorError, match="rows"):
        suite.observe("a", x[:1], p[:2], 0.0)
    assert all(d.clients() == () for d in suite.detectors)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_statistics_of_a_row_alone_equal_its_batch_values(seed: int) -> None:
    """Real-valued inputs of mixed magnitudes: the neighbour search of one row gives, bit for
    bit, what the same row gets inside a batch (with the reference laid out as ``z.T`` it did
    not: a one-row product and a batch product summed in different orders)."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(0.5, 0.2, (600, 24)).astype(np.float32)
    detector = OutOfDistributionDetector(n_components=12).fit(reference)
    x = (rng.normal(0.5, 0.3, (40, 24)) * 2.0 ** rng.integers(-3, 4, (40, 1))).astype(np.float32)
    batch = detector._statistics(x)
    for i in range(x.shape[0]):
        one = QueryBatch(x[i : i + 1], np.zeros(1, np.int64), None)
        assert np.array_equal(np.array(detector._statistics_one(one), np.float32), batch[i])


def test_default_suite_rings_hold_the_same_rows(reference, held_out) -> None:
    """The default near-duplicate rings (out-of-distribution, boundary, volume) keep as many
    rows of the same stream, so a one-row request searches them once for all three."""
    suite = _default().fit(*reference)
    x, p = held_out
    for i in range(300):
        suite.observe("a", x[i : i + 1], p[i : i + 1], float(i))
    rings = [suite.detector(n).states_["a"].recent for n in ("ood", "boundary", "volume")]
    assert rings[0].rows.shape[0] == 256
    assert rings[0].token is rings[1].token is rings[2].token
    assert rings[0].rows.tobytes() == rings[1].rows.tobytes() == rings[2].rows.tobytes()
