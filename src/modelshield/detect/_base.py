"""Shared pieces of every detector: the observation record, the protocol, state encoding."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from modelshield.errors import ShieldError

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.integer[Any]]

STATE_FORMAT_VERSION = 1

S = TypeVar("S")


class DetectorError(ShieldError):
    """A detector is used before ``fit``, is given malformed arrays, or cannot read a state."""


@dataclass(frozen=True)
class Observation:
    """What one detector concluded about one client after one batch of queries.

    ``score`` is oriented so that higher is more suspicious and ``flagged`` is
    ``score >= threshold`` once the detector has seen enough queries to decide (``ready``).
    ``queries_seen`` counts every row this client sent to this detector so far. ``details``
    holds named secondary statistics for the audit log (never shown to the client).
    """

    detector: str
    client: str
    score: float
    threshold: float
    flagged: bool
    queries_seen: int
    ready: bool = True
    details: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record for the audit log."""
        return {
            "detector": self.detector,
            "client": self.client,
            "score": self.score,
            "threshold": self.threshold,
            "flagged": self.flagged,
            "queries_seen": self.queries_seen,
            "ready": self.ready,
            "details": dict(self.details),
        }


@runtime_checkable
class Detector(Protocol):
    """An extraction detector following the estimator contract (STYLE.md 7).

    ``fit`` learns from reference (training-like) data and returns ``self``; ``observe`` updates
    the state of one client with one batch and returns an :class:`Observation`. Per-client state
    is bounded (:meth:`max_state_bytes`) and serialisable (:meth:`state_dict` /
    :meth:`load_state_dict`) so that it can live in any state store. ``threshold`` is the
    score at which it flags (calibrate it on honest traffic: :func:`calibrate_threshold`).
    """

    name: str
    threshold: float

    def fit(self, reference_inputs: FloatArray, reference_outputs: Any = None) -> Detector: ...

    def observe(self, client: str, inputs: FloatArray, outputs: Any, now: float) -> Observation: ...

    def peek(self, client: str) -> Observation: ...

    def state_dict(self, client: str) -> bytes: ...

    def load_state_dict(self, client: str, data: bytes) -> None: ...

    def forget(self, client: str) -> None: ...

    def clients(self) -> tuple[str, ...]: ...

    def state_bytes(self, client: str) -> int: ...

    def max_state_bytes(self) -> int: ...


def as_batch(inputs: Any, n_features: int | None = None) -> npt.NDArray[np.float32]:
    """``inputs`` as a C-contiguous float32 ``(n, d)`` batch (images are flattened)."""
    x = np.asarray(inputs)
    if x.ndim == 0 or x.dtype.kind not in "fiu":
        raise DetectorError("inputs must be a real-valued array of shape (n, ...)")
    x = np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float32)
    if n_features is not None and x.shape[1] != n_features:
        raise DetectorError(f"inputs have {x.shape[1]} features, the detector expects {n_features}")
    if not np.all(np.isfinite(x)):
        raise DetectorError("inputs must be finite")
    return x


def as_labels_and_margins(
    outputs: Any, n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32] | None]:
    """Predicted labels and top-1 margins from probabilities ``(n, K)``, or labels ``(n,)``.

    When only labels are given the margins are ``None``.
    """
    y = np.asarray(outputs)
    if y.shape[:1] != (n,):
        raise DetectorError(f"outputs must have {n} rows, got shape {y.shape}")
    if y.ndim == 2:
        probs = y.astype(np.float32, copy=False)
        if probs.shape[1] < 2:
            raise DetectorError("probability outputs need at least two classes")
        top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
        margins = (top2[:, 1] - top2[:, 0]).astype(np.float32)
        return np.argmax(probs, axis=1).astype(np.int64), margins
    if y.ndim == 1 and y.dtype.kind in "iu":
        return y.astype(np.int64), None
    raise DetectorError("outputs must be probabilities (n, K) or integer labels (n,)")


def encode_state(detector: str, arrays: Mapping[str, npt.NDArray[Any]], meta: Any) -> bytes:
    """Arrays plus JSON metadata as ``.npz`` bytes (no pickle anywhere)."""
    buffer = io.BytesIO()
    header = json.dumps(
        {"detector": detector, "version": STATE_FORMAT_VERSION, "meta": meta}, sort_keys=True
    ).encode()
    payload: dict[str, Any] = {f"a_{k}": np.asarray(v) for k, v in arrays.items()}
    payload["__header__"] = np.frombuffer(header, dtype=np.uint8)
    np.savez(buffer, **payload)
    return buffer.getvalue()


