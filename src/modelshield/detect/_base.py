"""Shared pieces of every detector: the observation record, the protocol, state encoding."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from modelshield.errors import ShieldError

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.integer[Any]]

STATE_FORMAT_VERSION = 2

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
    if n_features is not None:
        check_width(x, n_features)
    if np.count_nonzero(np.isfinite(x)) != x.size:
        raise DetectorError("inputs must be finite")
    return x


def check_width(x: npt.NDArray[np.float32], n_features: int) -> None:
    """Refuse a batch whose width is not the ``n_features`` a detector was fitted on."""
    if x.shape[1] != n_features:
        raise DetectorError(f"inputs have {x.shape[1]} features, the detector expects {n_features}")


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
        if n == 1:
            row: list[float] = probs[0].tolist()
            if math.isfinite(sum(row)):  # else numpy's NaN ordering decides, as below
                top, second = sorted(row)[-2:][::-1]
                # float32 - float32 rounded once more to float32: the float32 difference
                return np.array([row.index(top)], np.int64), np.array([top - second], np.float32)
        top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
        margins = (top2[:, 1] - top2[:, 0]).astype(np.float32)
        return np.argmax(probs, axis=1).astype(np.int64), margins
    if y.ndim == 1 and y.dtype.kind in "iu":
        return y.astype(np.int64), None
    raise DetectorError("outputs must be probabilities (n, K) or integer labels (n,)")


class QueryBatch:
    """One request checked once (:func:`as_batch`, :func:`as_labels_and_margins`) and shared
    by every detector of a suite, with a cache of its products by fitted matrices (the
    detectors that use the same seeded projection multiply the batch by it only once)."""

    __slots__ = ("_memos", "_one_rows", "_products", "_row_sq", "labels", "margins", "n", "x")

    def __init__(
        self,
        x: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        margins: npt.NDArray[np.float32] | None,
    ) -> None:
        self.x = x
        self.labels = labels
        self.margins = margins
        self.n = int(x.shape[0])
        self._products: dict[int, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {}
        self._one_rows: dict[int, tuple[npt.NDArray[np.float32], ProjectedRow]] = {}
        self._row_sq: npt.NDArray[np.float32] | None = None
        self._memos: dict[int, tuple[npt.NDArray[np.float32], dict[Any, Any]]] = {}

    @classmethod
    def from_request(cls, inputs: Any, outputs: Any, n_features: int | None) -> QueryBatch:
        """Check ``inputs`` (width ``n_features``) and ``outputs`` as every detector does."""
        x = as_batch(inputs, n_features)
        labels, margins = as_labels_and_margins(outputs, x.shape[0])
        return cls(x, labels, margins)

    def row_sq(self) -> npt.NDArray[np.float32]:
        """The squared norm of each row of ``x`` (``einsum``, computed once)."""
        if self._row_sq is None:
            self._row_sq = np.einsum("ij,ij->i", self.x, self.x)
        return self._row_sq

    def project(self, matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``x @ matrix``, computed once per matrix object (read-only: it may be shared)."""
        hit = self._products.get(id(matrix))
        if hit is not None and hit[0] is matrix:
            return hit[1]
        product: npt.NDArray[np.float32] = self.x @ matrix
        product.flags.writeable = False
        self._products[id(matrix)] = (matrix, product)
        return product

    def ring_memo(self, matrix: npt.NDArray[np.float32]) -> dict[Any, Any]:
        """A scratch dict for :class:`RecentRows` fed this batch projected by ``matrix``."""
        hit = self._memos.get(id(matrix))
        if hit is not None and hit[0] is matrix:
            return hit[1]
        memo: dict[Any, Any] = {}
        self._memos[id(matrix)] = (matrix, memo)
        return memo

    def project_one(self, matrix: npt.NDArray[np.float32]) -> ProjectedRow:
        """The one row of the batch projected for :meth:`RecentRows.check_and_add_one`."""
        hit = self._one_rows.get(id(matrix))
        if hit is not None and hit[0] is matrix:
            return hit[1]
        row = ProjectedRow(self.x @ matrix)
        self._one_rows[id(matrix)] = (matrix, row)
        return row


