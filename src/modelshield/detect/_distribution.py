"""Out-of-distribution and boundary-probing detectors over per-client running windows."""

from __future__ import annotations

import math
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
    RecentRows,
    RunningWindow,
    StatefulDetector,
    as_batch,
    as_labels_and_margins,
    duplicate_radius,
    random_projection,
)


@dataclass
class _WindowState:
    windows: list[RunningWindow]
    recent: RecentRows
    n_queries: int = 0
    n_counted: int = 0
    # the windows' values as the rows of one array (one reduction updates every total)
    block: npt.NDArray[np.float32] = field(init=False)

    def __post_init__(self) -> None:
        self.block = np.stack([w.values for w in self.windows])
        for i, w in enumerate(self.windows):
            w.values = self.block[i]


_TINY = float(np.float32(1e-12))


class _WindowDetector(StatefulDetector[_WindowState]):
    """A detector whose statistics are means over the last ``window`` distinct queries of a
    client: a query that nearly duplicates one of the client's ``recent`` last queries (same
    predicted label) adds nothing, so that re-sending a small pool weighs like sending it once.
    Ready after ``min_queries`` distinct queries."""

    window: int
    min_queries: int
    threshold: float
    recent: int
    duplicate_fraction: float
    random_state: int
    n_features_in_: int
    projection_: npt.NDArray[np.float32]
    radius_: float
    _n_windows = 1

    def _fit_common(self, x: npt.NDArray[np.float32]) -> None:
        if self.window < 1 or self.min_queries < 1 or self.recent < 1:
            raise DetectorError("window, min_queries and recent must be positive")
        self.n_features_in_ = int(x.shape[1])
        self.projection_ = random_projection(self.n_features_in_, self.random_state)
        self.radius_ = duplicate_radius(x, self.projection_, self.duplicate_fraction)

    def _new_state(self) -> _WindowState:
        return _WindowState(
            [RunningWindow(self.window) for _ in range(self._n_windows)], RecentRows(self.recent)
        )

    def _score(self, state: _WindowState) -> float:
        return state.windows[0].mean()

    def _details(self, state: _WindowState) -> tuple[tuple[str, float], ...]:
        return (("distinct_queries", float(state.n_counted)),)

    def _observation(self, client: str, state: _WindowState) -> Observation:
        ready = state.n_counted >= self.min_queries
        score = self._score(state)
        return Observation(
            detector=self.name,
            client=client,
            score=score,
            threshold=self.threshold,
            flagged=ready and score >= self.threshold,
            queries_seen=state.n_queries,
            ready=ready,
            details=self._details(state),
        )

    def _pack(self, state: _WindowState) -> tuple[dict[str, npt.NDArray[Any]], Any]:
        arrays = state.recent.pack("r_")
        for i, w in enumerate(state.windows):
            arrays.update(w.pack(f"w{i}_"))
        return arrays, {"n_queries": state.n_queries, "n_counted": state.n_counted}

    def _unpack(self, arrays: Mapping[str, npt.NDArray[Any]], meta: Any) -> _WindowState:
        windows = [RunningWindow.unpack(arrays, f"w{i}_") for i in range(self._n_windows)]
        if any(w.values.shape != (self.window,) for w in windows):
            raise ValueError("window has the wrong size")
        recent = RecentRows.unpack(arrays, "r_", self.recent)
        return _WindowState(windows, recent, int(meta["n_queries"]), int(meta["n_counted"]))

    def _nbytes(self, state: _WindowState) -> int:
        return sum(w.nbytes for w in state.windows) + state.recent.nbytes + 16

    def max_state_bytes(self) -> int:
        """The windows of float32 values, the ring of recent projected rows, counters."""
        return (
            self._n_windows * (self.window * 4 + 24) + self.recent * RecentRows.bytes_per_row + 32
        )


