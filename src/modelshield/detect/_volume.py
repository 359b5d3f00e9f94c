"""Volume signals: rows per time window against the tier's norm, and near-duplicates."""

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
    duplicate_radius,
    random_projection,
)


@dataclass
class _VolumeState:
    counts: npt.NDArray[np.int64]
    slots: npt.NDArray[np.int64]
    recent: RecentRows
    dups: RunningWindow
    flips: RunningWindow
    n_queries: int = 0
    rows_in_window: int = 0
    tier: str = field(default="")
    # the time slot of the last update, not serialised: while requests stay in it, the rows
    # in the window grow by the rows of each request and need no re-count
    last_slot: int | None = None


class VolumeDetector(StatefulDetector[_VolumeState]):
    """Rows per sliding time window against the norm of the client's tier, plus near-duplicates.

    The window of ``window_seconds`` is kept as ``n_buckets`` counters (bounded memory). The
    score is ``rows in the window / rows_per_window`` of the client's tier (set with
    :meth:`set_tier`; ``tier_rows_per_window`` maps tier names to norms, ``rows_per_window`` is
    the default), flagged at ``threshold`` (1.0 = the norm). Reported alongside, never part of
    the score: the share of recent queries that nearly duplicate one of the client's last
    ``recent`` queries (distance below ``duplicate_fraction`` of the reference's median
    nearest-neighbour distance, in a seeded 16-dimensional random projection, float16), and
    the share that do so *with a different predicted label* (a line search straddling the boundary,
    Tramer et al., USENIX Security 2016). Honest clients that re-send a small pool have many
    near-duplicates but few label flips.
    """

    name = "volume"

    def __init__(
        self,
        *,
        rows_per_window: int = 10_000,
        tier_rows_per_window: Mapping[str, int] | None = None,
        window_seconds: float = 3600.0,
        n_buckets: int = 60,
        threshold: float = 1.0,
        recent: int = 256,
        duplicate_fraction: float = 0.25,
        random_state: int = 0,
    ) -> None:
        self.rows_per_window = rows_per_window
        self.tier_rows_per_window = tier_rows_per_window
        self.window_seconds = window_seconds
        self.n_buckets = n_buckets
        self.threshold = threshold
        self.recent = recent
        self.duplicate_fraction = duplicate_fraction
        self.random_state = random_state

    def fit(self, reference_inputs: FloatArray, reference_outputs: Any = None) -> VolumeDetector:
        """Learn the projection and the near-duplicate radius from reference inputs."""
        if self.rows_per_window < 1 or self.window_seconds <= 0 or self.n_buckets < 1:
            raise DetectorError("rows_per_window, window_seconds and n_buckets must be positive")
        if self.recent < 1:
            raise DetectorError("recent must be positive")
        x = as_batch(reference_inputs)
        self.n_features_in_ = int(x.shape[1])
        self.projection_ = random_projection(self.n_features_in_, self.random_state)
        self.radius_ = duplicate_radius(x, self.projection_, self.duplicate_fraction)
        self._fitted()
        return self

    def set_tier(self, client: str, tier: str) -> None:
        """Measure ``client`` against the norm of ``tier`` from now on."""
        self._require_fitted()
        state = self.states_.get(client)
        if state is None:
            state = self.states_[client] = self._new_state()
        state.tier = tier

    def _norm(self, tier: str) -> int:
        norms = self.tier_rows_per_window or {}
        return int(norms.get(tier, self.rows_per_window))

    def _new_state(self) -> _VolumeState:
        return _VolumeState(
            counts=np.zeros(self.n_buckets, np.int64),
            slots=np.full(self.n_buckets, -1, np.int64),
            recent=RecentRows(self.recent),
            dups=RunningWindow(64),
            flips=RunningWindow(64),
        )

    def _update(self, state: _VolumeState, batch: QueryBatch, now: float) -> None:
        n = batch.n
        width = self.window_seconds / self.n_buckets
        slot = math.floor(now / width)
        bucket = slot % self.n_buckets
        recount = state.last_slot != slot
        if int(state.slots[bucket]) != slot:
            state.slots[bucket] = slot
            state.counts[bucket] = 0
            recount = True
        state.counts[bucket] += n
        if recount:
            live = state.slots > slot - self.n_buckets
            state.rows_in_window = int(state.counts[live].sum())
        else:  # the same live buckets as at the last update, one of them grew by n
            state.rows_in_window += n
        state.last_slot = slot
        state.n_queries += n
        if batch.n == 1 and self._fast_single_row:
            row = batch.project_one(self.projection_)
            dup_one, flip_one = state.recent.check_and_add_one(
                row, int(batch.labels[0]), self.radius_
            )
            state.dups.push_flag(dup_one)
            state.flips.push_flag(flip_one)
        else:
            z = batch.project(self.projection_)
            dup, flip = state.recent.check_and_add(
                z, batch.labels, self.radius_, batch.ring_memo(self.projection_)
            )
            state.dups.extend(dup.astype(np.float32))
            state.flips.extend(flip.astype(np.float32))

    def _observation(self, client: str, state: _VolumeState) -> Observation:
        score = state.rows_in_window / self._norm(state.tier)
        return Observation(
            detector=self.name,
            client=client,
            score=score,
            threshold=self.threshold,
            flagged=score >= self.threshold,
            queries_seen=state.n_queries,
            ready=True,
            details=(
                ("rows_in_window", float(state.rows_in_window)),
                ("near_duplicate_share", state.dups.mean()),
                ("near_duplicate_label_flip_share", state.flips.mean()),
            ),
        )

    def _pack(self, state: _VolumeState) -> tuple[dict[str, npt.NDArray[Any]], Any]:
        arrays: dict[str, npt.NDArray[Any]] = {
            "counts": state.counts,
            "slots": state.slots,
            **state.recent.pack("r_"),
            **state.dups.pack("d_"),
            **state.flips.pack("f_"),
        }
        meta: dict[str, Any] = {
            "scalars": [state.n_queries, state.rows_in_window],
            "tier": state.tier,
        }
        return arrays, meta

    def _unpack(self, arrays: Mapping[str, npt.NDArray[Any]], meta: Any) -> _VolumeState:
        state = self._new_state()
        for name in ("counts", "slots"):
            value = np.asarray(arrays[name])
            current = getattr(state, name)
            if value.shape != current.shape:
                raise ValueError(f"{name} has the wrong shape")
            setattr(state, name, value.astype(current.dtype))
        state.recent = RecentRows.unpack(arrays, "r_", self.recent)
        state.dups = RunningWindow.unpack(arrays, "d_")
        state.flips = RunningWindow.unpack(arrays, "f_")
        state.n_queries, state.rows_in_window = (int(v) for v in meta["scalars"])
        state.tier = str(meta["tier"])
        return state

    def _nbytes(self, state: _VolumeState) -> int:
        return (
            int(state.counts.nbytes + state.slots.nbytes)
            + state.recent.nbytes
            + state.dups.nbytes
            + state.flips.nbytes
            + 64
        )

    def max_state_bytes(self) -> int:
        """Bucket counters, the ring of recent projected rows and two 64-value windows."""
        return (
            self.n_buckets * 16
            + self.recent * RecentRows.bytes_per_row
            + 16
            + 2 * (64 * 4 + 24)
            + 64
        )