class ProjectedRow:
    """One projected query ``z`` (shape ``(1, 16)``) with what :class:`RecentRows` derives
    from it: its squared norm, and the row as stored (rounded to float16) with its norm; and
    the ``memo`` of the rings it is added to (see :class:`RecentRows`)."""

    __slots__ = ("memo", "stored", "stored_sq", "z", "z_sq")

    def __init__(self, z: npt.NDArray[np.float32]) -> None:
        self.z = z
        self.memo: dict[Any, Any] = {}
        # float32 (the float16 copy widens exactly): the row as queried and as stored
        both: npt.NDArray[np.float32] = np.concatenate((z, z.astype(np.float16)), dtype=np.float32)
        # einsum gives each row the same value whether alone or stacked with others; as
        # Python floats they are still float32 values (and act as such on float32 arrays)
        self.z_sq, self.stored_sq = np.einsum("ij,ij->i", both, both).tolist()
        self.stored = both[1]


_STATE_MAGIC = b"MSDS"
_STATE_HEAD = struct.Struct("<4sI")  # magic, length of the JSON header
_STATE_ALIGN = 16
_STATE_KINDS = frozenset("biuf")  # numbers and booleans only: nothing that could hold objects
_STATE_MAX_ARRAYS = 4096


def encode_state(detector: str, arrays: Mapping[str, npt.NDArray[Any]], meta: Any) -> bytes:
    """Arrays plus JSON metadata as bytes (no pickle anywhere).

    Layout: ``b"MSDS"``, the JSON header's length (u32, little-endian), the JSON header (detector,
    format version, metadata, and each array's name, dtype, shape, offset and length), then the
    arrays' raw bytes, each starting on a 16-byte boundary. Reading it back is a few
    ``np.frombuffer`` views, about a hundred times faster than ``.npz``, which matters when a
    client's state travels through a shared state store on every observation.
    """
    entries = []
    chunks: list[bytes | memoryview] = []
    offset = 0
    for name, value in arrays.items():
        array = np.asarray(value, order="C")
        if array.dtype.kind not in _STATE_KINDS:
            raise DetectorError(f"{detector} state: array {name!r} has dtype {array.dtype}")
        pad = -offset % _STATE_ALIGN
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        entries.append([name, array.dtype.str, list(array.shape), offset, array.nbytes])
        chunks.append(array.reshape(-1).view(np.uint8).data)
        offset += array.nbytes
    header = json.dumps(
        {"detector": detector, "version": STATE_FORMAT_VERSION, "meta": meta, "arrays": entries},
        sort_keys=True,
    ).encode()
    return b"".join([_STATE_HEAD.pack(_STATE_MAGIC, len(header)), header, *chunks])