def decode_state(detector: str, data: bytes) -> tuple[dict[str, npt.NDArray[Any]], Any]:
    """Inverse of :func:`encode_state`; raises :class:`DetectorError` on anything unexpected."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            header = json.loads(bytes(npz["__header__"]).decode())
            arrays = {k[2:]: npz[k] for k in npz.files if k.startswith("a_")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DetectorError(f"cannot read {detector} state: {exc}") from None
    if not isinstance(header, dict) or header.get("detector") != detector:
        raise DetectorError(f"state does not belong to detector {detector!r}")
    if header.get("version") != STATE_FORMAT_VERSION:
        raise DetectorError(f"unsupported {detector} state version {header.get('version')!r}")
    return arrays, header.get("meta")


class RunningWindow:
    """A fixed-size ring of float32 values with an O(1) running sum (bounded memory)."""

    __slots__ = ("count", "pos", "total", "values")

    def __init__(self, size: int) -> None:
        self.values = np.zeros(size, dtype=np.float32)
        self.pos = 0
        self.count = 0
        self.total = 0.0

    def extend(self, new: npt.NDArray[Any]) -> None:
        size = self.values.shape[0]
        chunk = np.asarray(new, dtype=np.float32).reshape(-1)[-size:]
        k = chunk.shape[0]
        if k == 0:
            return
        idx = (self.pos + np.arange(k)) % size
        self.values[idx] = chunk
        self.pos = int((self.pos + k) % size)
        self.count = min(size, self.count + k)
        # O(size) with size in the hundreds: cheaper to re-sum than to track float drift
        self.total = float(self.values.sum(dtype=np.float64))

    def mean(self) -> float:
        return 0.0 if self.count == 0 else self.total / self.count

    def pack(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        return {
            f"{prefix}values": self.values,
            f"{prefix}scalars": np.array([self.pos, self.count], dtype=np.int64),
            f"{prefix}total": np.array([self.total], dtype=np.float64),
        }

    @classmethod
    def unpack(cls, arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> RunningWindow:
        values = np.asarray(arrays[f"{prefix}values"], dtype=np.float32)
        window = cls(values.shape[0])
        window.values = values.copy()
        window.pos, window.count = (int(v) for v in arrays[f"{prefix}scalars"])
        window.total = float(arrays[f"{prefix}total"][0])
        return window

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes) + 24


class StatefulDetector(Generic[S]):
    """Per-client bookkeeping shared by the detectors (``states_`` holds one state per client).

    Subclasses set ``name``, store parameters in ``__init__``, learn in ``fit`` (ending with
    ``self._fitted()``) and implement the ``_new_state``, ``_update``, ``_observation``,
    ``_pack``, ``_unpack``, ``_nbytes`` and ``max_state_bytes`` hooks.
    """

    name: str = "detector"
    states_: dict[str, S]

    def _fitted(self) -> None:
        self.states_ = {}

    def _require_fitted(self) -> None:
        if not hasattr(self, "states_"):
            raise DetectorError(f"{self.name} detector is not fitted: call fit(...) first")

    def observe(self, client: str, inputs: FloatArray, outputs: Any, now: float) -> Observation:
        """Update ``client``'s state with one batch and return the detector's current view."""
        self._require_fitted()
        state = self.states_.get(client)
        if state is None:
            state = self.states_[client] = self._new_state()
        self._update(state, inputs, outputs, float(now))
        return self._observation(client, state)

    def peek(self, client: str) -> Observation:
        """The current view of ``client`` without updating anything."""
        self._require_fitted()
        state = self.states_.get(client)
        return self._observation(client, state if state is not None else self._new_state())

    def state_dict(self, client: str) -> bytes:
        """``client``'s state as bytes for a state store (``.npz``, no pickle)."""
        self._require_fitted()
        state = self.states_.get(client)
        arrays, meta = self._pack(state if state is not None else self._new_state())
        return encode_state(self.name, arrays, meta)

    def load_state_dict(self, client: str, data: bytes) -> None:
        """Replace ``client``'s state with one produced by :meth:`state_dict`."""
        self._require_fitted()
        arrays, meta = decode_state(self.name, data)
        try:
            self.states_[client] = self._unpack(arrays, meta)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DetectorError(f"cannot read {self.name} state: {exc!r}") from None

    def forget(self, client: str) -> None:
        """Drop ``client``'s state (for example when an admin clears a flag)."""
        self._require_fitted()
        self.states_.pop(client, None)

    def clients(self) -> tuple[str, ...]:
        """Clients with state held in memory."""
        self._require_fitted()
        return tuple(self.states_)

    def state_bytes(self, client: str) -> int:
        """Bytes of array data held for ``client`` now (never above :meth:`max_state_bytes`)."""
        self._require_fitted()
        state = self.states_.get(client)
        return 0 if state is None else self._nbytes(state)

    # hooks -------------------------------------------------------------------------------
    def _new_state(self) -> S:
        raise NotImplementedError

    def _update(self, state: S, inputs: FloatArray, outputs: Any, now: float) -> None:
        raise NotImplementedError

    def _observation(self, client: str, state: S) -> Observation:
        raise NotImplementedError

    def _pack(self, state: S) -> tuple[dict[str, npt.NDArray[Any]], Any]:
        raise NotImplementedError

    def _unpack(self, arrays: Mapping[str, npt.NDArray[Any]], meta: Any) -> S:
        raise NotImplementedError

    def _nbytes(self, state: S) -> int:
        raise NotImplementedError

    def max_state_bytes(self) -> int:
        """Upper bound of :meth:`state_bytes` for any client."""
        raise NotImplementedError


