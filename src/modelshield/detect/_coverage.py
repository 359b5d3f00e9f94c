"""Feature-space coverage per client, after the extraction monitor of Kesarwani et al. 2018."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
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
    as_labels_and_margins,
)

#: Batches of at most this many rows find their leaves row by row (see ``_leaves``).
_FEW_ROWS = 32
#: The honest expectation and spread are tabulated for fewer queries than this (two float64
#: values per count, shared by every client: 1 MiB at most), grown by this many counts at a time.
_TABLE_LIMIT = 1 << 16
_TABLE_CHUNK = 1024


@dataclass
class _CoverageState:
    visited: npt.NDArray[np.bool_]
    n_queries: int = 0


class CoverageDetector(StatefulDetector[_CoverageState]):
    """How fast a client covers the feature space, compared with honest i.i.d. traffic.

    Kesarwani, Mukhoty, Arya, Mehta, "Model Extraction Warning in MLaaS Paradigm", ACSAC 2018:
    the monitor partitions the input space with a decision tree fit on the model's training
    data and labels and tracks which regions (leaves) a user's queries have covered; an
    extraction attack explores the space much faster than a user with a task. Here the tree
    has at most ``max_leaves`` leaves; each client keeps one bit per leaf. The score is
    ``(covered - expected) / sd``, where ``expected = sum_l q_l``, ``q_l = 1 - (1 - p_l)^n``,
    is the number of leaves an honest client drawing ``n`` queries i.i.d. from the reference
    distribution covers on average (``p_l`` is the share of reference rows in leaf ``l``) and
    ``sd = sqrt(sum_l q_l (1 - q_l))``. Honest clients with a narrow task or a small pool stay
    at or below 0; attackers that pick queries for diversity
    (coverage-driven active learning, k-center selection) or spread evenly over the space rise
    above it. Because the state is a bitset, states of several clients merge with a logical
    OR: :class:`DetectorSuite` observes a tenant's keys also under the tenant (colluding
    clients, Sybil accounts).
    """

    name = "coverage"

    def __init__(
        self,
        *,
        threshold: float = 4.0,
        max_leaves: int = 256,
        min_queries: int = 50,
        random_state: int = 0,
    ) -> None:
        self.threshold = threshold
        self.max_leaves = max_leaves
        self.min_queries = min_queries
        self.random_state = random_state

    def fit(self, reference_inputs: FloatArray, reference_outputs: Any = None) -> CoverageDetector:
        """Fit the partition tree on reference inputs labelled by the model's outputs."""
        from sklearn.tree import DecisionTreeClassifier

        if reference_outputs is None:
            raise DetectorError("the coverage detector needs the model's outputs on the reference")
        if self.max_leaves < 2 or self.min_queries < 1:
            raise DetectorError("max_leaves must be at least 2 and min_queries positive")
        x = as_batch(reference_inputs)
        labels, _ = as_labels_and_margins(reference_outputs, x.shape[0])
        tree = DecisionTreeClassifier(
            max_leaf_nodes=self.max_leaves, random_state=self.random_state
        ).fit(x, labels)
        t = tree.tree_
        self.n_features_in_ = int(x.shape[1])
        self.left_ = t.children_left.astype(np.int64)
        self.right_ = t.children_right.astype(np.int64)
        self.feature_ = np.maximum(t.feature, 0).astype(np.int64)
        self.split_ = t.threshold.astype(np.float32)
        self.depth_ = int(t.max_depth)
        leaves = np.flatnonzero(self.left_ < 0)
        self.leaf_index_ = np.full(self.left_.shape[0], -1, np.int64)
        self.leaf_index_[leaves] = np.arange(leaves.shape[0])
        self.n_leaves_ = int(leaves.shape[0])
        counts = np.bincount(self._leaves(x), minlength=self.n_leaves_).astype(np.float64)
        self.leaf_p_ = (counts + 0.5) / (counts.sum() + 0.5 * self.n_leaves_)
        self.log1m_leaf_p_ = np.log1p(-self.leaf_p_)
        self.table_ = np.zeros((2, 0))  # (expected, sd) by number of queries, grown on demand
        # the tree as Python lists: one row descends it faster without numpy
        self.node_lists_ = (
            self.left_.tolist(),
            self.right_.tolist(),
            self.feature_.tolist(),
            self.split_.tolist(),
            self.leaf_index_.tolist(),
        )
        self._fitted()
        return self

    def _leaf_one(self, row: npt.NDArray[np.float32]) -> int:
        """:meth:`_leaves` of one row ``(d,)``: float32 values compared as exact Python floats."""
        left, right, feature, split, leaf_index = self.node_lists_
        node = 0
        while left[node] >= 0:
            node = left[node] if row.item(feature[node]) <= split[node] else right[node]
        return int(leaf_index[node])

    def _leaves(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        if x.shape[0] <= _FEW_ROWS and self._fast_single_row:
            # a few rows: descending row by row costs less than a numpy step per tree level
            return np.array([self._leaf_one(row) for row in x], np.int64)
        # vectorised descent (one numpy step per tree level) instead of sklearn's per-call apply
        node = np.zeros(x.shape[0], np.int64)
        rows = np.arange(x.shape[0])
        for _ in range(self.depth_):
            left = self.left_[node]
            inner = left >= 0
            if not inner.any():
                break
            go_left = x[rows, self.feature_[node]] <= self.split_[node]
            node = np.where(inner, np.where(go_left, left, self.right_[node]), node)
        return self.leaf_index_[node]

    def expected_coverage(self, n: int) -> float:
        """Leaves an honest client with ``n`` i.i.d. reference-like queries covers on average."""
        self._require_fitted()
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise DetectorError(f"the number of queries must be a non-negative int, got {n!r}")
        return self._expected_and_sd(int(n))[0]

    def _expected_and_sd(self, n: int) -> tuple[float, float]:
        """``expected`` and ``sd`` for ``n`` queries: looked up below :data:`_TABLE_LIMIT`
        (every observation needs them, and they depend on ``n`` alone)."""
        if n >= _TABLE_LIMIT:
            expected, variance = self._expected_and_variance(np.array([n], np.float64))
            return float(expected[0]), math.sqrt(max(float(variance[0]), 1e-12))
        table = self.table_
        if n >= table.shape[1]:
            start = table.shape[1]
            stop = min(_TABLE_LIMIT, max(n + 1, start + _TABLE_CHUNK))
            expected, variance = self._expected_and_variance(np.arange(start, stop, dtype=float))
            chunk = np.stack([expected, np.sqrt(np.maximum(variance, 1e-12))])
            # a new array, set in one assignment: a reader never sees a half-grown table
            table = self.table_ = np.concatenate([table, chunk], axis=1)
        return table.item(0, n), table.item(1, n)

    def _expected_and_variance(
        self, counts: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        # q = -expm1(n log(1 - p_l)) = P(leaf l covered after n queries); leaf indicators are
        # negatively correlated: sum q (1 - q) bounds the variance above. Computed on
        # m = -q: IEEE rounding is symmetric in sign, so every operation on m gives exactly
        # the negation of the same operation on q (one numpy call fewer).
        m = counts[:, None] * self.log1m_leaf_p_[None, :]
        np.expm1(m, out=m)
        spread = 1.0 + m  # = 1 - q
        spread *= m  # = -(q (1 - q))
        return -np.add.reduce(m, axis=1), -np.add.reduce(spread, axis=1)

    def _new_state(self) -> _CoverageState:
        return _CoverageState(np.zeros(self.n_leaves_, np.bool_))

    def _update(self, state: _CoverageState, batch: QueryBatch, now: float) -> None:
        if batch.n == 1 and self._fast_single_row:
            state.visited[self._leaf_one(batch.x[0])] = True
        else:
            state.visited[self._leaves(batch.x)] = True
        state.n_queries += batch.n

    def merge(self, target: str, sources: tuple[str, ...]) -> Observation:
        """Set ``target``'s coverage to the union of the ``sources`` clients' coverage."""
        self._require_fitted()
        state = self._new_state()
        for source in sources:
            other = self.states_.get(source)
            if other is not None:
                state.visited |= other.visited
                state.n_queries += other.n_queries
        self.states_[target] = state
        return self._observation(target, state)

    def _observation(self, client: str, state: _CoverageState) -> Observation:
        ready = state.n_queries >= self.min_queries
        covered = int(np.count_nonzero(state.visited))
        expected, sd = self._expected_and_sd(state.n_queries) if state.n_queries else (0.0, 1.0)
        score = (covered - expected) / sd if state.n_queries else 0.0
        return Observation(
            detector=self.name,
            client=client,
            score=score,
            threshold=self.threshold,
            flagged=ready and score >= self.threshold,
            queries_seen=state.n_queries,
            ready=ready,
            details=(
                ("leaves_covered", float(covered)),
                ("leaves_expected", expected),
                ("coverage_ratio", covered / expected if expected > 0 else 0.0),
            ),
        )

    def _pack(self, state: _CoverageState) -> tuple[dict[str, npt.NDArray[Any]], Any]:
        return {"visited": np.packbits(state.visited)}, {"n_queries": state.n_queries}

    def _unpack(self, arrays: Mapping[str, npt.NDArray[Any]], meta: Any) -> _CoverageState:
        bits = np.unpackbits(np.asarray(arrays["visited"], np.uint8))
        if bits.shape[0] != -(-self.n_leaves_ // 8) * 8:
            raise ValueError("coverage bitset has the wrong size")
        return _CoverageState(bits[: self.n_leaves_].astype(np.bool_), int(meta["n_queries"]))

    def _nbytes(self, state: _CoverageState) -> int:
        return int(state.visited.nbytes) + 8

    def max_state_bytes(self) -> int:
        """One byte per leaf (one bit once serialised) plus a counter."""
        self._require_fitted()
        return self.n_leaves_ + 8