def decode_state(detector: str, data: bytes) -> tuple[dict[str, npt.NDArray[Any]], Any]:
    """Inverse of :func:`encode_state`; raises :class:`DetectorError` on anything unexpected.

    Each array returned is a fresh, writable copy.
    """
    try:
        magic, size = _STATE_HEAD.unpack_from(data)
        if magic != _STATE_MAGIC:
            raise ValueError("not a detector state")
        start = _STATE_HEAD.size + size
        if start > len(data):
            raise ValueError("truncated header")
        header = json.loads(bytes(data[_STATE_HEAD.size : start]))
    except (struct.error, ValueError, TypeError, RecursionError) as exc:
        raise DetectorError(f"cannot read {detector} state: {str(exc)[:200]}") from None
    if not isinstance(header, dict) or header.get("detector") != detector:
        raise DetectorError(f"state does not belong to detector {detector!r}")
    if header.get("version") != STATE_FORMAT_VERSION:
        raise DetectorError(f"unsupported {detector} state version {header.get('version')!r}")
    body = memoryview(data)[start:]
    arrays: dict[str, npt.NDArray[Any]] = {}
    try:
        entries = header["arrays"]
        if not isinstance(entries, list) or len(entries) > _STATE_MAX_ARRAYS:
            raise ValueError("bad array table")
        end = 0  # arrays lie in order and never overlap: a blob never yields more than its size
        for name, dtype_text, shape, offset, nbytes in entries:
            if not isinstance(dtype_text, str) or not dtype_text.isascii():
                raise ValueError(f"bad array entry {name!r}")
            dtype = np.dtype(dtype_text)
            count = math.prod(shape)
            if (
                dtype.kind not in _STATE_KINDS
                or min(shape, default=0) < 0
                or offset < end
                or nbytes != count * dtype.itemsize
                or offset + nbytes > len(body)
            ):
                raise ValueError(f"bad array entry {name!r}")
            array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
            arrays[str(name)] = array.reshape(shape).copy()
            end = offset + nbytes
    except (KeyError, TypeError, ValueError, SyntaxError, OverflowError) as exc:
        raise DetectorError(f"cannot read {detector} state: {str(exc)[:200]}") from None
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

    @staticmethod
    def push_rows(
        windows: Sequence[RunningWindow], block: npt.NDArray[np.float32], values: Sequence[float]
    ) -> None:
        """:meth:`extend` each window with one value, where the windows' values are the rows
        of ``block``: one reduction for all totals (numpy sums each row of a 2-D array as it
        sums that row alone: the totals are the same)."""
        for window, value in zip(windows, values, strict=True):
            size = window.values.shape[0]
            window.values[window.pos] = value
            window.pos = (window.pos + 1) % size
            if window.count < size:
                window.count += 1
        totals: list[float] = np.add.reduce(block, axis=1, dtype=np.float64).tolist()
        for window, total in zip(windows, totals, strict=True):
            window.total = total

    def push_flag(self, flag: bool) -> None:
        """:meth:`extend` with one 1.0 or 0.0, for a window that holds only 0/1 flags.

        The running total is then an integer below 2**24, so adding the new flag and
        subtracting the one it replaces is exact: the same total as re-summing the ring.
        """
        size = self.values.shape[0]
        value = 1.0 if flag else 0.0
        old = self.values.item(self.pos)
        self.values[self.pos] = value
        self.pos = (self.pos + 1) % size
        if self.count < size:
            self.count += 1
        self.total = self.total - old + value

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
    n_features_in_: int
    # one-row requests take a path with fewer numpy calls and the same results; the tests
    # switch it off on an instance to compare both paths
    _fast_single_row = True

    def _fitted(self) -> None:
        self.states_ = {}

    def _require_fitted(self) -> None:
        if not hasattr(self, "states_"):
            raise DetectorError(f"{self.name} detector is not fitted: call fit(...) first")

    def observe(self, client: str, inputs: FloatArray, outputs: Any, now: float) -> Observation:
        """Update ``client``'s state with one batch and return the detector's current view."""
        self._require_fitted()
        batch = QueryBatch.from_request(inputs, outputs, self.n_features_in_)
        return self.observe_batch(client, batch, now)

    def observe_batch(self, client: str, batch: QueryBatch, now: float) -> Observation:
        """:meth:`observe` with a batch already checked (by :class:`DetectorSuite`, once for
        all its detectors); its width must be :attr:`n_features_in_`."""
        self._require_fitted()
        return self._observe_fitted(client, batch, float(now))

    def _observe_fitted(self, client: str, batch: QueryBatch, now: float) -> Observation:
        # observe_batch without the fitted check (DetectorSuite checks once for all)
        state = self.states_.get(client)
        if state is None:
            state = self.states_[client] = self._new_state()
        self._update(state, batch, now)
        return self._observation(client, state)

    def peek(self, client: str) -> Observation:
        """The current view of ``client`` without updating anything."""
        self._require_fitted()
        state = self.states_.get(client)
        return self._observation(client, state if state is not None else self._new_state())

    def state_dict(self, client: str) -> bytes:
        """``client``'s state as bytes for a state store (:func:`encode_state`, no pickle)."""
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
        except Exception as exc:  # whatever a malformed state breaks: one error type
            raise DetectorError(f"cannot read {self.name} state: {type(exc).__name__}") from None

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

    def _update(self, state: S, batch: QueryBatch, now: float) -> None:
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