def sq_distances(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    x_sq: npt.NDArray[np.float32],
    y_sq: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """Squared L2 distances ``(len(x), len(y))`` with one matrix product (BLAS), clipped at 0."""
    d2 = x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)
    np.maximum(d2, 0.0, out=d2)
    return d2


DEDUP_DIM = 16


def random_projection(n_features: int, random_state: int) -> npt.NDArray[np.float32]:
    """A seeded Gaussian ``(n_features, 16)`` projection (Johnson-Lindenstrauss) for dedup."""
    rng = np.random.default_rng(random_state)
    projection: npt.NDArray[np.float32] = (
        rng.standard_normal((n_features, DEDUP_DIM)) / np.sqrt(DEDUP_DIM)
    ).astype(np.float32)
    return projection


def duplicate_radius(
    x: npt.NDArray[np.float32], projection: npt.NDArray[np.float32], fraction: float
) -> float:
    """``fraction`` of the median nearest-neighbour distance of ``x`` (at most 1,000 rows) in
    the projection: inputs closer than this to a recent query count as near-duplicates."""
    z = x[:1000] @ projection
    z_sq = np.einsum("ij,ij->i", z, z)
    d2 = sq_distances(z, z, z_sq, z_sq)
    np.fill_diagonal(d2, np.inf)
    return float(fraction * np.median(np.sqrt(d2.min(axis=1))))


class RecentRows:
    """The last ``size`` queries of a client, projected to 16 dimensions (float16), with their
    predicted labels: finds near-duplicates of earlier queries (bounded memory)."""

    __slots__ = ("fill", "labels", "pos", "rows")

    def __init__(self, size: int) -> None:
        self.rows = np.zeros((size, DEDUP_DIM), np.float16)
        self.labels = np.full(size, -1, np.int64)
        self.fill = 0
        self.pos = 0

    def check_and_add(
        self, z: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], radius: float
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """For each row of the batch ``z``: is it a near-duplicate of a recent query (or of an
        earlier row of the batch), and is that nearest duplicate's label different?"""
        n = z.shape[0]
        z_sq = np.einsum("ij,ij->i", z, z)
        if n > 1:
            pairs = sq_distances(z, z, z_sq, z_sq)
            pairs[np.triu_indices(n)] = np.inf  # only earlier rows of the batch
        else:  # one-row requests are the common case: skip the empty pair matrix
            pairs = np.full((1, 1), np.inf, np.float32)
        if self.fill:
            ring = self.rows[: self.fill].astype(np.float32)
            to_ring = sq_distances(z, ring, z_sq, np.einsum("ij,ij->i", ring, ring))
            d2 = np.concatenate([to_ring, pairs], axis=1)
            known = np.concatenate([self.labels[: self.fill], labels])
        else:
            d2, known = pairs, labels
        nearest = d2.argmin(axis=1)
        dup = d2[np.arange(n), nearest] <= radius * radius
        flip = dup & (known[nearest] != labels)
        keep = min(n, self.rows.shape[0])
        idx = (self.pos + np.arange(keep)) % self.rows.shape[0]
        self.rows[idx] = z[-keep:]
        self.labels[idx] = labels[-keep:]
        self.pos = int((self.pos + keep) % self.rows.shape[0])
        self.fill = min(self.rows.shape[0], self.fill + keep)
        return dup, flip

    def pack(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        return {
            f"{prefix}rows": self.rows,
            f"{prefix}labels": self.labels,
            f"{prefix}scalars": np.array([self.fill, self.pos], dtype=np.int64),
        }

    @classmethod
    def unpack(cls, arrays: Mapping[str, npt.NDArray[Any]], prefix: str, size: int) -> RecentRows:
        recent = cls(size)
        rows = np.asarray(arrays[f"{prefix}rows"])
        labels = np.asarray(arrays[f"{prefix}labels"])
        if rows.shape != recent.rows.shape or labels.shape != recent.labels.shape:
            raise ValueError("recent rows have the wrong shape")
        recent.rows = rows.astype(np.float16)
        recent.labels = labels.astype(np.int64)
        recent.fill, recent.pos = (int(v) for v in arrays[f"{prefix}scalars"])
        return recent

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.labels.nbytes) + 16