class OutOfDistributionDetector(_WindowDetector):
    """How far a client's queries lie from the data the model was trained on.

    Fit on reference inputs (a sample of the training data): a PCA basis of ``n_components``
    and a reference sample of at most ``max_reference`` rows. Each query gives three
    statistics: ``log nn``, its nearest-neighbour distance to the reference sample in the PCA
    space (kNN novelty, Ramaswamy, Rastogi, Shim, SIGMOD 2000); ``log res``, the norm of its
    residual off the PCA space (the subspace Q-statistic, Jackson & Mudholkar, Technometrics
    1979); ``log norm``, its own L2 norm. Each is standardised by its median and MAD on the
    reference rows held out of the basis and of the neighbour set. The client's score is the
    largest absolute mean of the three over its last ``window`` (``n``) distinct queries times
    ``sqrt(n)``, a z-statistic under honest traffic: noise
    and synthetic perturbations raise the residual, shifted natural data the neighbour
    distance, rescaled data moves the norm, and a window of honest queries averages near 0.
    Out-of-distribution queries as an extraction signal: Kariyappa & Qureshi, "Defending
    against model stealing attacks with adaptive misinformation", CVPR 2020.
    """

    name = "ood"
    _n_windows = 3

    def __init__(
        self,
        *,
        threshold: float = 5.0,
        n_components: int = 32,
        max_reference: int = 2000,
        window: int = 64,
        min_queries: int = 20,
        recent: int = 256,
        duplicate_fraction: float = 0.25,
        random_state: int = 0,
    ) -> None:
        self.threshold = threshold
        self.n_components = n_components
        self.max_reference = max_reference
        self.window = window
        self.min_queries = min_queries
        self.recent = recent
        self.duplicate_fraction = duplicate_fraction
        self.random_state = random_state

    def fit(
        self, reference_inputs: FloatArray, reference_outputs: Any = None
    ) -> OutOfDistributionDetector:
        """Learn the PCA basis, the reference sample and the reference statistics."""
        x = as_batch(reference_inputs)
        if x.shape[0] < 20 or self.n_components < 1:
            raise DetectorError("need at least 20 reference rows and n_components >= 1")
        rng = np.random.default_rng(self.random_state)
        x = x[rng.permutation(x.shape[0])[: self.max_reference]]
        self._fit_common(x)
        # the statistics are standardised on rows held out of the basis and the neighbour set,
        # as new queries are: in-sample residuals and neighbour distances are biased low
        n_held = max(5, min(500, x.shape[0] // 4))
        x, held = x[:-n_held], x[-n_held:]
        self.mean_ = x.mean(axis=0)
        centred = x - self.mean_
        k = min(self.n_components, x.shape[1], x.shape[0] - 1)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        self.components_ = np.ascontiguousarray(vt[:k].T, dtype=np.float32)
        z = (centred @ self.components_).astype(np.float32)
        self.reference_ = z
        self.reference_sq_ = np.einsum("ij,ij->i", z, z)
        # -2 z^T, contiguous: ``q @ reference_m2t_`` is exactly ``-2.0 * (q @ z.T)`` (scaling
        # by a power of two is exact) in one product, and BLAS gives a row the same values
        # alone as in a batch with this layout (with ``z.T`` it does not)
        self.reference_m2t_ = np.ascontiguousarray(-2.0 * z.T, dtype=np.float32)
        raw = self._statistics(held, standardise=False)
        self.center_ = np.median(raw, axis=0)
        mad = np.median(np.abs(raw - self.center_), axis=0) * 1.4826
        self.scale_ = np.maximum(mad, 1e-3).astype(np.float32)
        self._fitted()
        return self

    @staticmethod
    def _raw(
        x: npt.NDArray[np.float32],
        centred: npt.NDArray[np.float32],
        z: npt.NDArray[np.float32],
        nn2: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32]:
        total = np.einsum("ij,ij->i", centred, centred)
        inside = np.einsum("ij,ij->i", z, z)
        tiny = np.float32(1e-12)
        stats = np.stack(
            [
                np.log(np.maximum(nn2, tiny)) * 0.5,
                np.log(np.maximum(total - inside, tiny)) * 0.5,
                np.log(np.maximum(np.einsum("ij,ij->i", x, x), tiny)) * 0.5,
            ],
            axis=1,
        )
        out: npt.NDArray[np.float32] = stats.astype(np.float32)
        return out

    def query_statistics(self, inputs: FloatArray) -> npt.NDArray[np.float32]:
        """The standardised ``(log nn, log res, log norm)`` of each row (no client state)."""
        self._require_fitted()
        return self._statistics(as_batch(inputs, self.n_features_in_))

    def _statistics(
        self, x: npt.NDArray[np.float32], *, standardise: bool = True
    ) -> npt.NDArray[np.float32]:
        centred = x - self.mean_
        z = centred @ self.components_
        z_sq = np.einsum("ij,ij->i", z, z)
        # sq_distances(z, reference_, ...): (z_sq + ref_sq) - 2 z.ref, clipped at 0
        d2 = z_sq[:, None] + self.reference_sq_[None, :]
        d2 += z @ self.reference_m2t_
        nn2 = np.maximum(d2, 0.0, out=d2).min(axis=1)
        raw = self._raw(x, centred, z, nn2)
        if not standardise:
            return raw
        out: npt.NDArray[np.float32] = (raw - self.center_) / self.scale_
        return out

    def _update(self, state: _WindowState, batch: QueryBatch, now: float) -> None:
        if batch.n == 1 and self._fast_single_row:
            row = batch.project_one(self.projection_)
            dup_one, _ = state.recent.check_and_add_one(row, int(batch.labels[0]), self.radius_)
            state.n_queries += 1
            if not dup_one:
                RunningWindow.push_rows(state.windows, state.block, self._statistics_one(batch))
                state.n_counted += 1
            return
        x = batch.x
        dup, _ = state.recent.check_and_add(
            batch.project(self.projection_),
            batch.labels,
            self.radius_,
            batch.ring_memo(self.projection_),
        )
        state.n_queries += x.shape[0]
        fresh = x[~dup]
        if fresh.shape[0]:
            stats = self._statistics(fresh)
            for i, w in enumerate(state.windows):
                w.extend(stats[:, i])
            state.n_counted += fresh.shape[0]

    def _statistics_one(self, batch: QueryBatch) -> list[float]:
        """:meth:`_statistics` of a batch of one row: the same float32 operations on a
        3-vector instead of three columns."""
        centred = batch.x - self.mean_
        z = centred @ self.components_
        z_sq = np.einsum("ij,ij->i", z, z)[0]
        d2 = z_sq + self.reference_sq_
        d2 += (z @ self.reference_m2t_)[0]
        # sq_distances clips at 0 before the min; clipping after it is the same
        nn2 = max(float(d2[d2.argmin()]), 0.0)  # argmin is the cheaper way to the min
        residual = float(np.einsum("ij,ij->i", centred, centred)[0] - z_sq)
        norm = float(batch.row_sq()[0])
        # np.maximum(v, float32(1e-12)) on float32 values, NaN kept as it keeps it
        raw = np.array([max(v, _TINY) for v in (nn2, residual, norm)], np.float32)
        np.log(raw, out=raw)
        raw *= 0.5
        raw -= self.center_
        raw /= self.scale_
        values: list[float] = raw.tolist()
        return values

    def _score(self, state: _WindowState) -> float:
        # a z-statistic: a window of few distinct queries (a small re-sent pool) weighs less
        n = state.windows[0].count
        return max([abs(w.mean()) for w in state.windows]) * math.sqrt(n)

    def _details(self, state: _WindowState) -> tuple[tuple[str, float], ...]:
        nn, residual, norm = state.windows
        return (
            ("distinct_queries", float(state.n_counted)),
            ("mean_log_nn", nn.mean()),
            ("mean_log_residual", residual.mean()),
            ("mean_log_norm", norm.mean()),
        )


class BoundaryDetector(_WindowDetector):
    """Boundary probing: the share of a client's recent queries with a low top-1 margin.

    A query's margin is the difference between its two largest predicted probabilities.
    Attacks that look for the decision boundary (line searches, Tramer et al., USENIX Security
    2016; Jacobian-based augmentation, Papernot et al., AsiaCCS 2017; uncertainty sampling in
    active-learning extraction, Pal et al., "ActiveThief", AAAI 2020) send many queries the
    model is unsure about; natural traffic mostly gets confident answers. Each distinct query
    counts 1 when its margin is below ``low_margin``, else 0; with ``k`` ones among the last
    ``n <= window`` distinct queries the score is ``-log10 P(X >= k)`` for ``X ~ Bin(n, r)``,
    where ``r`` is the share of low margins on the reference data (at least ``base_rate``).
    It should be given the model's probabilities (the gateway passes them before output
    hardening); given labels only, a query counts 1 when it nearly duplicates a recent query
    that got a *different* label (a step across the boundary).
    """

    name = "boundary"

    def __init__(
        self,
        *,
        threshold: float = 4.0,
        low_margin: float = 0.5,
        base_rate: float = 0.05,
        window: int = 64,
        min_queries: int = 20,
        recent: int = 256,
        duplicate_fraction: float = 0.25,
        random_state: int = 0,
    ) -> None:
        self.threshold = threshold
        self.low_margin = low_margin
        self.base_rate = base_rate
        self.window = window
        self.min_queries = min_queries
        self.recent = recent
        self.duplicate_fraction = duplicate_fraction
        self.random_state = random_state

    def fit(self, reference_inputs: FloatArray, reference_outputs: Any = None) -> BoundaryDetector:
        """Learn the input width, the near-duplicate radius and the honest low-margin rate."""
        if not 0.0 < self.low_margin <= 1.0 or not 0.0 < self.base_rate < 1.0:
            raise DetectorError("low_margin must be in (0, 1] and base_rate in (0, 1)")
        x = as_batch(reference_inputs)
        self._fit_common(x)
        rate = 0.0
        if reference_outputs is not None:
            _, margins = as_labels_and_margins(reference_outputs, x.shape[0])
            rate = 0.0 if margins is None else float(np.mean(margins < self.low_margin))
        # training data gets more confident answers than new data: never below base_rate
        self.rate_ = min(max(rate, self.base_rate), 0.5)
        # scores by (n, k): at most (window + 1)**2 of them, shared by every client
        self.tail_scores_: dict[tuple[int, int], float] = {}
        self._fitted()
        return self

    def _score(self, state: _WindowState) -> float:
        window = state.windows[0]
        n = window.count
        k = round(window.total)
        if n == 0 or k == 0:
            return 0.0
        score = self.tail_scores_.get((n, k))
        if score is None:
            from scipy.special import bdtrc

            # -log10 P(at least k low-margin queries among n | honest rate): small windows
            # count less
            tail = float(bdtrc(k - 1, n, self.rate_))
            score = self.tail_scores_[(n, k)] = float(-np.log10(max(tail, 1e-300)))
        return score

    def _details(self, state: _WindowState) -> tuple[tuple[str, float], ...]:
        return (
            ("distinct_queries", float(state.n_counted)),
            ("low_margin_share", state.windows[0].mean()),
        )

    def _update(self, state: _WindowState, batch: QueryBatch, now: float) -> None:
        margins = batch.margins
        if batch.n == 1 and self._fast_single_row:
            row = batch.project_one(self.projection_)
            dup_one, flip_one = state.recent.check_and_add_one(
                row, int(batch.labels[0]), self.radius_
            )
            state.n_queries += 1
            if margins is None:
                if not dup_one or flip_one:
                    state.windows[0].push_flag(flip_one)
                    state.n_counted += 1
            elif not dup_one:
                state.windows[0].push_flag(bool(margins[0] < self.low_margin))
                state.n_counted += 1
            return
        dup, flip = state.recent.check_and_add(
            batch.project(self.projection_),
            batch.labels,
            self.radius_,
            batch.ring_memo(self.projection_),
        )
        state.n_queries += batch.n
        if margins is None:  # labels only: a step across the boundary is all there is to see
            counted = ~dup | flip
            values = flip[counted]
        else:  # re-sends of one boundary input flip by chance; the margin says enough
            counted = ~dup
            values = (margins < self.low_margin)[counted]
        state.windows[0].extend(values.astype(np.float32))
        state.n_counted += int(counted.sum())
