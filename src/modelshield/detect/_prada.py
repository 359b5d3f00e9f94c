"""PRADA (Juuti, Szyller, Marchal, Asokan: "PRADA: Protecting against DNN Model Stealing
Attacks", IEEE EuroS&P 2019), per client, with incremental statistics and BLAS batching."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.detect._base import (
    DetectorError,
    FloatArray,
    Observation,
    QueryBatch,
    StatefulDetector,
    as_batch,
    sq_distances,
)


@dataclass
class _ClassSet:
    """One growing set G_c: a ring of at most ``cap`` rows plus Welford statistics of D_Gc."""

    rows: npt.NDArray[np.float32]
    sq: npt.NDArray[np.float32]
    fill: int = 0
    pos: int = 0
    n: int = 0  # number of distances ever added to D_Gc
    mean: float = 0.0
    m2: float = 0.0
    threshold: float = 0.0

    def add(self, row: npt.NDArray[np.float32], row_sq: float) -> None:
        self.rows[self.pos] = row
        self.sq[self.pos] = row_sq
        self.pos = (self.pos + 1) % self.rows.shape[0]
        self.fill = min(self.fill + 1, self.rows.shape[0])

    def add_distance(self, d: float, floor: float) -> None:
        # Welford's update replaces the paper's recomputation of mean and std over D_Gc
        self.n += 1
        delta = d - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (d - self.mean)
        std = (self.m2 / self.n) ** 0.5
        self.threshold = max(self.threshold, floor, self.mean - std)


@dataclass
class _PradaState:
    sets: dict[int, _ClassSet] = field(default_factory=dict)
    dists: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    d_pos: int = 0
    d_count: int = 0
    n_queries: int = 0
    since_test: int = 0
    w: float = 1.0
    tested: bool = False


class PradaDetector(StatefulDetector[_PradaState]):
    """PRADA: is the distribution of minimum distances between a client's queries normal?

    For each client and each predicted class ``c`` a growing set ``G_c`` is kept. A new query's
    minimum L2 distance to ``G_c`` joins the pooled distances ``D``; if it exceeds the set's
    threshold ``T_c`` the query joins ``G_c`` and ``T_c = max(T_c, mean(D_Gc) - std(D_Gc))``.
    Once ``D`` holds ``min_distances`` (100) values, the Shapiro-Wilk statistic ``W`` of ``D``
    with 3-sigma outliers removed is computed, and the client is flagged when ``W < delta``.
    The reported ``score`` is ``1 - W`` against the threshold ``1 - delta``.

    Departures from the paper, for bounded cost and memory (measured in
    ``benchmarks/detect_bench.py``): each ``G_c`` is a ring of the ``max_set_rows`` most recent
    additions; ``D`` is the ``max_distances`` most recent values (at most 5,000, Shapiro-Wilk's
    range); mean and standard deviation of ``D_Gc`` are updated incrementally (Welford); the
    test runs at the end of a batch once ``test_every`` queries came since the last one; inputs
    wider than ``projection_dim`` are first reduced with a seeded Gaussian random projection
    (Johnson-Lindenstrauss), which preserves L2 distances up to a small factor.

    ``delta`` must be calibrated on honest traffic (:func:`calibrate_threshold` on ``1 - W``):
    the paper's 0.90-0.95 flags most honest clients that re-send a small pool of inputs.
    """

    name = "prada"

    def __init__(
        self,
        *,
        delta: float = 0.9,
        min_threshold: float = 0.0,
        min_distances: int = 100,
        max_distances: int = 1000,
        max_set_rows: int = 64,
        test_every: int = 16,
        projection_dim: int = 64,
        max_classes: int = 100,
        random_state: int = 0,
    ) -> None:
        self.delta = delta
        self.min_threshold = min_threshold
        self.min_distances = min_distances
        self.max_distances = max_distances
        self.max_set_rows = max_set_rows
        self.test_every = test_every
        self.projection_dim = projection_dim
        self.max_classes = max_classes
        self.random_state = random_state

    @property
    def threshold(self) -> float:
        """The flagging threshold on the score ``1 - W``: ``1 - delta`` (setting it sets delta)."""
        return 1.0 - self.delta

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.delta = 1.0 - value

    def fit(self, reference_inputs: FloatArray, reference_outputs: Any = None) -> PradaDetector:
        """Learn the input width (and the projection); PRADA needs no reference data otherwise."""
        if not 3 <= self.min_distances <= self.max_distances <= 5000:
            raise DetectorError("need 3 <= min_distances <= max_distances <= 5000")
        if self.max_set_rows < 1 or self.test_every < 1 or self.projection_dim < 1:
            raise DetectorError("max_set_rows, test_every and projection_dim must be positive")
        x = as_batch(reference_inputs)
        self.n_features_in_ = int(x.shape[1])
        if self.n_features_in_ > self.projection_dim:
            rng = np.random.default_rng(self.random_state)
            self.projection_: npt.NDArray[np.float32] | None = (
                rng.standard_normal((self.n_features_in_, self.projection_dim))
                / np.sqrt(self.projection_dim)
            ).astype(np.float32)
        else:
            self.projection_ = None
        if reference_outputs is not None:
            y = np.asarray(reference_outputs)
            self.n_classes_ = int(y.shape[1]) if y.ndim == 2 else int(np.unique(y).shape[0])
        else:
            self.n_classes_ = self.max_classes
        self.dim_ = self.projection_dim if self.projection_ is not None else self.n_features_in_
        self._fitted()
        return self

    def _new_state(self) -> _PradaState:
        return _PradaState(dists=np.zeros(self.max_distances, np.float32))

    def _class_set(self, state: _PradaState, c: int) -> _ClassSet | None:
        g = state.sets.get(c)
        if g is None:
            if len(state.sets) >= self.n_classes_:
                return None  # more classes than fitted: memory stays bounded, these go unseen
            g = state.sets[c] = _ClassSet(
                rows=np.zeros((self.max_set_rows, self.dim_), np.float32),
                sq=np.zeros(self.max_set_rows, np.float32),
            )
        return g

    def _update(self, state: _PradaState, batch: QueryBatch, now: float) -> None:
        if batch.n == 1 and self._fast_single_row:
            self._update_one(state, batch)
            return
        labels = batch.labels
        x = batch.project(self.projection_) if self.projection_ is not None else batch.x
        x_sq = np.einsum("ij,ij->i", x, x)
        new_d: list[float] = []
        for c in np.unique(labels).tolist():
            idx = np.flatnonzero(labels == c)
            g = self._class_set(state, c)
            if g is None:
                continue
            xc, xc_sq = x[idx], x_sq[idx]
            # one GEMM against the set as it was before the batch, one for pairs in the batch
            to_set = (
                sq_distances(xc, g.rows[: g.fill], xc_sq, g.sq[: g.fill]).min(axis=1)
                if g.fill
                else np.full(len(idx), np.inf, np.float32)
            )
            pairs = sq_distances(xc, xc, xc_sq, xc_sq) if len(idx) > 1 else None
            added: list[int] = []
            for i in range(len(idx)):
                d2 = float(to_set[i])
                if added and pairs is not None:
                    d2 = min(d2, float(pairs[i, added].min()))
                if not math.isfinite(d2):  # first query of this class: G_c = {x}
                    g.add(xc[i], float(xc_sq[i]))
                    added.append(i)
                    continue
                d = d2**0.5
                new_d.append(d)
                if d > g.threshold:
                    g.add(xc[i], float(xc_sq[i]))
                    added.append(i)
                    g.add_distance(d, self.min_threshold)
        state.n_queries += x.shape[0]
        state.since_test += x.shape[0]
        if new_d:
            values = np.asarray(new_d, np.float32)[-self.max_distances :]
            k = values.shape[0]
            pos = (state.d_pos + np.arange(k)) % self.max_distances
            state.dists[pos] = values
            state.d_pos = int((state.d_pos + k) % self.max_distances)
            state.d_count = min(self.max_distances, state.d_count + len(new_d))
        self._maybe_test(state)

    def _update_one(self, state: _PradaState, batch: QueryBatch) -> None:
        """:meth:`_update` for one row: the same float32 operations, without the batch loop."""
        state.n_queries += 1
        state.since_test += 1
        g = self._class_set(state, int(batch.labels[0]))
        if g is not None:
            if self.projection_ is not None:
                x = batch.project(self.projection_)
                x_sq = float(np.einsum("ij,ij->i", x, x)[0])
            else:
                x, x_sq = batch.x, float(batch.row_sq()[0])
            d2 = math.inf
            if g.fill:
                # sq_distances' float32 operations in its order; clipping at 0 after the min
                # x_sq is a float32 value: numpy adds it to the float32 set as float32
                to_set = (x_sq + g.sq[: g.fill]) - 2.0 * (x @ g.rows[: g.fill].T)[0]
                d2 = to_set.item(to_set.argmin())  # the min (NaN first), cheaper
            if not math.isfinite(d2):  # first query of this class: G_c = {x}
                g.add(x[0], x_sq)
            else:
                d = max(d2, 0.0) ** 0.5
                if d > g.threshold:
                    g.add(x[0], x_sq)
                    g.add_distance(d, self.min_threshold)
                state.dists[state.d_pos] = d
                state.d_pos = (state.d_pos + 1) % self.max_distances
                if state.d_count < self.max_distances:
                    state.d_count += 1
        self._maybe_test(state)

    def _maybe_test(self, state: _PradaState) -> None:
        if state.d_count >= self.min_distances and (
            state.since_test >= self.test_every or not state.tested
        ):
            state.w = self._shapiro_w(state.dists[: state.d_count])
            state.tested = True
            state.since_test = 0

    def _shapiro_w(self, d: npt.NDArray[np.float32]) -> float:
        from scipy.stats import shapiro

        mean, std = float(d.mean()), float(d.std())
        kept = d[np.abs(d - mean) <= 3.0 * std] if std > 0 else d
        if kept.shape[0] < self.min_distances or float(np.ptp(kept)) == 0.0:
            # all distances equal (the same input re-sent): no evidence of synthetic queries
            return 1.0
        # scipy's decorator for axis and NaN handling costs about twice the test itself on
        # these arrays (1-d, finite): call the function it wraps when it exposes it
        test = getattr(shapiro, "__wrapped__", shapiro)
        with warnings.catch_warnings():
            # N is capped at 5,000 by fit(); W itself is exact for any N
            warnings.simplefilter("ignore", UserWarning)
            return float(test(kept.astype(np.float64))[0])

    def _observation(self, client: str, state: _PradaState) -> Observation:
        ready = state.tested
        score = 1.0 - state.w if ready else 0.0
        threshold = self.threshold
        return Observation(
            detector=self.name,
            client=client,
            score=score,
            threshold=threshold,
            flagged=ready and score >= threshold,
            queries_seen=state.n_queries,
            ready=ready,
            details=(
                ("shapiro_w", state.w),
                ("distances", float(state.d_count)),
                ("set_rows", float(sum([g.fill for g in state.sets.values()]))),
            ),
        )

    def _pack(self, state: _PradaState) -> tuple[dict[str, npt.NDArray[Any]], Any]:
        arrays: dict[str, npt.NDArray[Any]] = {"dists": state.dists}
        sets = {}
        for c, g in state.sets.items():
            arrays[f"rows_{c}"] = g.rows[: g.fill]
            sets[str(c)] = [g.fill, g.pos, g.n, g.mean, g.m2, g.threshold]
        meta = {
            "sets": sets,
            "scalars": [state.d_pos, state.d_count, state.n_queries, state.since_test],
            "w": state.w,
            "tested": state.tested,
        }
        return arrays, meta

    def _unpack(self, arrays: Mapping[str, npt.NDArray[Any]], meta: Any) -> _PradaState:
        dists = np.asarray(arrays["dists"], np.float32)
        if dists.shape != (self.max_distances,):
            raise ValueError("distance window has the wrong size")
        state = _PradaState(dists=dists.copy())
        state.d_pos, state.d_count, state.n_queries, state.since_test = (
            int(v) for v in meta["scalars"]
        )
        state.w, state.tested = float(meta["w"]), bool(meta["tested"])
        sets = meta["sets"]
        if not isinstance(sets, dict) or len(sets) > self.n_classes_:
            raise ValueError("more growing sets than classes")  # before allocating any
        for key, (fill, pos, n, mean, m2, thr) in sets.items():
            if not 0 <= int(key) < self.n_classes_:
                raise ValueError(f"no class {key!r}")
            stored = np.asarray(arrays[f"rows_{key}"], np.float32)
            if stored.shape != (int(fill), self.dim_) or int(fill) > self.max_set_rows:
                raise ValueError("growing set has the wrong shape")
            rows = np.zeros((self.max_set_rows, self.dim_), np.float32)
            rows[: int(fill)] = stored
            g = _ClassSet(rows=rows, sq=np.einsum("ij,ij->i", rows, rows))
            g.fill, g.pos, g.n = int(fill), int(pos), int(n)
            g.mean, g.m2, g.threshold = float(mean), float(m2), float(thr)
            state.sets[int(key)] = g
        return state

    def _nbytes(self, state: _PradaState) -> int:
        per_set = self.max_set_rows * (self.dim_ + 1) * 4 + 64
        return int(state.dists.nbytes) + 64 + per_set * len(state.sets)

    def max_state_bytes(self) -> int:
        """Bytes for a client that used every class the detector tracks (``n_classes_``)."""
        self._require_fitted()
        per_set = self.max_set_rows * (self.dim_ + 1) * 4 + 64
        return self.max_distances * 4 + 64 + per_set * self.n_classes_