@functools.lru_cache(maxsize=256)
def _upper_triangle(n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``np.triu_indices(n)``, made once per ``n`` (read-only)."""
    rows, cols = np.triu_indices(n)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


@functools.lru_cache(maxsize=64)
def _as_float32(value: float) -> float:
    return float(np.float32(value))


class RecentRows:
    """The last ``size`` queries of a client, projected to 16 dimensions (float16), with their
    predicted labels: finds near-duplicates of earlier queries (bounded memory).

    The rows are stored rounded to float16 (as they are serialised) but held as float32 with
    their squared norms: converting the ring from float16 and re-taking its norms on every
    query cost more than the distances themselves.

    ``token`` names the ring's content: rings with equal tokens hold the same rows (two
    detectors of a suite that project alike and keep as many rows see the same stream). Fed
    the same batch through a memo (:meth:`QueryBatch.ring_memo`, or the one-row batch's
    :class:`ProjectedRow`), both get the same new token, and for one-row batches the second
    such ring reuses the first one's nearest-row search.
    """

    __slots__ = ("fill", "labels", "pos", "rows", "sq", "token")
    bytes_per_row = DEDUP_DIM * 4 + 4 + 8  # float32 row, its squared norm, its label

    def __init__(self, size: int) -> None:
        self.rows = np.zeros((size, DEDUP_DIM), np.float32)
        self.sq = np.zeros(size, np.float32)
        self.labels = np.full(size, -1, np.int64)
        self.fill = 0
        self.pos = 0
        self.token: object = ("empty", size)

    def check_and_add(
        self,
        z: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        radius: float,
        memo: dict[Any, Any] | None = None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """For each row of the batch ``z``: is it a near-duplicate of a recent query (or of an
        earlier row of the batch), and is that nearest duplicate's label different?"""
        n = z.shape[0]
        # a ring holding the same rows as one already searched for this batch (same token, same
        # size) has the same nearest rows: reuse them (each detector still applies its radius)
        key = (self.token, self.rows.shape[0], "nearest")
        hit = None if memo is None else memo.get(key)
        if hit is None:
            z_sq = np.einsum("ij,ij->i", z, z)
            if n > 1:
                pairs = sq_distances(z, z, z_sq, z_sq)
                pairs[_upper_triangle(n)] = np.inf  # only earlier rows of the batch
            else:  # one-row requests are the common case: skip the empty pair matrix
                pairs = np.full((1, 1), np.inf, np.float32)
            if self.fill:
                to_ring = sq_distances(z, self.rows[: self.fill], z_sq, self.sq[: self.fill])
                d2 = np.concatenate([to_ring, pairs], axis=1)
                known = np.concatenate([self.labels[: self.fill], labels])
            else:
                d2, known = pairs, labels
            nearest = d2.argmin(axis=1)
            hit = (d2[np.arange(n), nearest], known[nearest])
            if memo is not None:
                memo[key] = hit
        nearest_d2, nearest_labels = hit
        dup = nearest_d2 <= radius * radius
        flip = dup & (nearest_labels != labels)
        keep = min(n, self.rows.shape[0])
        idx = (self.pos + np.arange(keep)) % self.rows.shape[0]
        stored = z[-keep:].astype(np.float16).astype(np.float32)
        self.rows[idx] = stored
        self.sq[idx] = np.einsum("ij,ij->i", stored, stored)
        self.labels[idx] = labels[-keep:]
        self.pos = int((self.pos + keep) % self.rows.shape[0])
        self.fill = min(self.rows.shape[0], self.fill + keep)
        self.token = object() if memo is None else memo.setdefault((self.token, "batch"), object())
        return dup, flip

    def check_and_add_one(self, row: ProjectedRow, label: int, radius: float) -> tuple[bool, bool]:
        """:meth:`check_and_add` for a batch of one row."""
        fill = self.fill
        memo = row.memo
        key = self.token
        hit = memo.get(key)
        if hit is None:
            nearest_d2, nearest_label = math.inf, None
            if fill:
                full = fill == self.sq.shape[0]  # the steady state: no slices to make
                sq = self.sq if full else self.sq[:fill]
                rows = self.rows if full else self.rows[:fill]
                # the same float32 operations as sq_distances, in the same order
                d2 = row.z_sq + sq
                d2 -= 2.0 * (row.z @ rows.T)[0]
                nearest = int(d2.argmin())
                nearest_d2 = d2.item(nearest)
                if nearest_d2 < 0.0:  # sq_distances clips at 0: the first such row is nearest
                    nearest = int(np.flatnonzero(d2 <= 0.0)[0])
                    nearest_d2 = 0.0
                nearest_label = self.labels.item(nearest)
            hit = memo[key] = (nearest_d2, nearest_label, object())
        nearest_d2, nearest_label, self.token = hit
        # numpy compares float32 with a Python float rounded to float32
        dup = nearest_label is not None and nearest_d2 <= _as_float32(radius * radius)
        flip = dup and nearest_label != label
        pos = self.pos
        self.rows[pos] = row.stored
        self.sq[pos] = row.stored_sq
        self.labels[pos] = label
        size = self.rows.shape[0]
        self.pos = (pos + 1) % size
        if fill < size:
            self.fill = fill + 1
        return dup, flip

    def pack(self, prefix: str) -> dict[str, npt.NDArray[Any]]:
        return {
            f"{prefix}rows": self.rows.astype(np.float16),
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
        recent.rows = rows.astype(np.float16).astype(np.float32)
        recent.sq = np.einsum("ij,ij->i", recent.rows, recent.rows)
        recent.labels = labels.astype(np.int64)
        recent.fill, recent.pos = (int(v) for v in arrays[f"{prefix}scalars"])
        digest = hashlib.blake2b(digest_size=16)
        for part in (recent.rows, recent.labels, np.array([recent.fill, recent.pos], np.int64)):
            digest.update(part.tobytes())
        recent.token = ("state", size, digest.hexdigest())
        return recent

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.sq.nbytes + self.labels.nbytes) + 16
