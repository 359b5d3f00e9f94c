"""Per-client response watermark (DAWN: Szyller et al., "DAWN: Dynamic Adversarial Watermarking of
Neural Networks", ACM Multimedia 2021), with neighbourhood-stable marks.

DAWN changes the answer to a small keyed share of each client's queries to a keyed wrong label and
keeps those (input, label) pairs; a copy trained on the answers reproduces them, which both proves
the copy's origin and names the client. Marking single points fails against thieves that augment
their queries and do not train to memorisation: each marked query has a dozen correctly answered
near-duplicates (measured in issue 7). Here the selection and the wrong label are therefore a keyed
function of a *cell* of a locality-sensitive hash (quantised keyed random projections, Datar et
al. 2004) over a representation that small shifts and noise barely move: by default the magnitude
of the 2-D Fourier transform of an image (invariant to translation), or any feature vector the
caller passes (the model's hidden features, say). Every query of one honest class in a marked cell
gets the same keyed wrong label, so near-duplicates of a marked query are marked the same way; each
(cell, honest class) pair draws its own label, so one cell holding two classes gives two
independent trials.

Optionally (``uncertain_share``) answers the model is unsure about (top-1 probability below
``uncertain_below``) are marked at a higher rate than confident ones. Honest traffic is mostly
answered confidently, so this costs it little, while thieves that augment or synthesise queries
send many uncertain inputs (shifted digits: 42 % of them, against 3 % of natural digits) and so
carry more marks; the cost on honest traffic must be measured (``benchmarks/watermark_eval.py``).
Uncertain answers are also marked differently: a marked one answers the model's
*runner-up*, a wrong label a copy learns as easily as the decision boundary it lies next to, where
a keyed label drawn from all ``K - 1`` is learned only by copies trained to memorise. Its evidence
comes from *which* cells the key marked, not from which label: the unmarked uncertain answers are
kept as controls, and a copy answers the runner-up on the marked cells far more often than on the
controls, while a model that never saw the client's answers cannot tell them apart.

Verification (:func:`trace`) combines two exact tests per client. The keyed test runs over (cell,
honest class) pairs, not queries (near duplicates are not independent trials). The key drew each
pair's wrong-label offset uniformly among the ``K - 1`` and independently of every other pair, so
for a model that never saw the client's answers the keyed offset is a uniform draw whatever the
model answers: the suspect scores every candidate offset of a pair (from its labels, or from its
probabilities when it exposes them), and the p-value is the exact permutation tail of the summed
keyed scores. A copy that learned a mark only partly (the keyed label often among its wrong answers,
or second to the honest label) still adds evidence, where a majority vote would lose it. Optionally
the suspect is also asked about noisy copies of each stored query (``probes``): they are made
without the key, so the test stays exact, and they reveal a mark a copy learned only off the
training point. The selection test compares the marked uncertain cells with the controls (see
:func:`trace`).

Everything here is pure: keys arrive as bytes, nothing is read or written.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.errors import InvalidInputError
from modelshield.models import Label
from modelshield.watermark._keys import (
    check_key,
    derive_key,
    keyed_normal,
    keyed_uniform,
    label_key,
)
from modelshield.watermark._stats import (
    DEFAULT_THRESHOLD,
    Verification,
    bernoulli_sum_tail,
    combine_independent,
    uniform_sum_tail,
)

SCHEME = "response"
PredictFn = Callable[[npt.NDArray[Any]], Any]
FloatArray = npt.NDArray[np.float64]
# a stored query is direct evidence, a noisy probe of it only indirect
_STORED_WEIGHT = 8
# per-trial scores are integers (tenths) so that the permutation tail is an exact convolution
_LABEL_RESOLUTION = 10
_MIN_PROBABILITY = 1e-6
_MAX_LOG_RATIO = 6.0
# at most this many of a client's selection units (the first ones its queries reached) enter one
# test, which bounds the exact convolution (about two seconds at the bound)
_MAX_SELECTION_UNITS = 3000

KEYED = "keyed"
RUNNER_UP = "runner-up"
CONTROL = "control"


@dataclass(frozen=True)
class ResponseRecord:
    """One answer the watermark decided, as the audit store keeps it.

    ``input`` is the query row flattened (its digest is SHA-256 of the float32 bytes), ``label``
    the label that was returned and ``honest_label`` what the model really answered. ``kind``
    says how the answer was decided:

    - ``"keyed"``: a confident answer in a marked cell, changed to a keyed wrong label; ``cell``
      identifies the hash cell together with the honest label (one keyed label, and one trial of
      the keyed test, per identifier);
    - ``"runner-up"``: an uncertain answer in a cell marked at ``rate``, changed to the model's
      second most probable label (``alternative``);
    - ``"control"``: an uncertain answer in a cell that was not marked, returned unchanged and
      kept for comparison (``alternative`` is its runner-up all the same).

    For the last two ``cell`` identifies the hash cell alone: one unit of the selection test.
    Identifiers are not secret.
    """

    client_id: str
    digest: str
    input: tuple[float, ...]
    label: Label
    honest_label: Label
    cell: str
    kind: str = KEYED
    alternative: Label | None = None
    rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResponseRecord:
        rate = data.get("rate")
        return cls(
            client_id=str(data["client_id"]),
            digest=str(data["digest"]),
            input=tuple(float(v) for v in data["input"]),
            label=data["label"],
            honest_label=data["honest_label"],
            cell=str(data["cell"]),
            kind=str(data.get("kind", KEYED)),
            alternative=data.get("alternative"),
            rate=None if rate is None else float(rate),
        )


@dataclass(frozen=True, eq=False)
class Marks:
    """Which rows of one batch are marked, and how.

    ``rows`` are the row indices into the batch whose answer is changed; ``labels`` the class
    *indices* answered instead (keyed wrong labels, or runner-ups) and ``honest`` the model's own
    top-1 indices for those rows; ``records`` the audit records: one per changed row, and one per
    control row (an uncertain answer left unchanged, kept for the selection test).
    """

    client_id: str
    rows: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    honest: npt.NDArray[np.int64]
    records: tuple[ResponseRecord, ...]
    classes: tuple[Label, ...]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def apply_to_probabilities(self, probabilities: npt.ArrayLike) -> FloatArray:
        """A copy of ``probabilities`` (n, K) in which each marked row's top class and keyed label
        swap their values: still a distribution, now with the keyed label on top."""
        out: FloatArray = np.array(probabilities, dtype=np.float64, copy=True)
        if out.ndim != 2 or out.shape[1] != len(self.classes):
            raise InvalidInputError(f"expected probabilities of shape (n, {len(self.classes)})")
        for row, wrong in zip(self.rows.tolist(), self.labels.tolist(), strict=True):
            top = int(np.argmax(out[row]))
            out[row, top], out[row, wrong] = out[row, wrong], out[row, top]
        return out

    def apply_to_labels(self, labels: npt.ArrayLike) -> npt.NDArray[Any]:
        """A copy of the batch's ``labels`` with the marked rows replaced by their keyed label."""
        out = np.array(labels, dtype=object, copy=True).reshape(-1)
        for row, wrong in zip(self.rows.tolist(), self.labels.tolist(), strict=True):
            out[row] = self.classes[wrong]
        return out


def fourier_embedding(
    inputs: npt.ArrayLike, image_shape: tuple[int, int], *, floor: float = 0.3
) -> FloatArray:
    """Magnitudes of the 2-D real FFT of each image, without the constant term.

    Values below ``floor`` are set to zero first, which removes most low-amplitude pixel noise
    from a dark background. Translation changes only the phase of a Fourier coefficient, so small
    shifts of a digit barely move this vector, while different digits are far apart.
    """
    arr = np.asarray(inputs, dtype=np.float64)
    arr = np.where(arr < floor, 0.0, arr).reshape(arr.shape[0], -1)
    # one matrix product with the real and imaginary parts of the 2-D DFT basis: the same values
    # as np.fft.rfft2 to ~1e-14, and 3-4x faster on the gateway's batches of a few rows
    basis = _dft_basis(image_shape)
    z = arr @ basis
    half = basis.shape[1] // 2
    out: FloatArray = np.hypot(z[:, 1:half], z[:, half + 1 :])
    return out


@functools.lru_cache(maxsize=16)
def _dft_basis(image_shape: tuple[int, int]) -> FloatArray:
    """``(h*w, 2m)``: the ``rfft2`` of each one-pixel image (real parts, then imaginary parts)."""
    h, w = image_shape
    pixels = np.eye(h * w).reshape(h * w, h, w)
    f = np.fft.rfft2(pixels).reshape(h * w, -1)
    out: FloatArray = np.ascontiguousarray(np.concatenate([f.real, f.imag], axis=1))
    out.setflags(write=False)
    return out


class ResponseWatermark:
    """Keyed, per-client, neighbourhood-stable response marking (pure; see the module docstring).

    ``key`` is the master key (bytes, at least 16); ``classes`` the model's labels in output
    order; ``share`` the expected fraction of a client's queries that is answered with a wrong
    label. The cell grid is ``n_projections`` keyed Gaussian directions of the representation,
    quantised with width ``cell_width`` and keyed offsets. The representation is ``features`` when
    :meth:`select` receives them, else :func:`fourier_embedding` of the input when
    ``image_shape`` is set, else the flattened input.

    ``uncertain_share``, when set, is the marking rate of answers whose top-1 probability is below
    ``uncertain_below`` (``share`` then applies to the confident ones); it needs probabilities as
    ``outputs``. The realised cost on honest traffic is then ``share`` plus ``uncertain_share``
    times its share of uncertain answers: measure it.
    """

    def __init__(
        self,
        key: bytes,
        *,
        classes: Sequence[Label],
        share: float = 0.01,
        image_shape: tuple[int, int] | None = None,
        n_projections: int = 4,
        cell_width: float = 3.0,
        uncertain_share: float | None = None,
        uncertain_below: float = 0.9,
    ) -> None:
        if not 0.0 < share < 1.0:
            raise InvalidInputError(f"share must be in (0, 1), got {share}")
        if uncertain_share is not None and not share <= uncertain_share < 1.0:
            raise InvalidInputError(f"uncertain_share must be in [share, 1), got {uncertain_share}")
        if not 0.0 < uncertain_below <= 1.0:
            raise InvalidInputError(f"uncertain_below must be in (0, 1], got {uncertain_below}")
        if len(classes) < 2:
            raise InvalidInputError("a response watermark needs at least two classes")
        if n_projections < 1 or not cell_width > 0:
            raise InvalidInputError("need n_projections >= 1 and cell_width > 0")
        self._master = derive_key(check_key(key), "response/clients")
        self._grid_key = derive_key(key, "response/grid")
        self.classes = tuple(classes)
        self.share = float(share)
        self.image_shape = image_shape
        self.n_projections = int(n_projections)
        self.cell_width = float(cell_width)
        self.uncertain_share = None if uncertain_share is None else float(uncertain_share)
        self.uncertain_below = float(uncertain_below)
        self._threshold = int(self.share * 2.0**64)
        self._uncertain_threshold = int((uncertain_share or share) * 2.0**64)
        self._runner_up_kind = f"{RUNNER_UP}@{uncertain_share!r}"
        self._control_kind = f"{CONTROL}@{uncertain_share!r}"
        self._projections: dict[int, tuple[FloatArray, FloatArray]] = {}
        self._client_keys: dict[str, bytes] = {}
        self._index = {label_key(c): i for i, c in enumerate(self.classes)}

    def __repr__(self) -> str:
        return (
            f"ResponseWatermark(classes={len(self.classes)}, share={self.share}, "
            f"n_projections={self.n_projections}, cell_width={self.cell_width}, "
            f"uncertain_share={self.uncertain_share})"
        )

    def _grid(self, dim: int) -> tuple[FloatArray, FloatArray]:
        grid = self._projections.get(dim)
        if grid is None:
            matrix = keyed_normal(self._grid_key, f"projection/{dim}", (dim, self.n_projections))
            offsets = keyed_uniform(self._grid_key, f"offsets/{dim}", (self.n_projections,))
            grid = (matrix / self.cell_width, offsets)
            self._projections[dim] = grid
        return grid

    def _client_key(self, client_id: str) -> bytes:
        ck = self._client_keys.get(client_id)
        if ck is None:
            ck = hmac.digest(self._master, b"client\x00" + client_id.encode(), hashlib.sha256)
            if len(self._client_keys) < 100_000:
                self._client_keys[client_id] = ck
        return ck

    def representation(
        self, inputs: npt.ArrayLike, features: npt.ArrayLike | None = None
    ) -> FloatArray:
        """The vectors the cells are cut in (see the class docstring)."""
        if features is not None:
            rep = np.asarray(features, dtype=np.float64)
            return rep.reshape(rep.shape[0], -1)
        arr = np.asarray(inputs, dtype=np.float64)
        arr = arr.reshape(arr.shape[0], -1)
        if self.image_shape is not None:
            return fourier_embedding(arr, self.image_shape)
        return arr

    def cells(
        self, inputs: npt.ArrayLike, features: npt.ArrayLike | None = None
    ) -> npt.NDArray[np.int64]:
        """The integer cell coordinates ``(n, n_projections)`` of each row."""
        rep = self.representation(inputs, features)
        matrix, offsets = self._grid(rep.shape[1])
        out: npt.NDArray[np.int64] = np.floor(rep @ matrix + offsets).astype(np.int64)
        return out

    def choose(
        self,
        client_id: str,
        inputs: npt.ArrayLike,
        *,
        outputs: npt.ArrayLike,
        features: npt.ArrayLike | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The rows of this client's batch whose answer changes, and the class index to answer
        for each: what :meth:`select` decides, without the audit records."""
        rows, labels, _, _ = self._choose(client_id, inputs, outputs, features, False)
        return np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=np.int64)

    def decide(
        self,
        client_id: str,
        inputs: npt.ArrayLike,
        *,
        outputs: npt.ArrayLike,
        features: npt.ArrayLike | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], list[str]]:
        """The rows the audit store must keep (the gateway's per-request path): the changed ones
        and the controls, the class index answered for each (a control's own top-1), and how
        each was decided (``keyed``, ``runner-up@RATE`` or ``control@RATE``): what
        :meth:`records` needs to rebuild the trace's records from the stored rows."""
        rows, labels, kinds, _ = self._choose(client_id, inputs, outputs, features, True)
        return np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=np.int64), kinds

    def select(
        self,
        client_id: str,
        inputs: npt.ArrayLike,
        *,
        outputs: npt.ArrayLike,
        features: npt.ArrayLike | None = None,
    ) -> Marks:
        """Decide which rows of this client's batch to mark and with which wrong label.

        ``outputs`` are the model's answers for the batch: probabilities or scores ``(n, K)``, or
        top-1 class indices ``(n,)``. ``features`` optionally replaces the built-in representation
        (one row per input). Cheap and side-effect free: one projection and one HMAC per row, and
        a second HMAC per marked confident row. The records include the control rows.
        """
        rows, labels, kinds, honest_all = self._choose(client_id, inputs, outputs, features, True)
        arr = np.asarray(inputs)
        records = self._records(
            client_id, arr[rows], np.asarray(outputs)[rows], labels, kinds, _subset(features, rows)
        )
        changed = [i for i, kind in enumerate(kinds) if not kind.startswith(CONTROL)]
        rows_arr = np.asarray([rows[i] for i in changed], dtype=np.int64)
        return Marks(
            client_id=client_id,
            rows=rows_arr,
            labels=np.asarray([labels[i] for i in changed], dtype=np.int64),
            honest=honest_all[rows_arr].astype(np.int64),
            records=records,
            classes=self.classes,
        )

    def records(
        self,
        client_id: str,
        inputs: npt.ArrayLike,
        *,
        outputs: npt.ArrayLike,
        labels: Sequence[Label],
        kinds: Sequence[str],
        features: npt.ArrayLike | None = None,
    ) -> tuple[ResponseRecord, ...]:
        """The trace's records of rows kept by the audit store, from what was decided then.

        ``labels`` are the labels that were returned and ``kinds`` how each row was decided (what
        :meth:`decide` gave; ``""`` for rows stored before kinds were kept, which are read as
        keyed marks, as they were made); ``outputs`` the model's probabilities for the rows now
        (their honest labels and runner-ups). Nothing is decided again, so a trace does not
        depend on the current marking rates. A keyed row whose returned label is now the model's
        own answer carries no mark and gives no record.
        """
        arr = np.asarray(inputs)
        if not len(labels) == len(kinds) == arr.shape[0]:
            raise InvalidInputError("need one label and one kind per stored row")
        answered = []
        for label in labels:
            position = self._index.get(label_key(label))
            if position is None:
                raise InvalidInputError(f"a stored label {label!r} is not one of the classes")
            answered.append(position)
        return self._records(client_id, arr, np.asarray(outputs), answered, list(kinds), features)

    def _records(
        self,
        client_id: str,
        inputs: npt.NDArray[Any],
        outputs: npt.NDArray[Any],
        answered: Sequence[int],
        kinds: Sequence[str],
        features: npt.ArrayLike | None,
    ) -> tuple[ResponseRecord, ...]:
        n = inputs.shape[0]
        if n == 0:
            return ()
        flat = np.asarray(inputs, dtype=np.float32).reshape(n, -1)
        honest_all = np.argmax(outputs, axis=1) if outputs.ndim == 2 else outputs.reshape(-1)
        out = []
        for row, (cell_row, answer, stored) in enumerate(
            zip(self.cells(inputs, features), answered, kinds, strict=True)
        ):
            kind, rate = _parse_kind(stored)
            honest = int(honest_all[row])
            cell = cell_row.tobytes()
            if kind == KEYED:
                if answer == honest:
                    continue
                unit = cell + honest.to_bytes(4, "big")
                alternative = None
            else:
                if outputs.ndim != 2:
                    raise InvalidInputError("uncertain marks need the model's probabilities")
                unit = b"unit\x00" + cell
                alternative = self.classes[_runner_up(outputs[row])]
            out.append(
                ResponseRecord(
                    client_id=client_id,
                    digest=hashlib.sha256(flat[row].tobytes()).hexdigest(),
                    input=tuple(float(v) for v in flat[row]),
                    label=self.classes[answer],
                    honest_label=self.classes[honest],
                    cell=hashlib.sha256(self._grid_key + unit).hexdigest()[:32],
                    kind=kind,
                    alternative=alternative,
                    rate=rate,
                )
            )
        return tuple(out)

    def _choose(
        self,
        client_id: str,
        inputs: npt.ArrayLike,
        outputs: npt.ArrayLike,
        features: npt.ArrayLike | None,
        controls: bool,
    ) -> tuple[list[int], list[int], list[str], npt.NDArray[np.int64]]:
        """Decided rows, the class index answered for each, their stored kind and the honest
        top-1 index of every row. Control rows come only when ``controls``."""
        arr = np.asarray(inputs)
        n = arr.shape[0]
        out = np.asarray(outputs)
        honest_all = np.argmax(out, axis=1) if out.ndim == 2 else out.reshape(-1).astype(np.int64)
        if honest_all.shape[0] != n:
            raise InvalidInputError(f"{honest_all.shape[0]} outputs for {n} inputs")
        uncertain: list[bool] | None = None
        if self.uncertain_share is not None and out.ndim == 2:
            uncertain = (out.max(axis=1) < self.uncertain_below).tolist()
        ck = self._client_key(client_id)
        k = len(self.classes)
        rows: list[int] = []
        labels: list[int] = []
        kinds: list[str] = []
        for row, cell_row in enumerate(self.cells(arr, features)):
            cell = cell_row.tobytes()
            top = int(honest_all[row])
            if uncertain is not None and uncertain[row]:
                # an unsure answer: its cell is marked at the uncertain rate, and a marked one
                # answers the runner-up, a wrong label that a copy learns as easily as the
                # boundary it lies on; unmarked ones are the controls of the selection test.
                # Its own tag: which cells are marked here is independent of the keyed marks.
                tag = hmac.digest(ck, b"uncertain\x00" + cell, hashlib.sha256)
                marked = int.from_bytes(tag[:8], "big") < self._uncertain_threshold
                if marked or controls:
                    rows.append(row)
                    labels.append(_runner_up(out[row]) if marked else top)
                    kinds.append(self._runner_up_kind if marked else self._control_kind)
            elif int.from_bytes(hmac.digest(ck, cell, hashlib.sha256)[:8], "big") < self._threshold:
                # one keyed wrong label per (cell, honest class): one trial each at verification
                cell_class = cell + top.to_bytes(4, "big")
                label_tag = hmac.digest(ck, b"label\x00" + cell_class, hashlib.sha256)
                offset = 1 + int.from_bytes(label_tag[:8], "big") % (k - 1)
                rows.append(row)
                labels.append((top + offset) % k)
                kinds.append(KEYED)
        return rows, labels, kinds, honest_all


def _subset(features: npt.ArrayLike | None, rows: Sequence[int]) -> npt.NDArray[Any] | None:
    return None if features is None else np.asarray(features)[list(rows)]


def _parse_kind(stored: str) -> tuple[str, float | None]:
    """``(kind, rate)`` of a stored kind: ``keyed`` (also ``""``, rows stored before kinds were
    kept), ``runner-up@RATE`` or ``control@RATE``."""
    if stored in ("", KEYED):
        return KEYED, None
    kind, _, rate_text = stored.partition("@")
    try:
        rate = float(rate_text)
    except ValueError:
        rate = math.nan
    if kind not in (RUNNER_UP, CONTROL) or not 0.0 < rate < 1.0:
        raise InvalidInputError(f"unknown watermark kind {stored!r}")
    return kind, rate


def _runner_up(probabilities: npt.NDArray[Any]) -> int:
    """The index of the second highest value (the lower index on a tie, as argmax orders)."""
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="stable")
    return int(order[1])


def response_cost(marks: Sequence[Marks], n_answers: int) -> float:
    """The share of honest answers that were changed: marked rows over all ``n_answers``."""
    if n_answers <= 0:
        raise InvalidInputError("n_answers must be positive")
    return sum(len(m) for m in marks) / n_answers


def _probes(
    batch: npt.NDArray[np.float32], digests: Sequence[str], probes: int, noise: float
) -> npt.NDArray[np.float32]:
    low, high = float(batch.min()), float(batch.max())
    scale = noise * (high - low if high > low else 1.0)
    out = np.empty((len(digests) * probes, batch.shape[1]), dtype=np.float32)
    for i, digest in enumerate(digests):
        rng = np.random.default_rng(int(digest[:16], 16))
        noisy = batch[i] + rng.normal(0.0, scale, (probes, batch.shape[1]))
        out[i * probes : (i + 1) * probes] = np.clip(noisy, low, high)
    return out


def _as_probabilities(raw: npt.NDArray[Any], k: int) -> FloatArray:
    scores = np.asarray(raw, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != k:
        raise InvalidInputError(f"scores=True needs suspect outputs of shape (n, {k})")
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return scores
    # logits or decision values: a softmax keeps their order within each row
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    out: FloatArray = shifted / shifted.sum(axis=1, keepdims=True)
    return out


def _label_scores(weights: Counter[int], k: int) -> list[int] | None:
    """Per wrong offset ``1..K-1``: its share of the suspect's weighted wrong answers, in tenths."""
    total = sum(weights.values())
    if total == 0:
        return None
    return [round(_LABEL_RESOLUTION * weights[o] / total) for o in range(1, k)]


def _probability_scores(mean: FloatArray, honest: int, k: int) -> list[int]:
    """Per wrong offset ``1..K-1``: the suspect's log-probability of that label, centred over the
    wrong labels and clipped, in tenths of a nat."""
    wrong = np.array([mean[(honest + o) % k] for o in range(1, k)])
    logs = np.log(np.clip(wrong, _MIN_PROBABILITY, 1.0))
    centred = np.clip(logs - logs.mean(), -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return [int(v) for v in np.round(centred * _LABEL_RESOLUTION)]


def trace(
    suspect_predict: PredictFn,
    records_by_client: Mapping[str, Sequence[ResponseRecord]],
    *,
    classes: Sequence[Label],
    input_shape: tuple[int, ...],
    threshold: float = DEFAULT_THRESHOLD,
    probes: int = 0,
    probe_noise: float = 0.2,
    scores: bool = False,
) -> list[Verification]:
    """Test the suspect against every client's marked answers; most significant first.

    Two exact tests per client, on disjoint records, combined by Fisher's bound
    (:func:`~modelshield.watermark._stats.combine_independent`). The keyed test is valid whatever
    the key's tags, and the selection test rests on the uncertain answers' own tags, drawn apart
    from the confident ones'; which tests run depends only on whether the client has keyed trials
    and uncertain units, never on the uncertain marking:

    **The keyed test** (``kind == "keyed"`` records, confident answers). One trial per marked
    (cell, honest class) pair of a client, scored from the suspect's answers
    on that pair's stored queries; the key chose the pair's wrong-label offset uniformly among the
    ``K - 1`` and independently of every other pair, so the p-value is the exact permutation tail
    of the summed keyed scores (:func:`~modelshield.watermark._stats.uniform_sum_tail`): for a
    model that never saw the client's answers, the keyed offset is a uniform draw whatever the
    model answers. No chance rate is estimated.

    With labels (``scores=False``) a pair's score for each offset is that offset's share of the
    suspect's wrong answers on the pair (each stored query weighs 8, each probe 1); pairs where the
    suspect never answers a wrong label are not trials. With ``probes > 0`` the suspect is also
    asked about that many noisy copies of each stored query (Gaussian noise of ``probe_noise``
    times the range of the stored inputs, clipped to it, drawn from a generator seeded by the
    query's digest: no key involved, so the test stays exact); they reveal a mark a copy learned
    only partly, where the keyed label wins just off the training point.

    With ``scores=True`` ``suspect_predict`` returns class probabilities ``(n, K)`` in the order of
    ``classes`` (rows that are not probabilities are read as logits); a pair's score for each
    offset is the log of the suspect's probability of that label averaged over the pair's stored
    queries, centred over the wrong labels. Every pair is then a trial, and a copy that learned
    a mark only partly (the keyed label second to the honest one) still counts; probes are not
    used.

    **The selection test** (``"runner-up"`` and ``"control"`` records, uncertain answers). One
    unit per hash cell of the client's uncertain answers; the key marked each cell with
    probability ``rate`` independently of every other cell, and a marked cell answered the
    model's runner-up. Each unit gets a score from the suspect alone: with labels, the share (in
    tenths) of its answers on the unit's stored queries (weight 8) and their probes (weight 1)
    that are the runner-up; with scores, the mean log-ratio of the suspect's probabilities of the
    runner-up and of the honest label (clipped to +-6, in tenths). The statistic is the summed
    centred score of the marked units, and its exact null is
    :func:`~modelshield.watermark._stats.bernoulli_sum_tail`. A model that merely prefers
    runner-ups on uncertain inputs prefers them on the controls too, and is not accused. At most
    3,000 units per client enter the test, those whose public identifiers sort first; a client
    with no marked unit gets p = 1.

    ``matches`` counts the keyed trials in which the keyed offset scored highest (ties to the
    smallest offset) and the marked units that scored above the centre; ``chance_rate`` is what
    a model without the marks would reach (``1/(K-1)`` per keyed trial, the controls' share above
    the centre per unit); the verdict rests on the p-value.

    Every client is a separate test, and the most significant one is what a trace reports, so
    each p-value is multiplied by the number of clients tested (Bonferroni, capped at 1): it is
    the chance that a model that never saw the key matches *some* client's marks this well.
    """
    index = {label_key(c): i for i, c in enumerate(classes)}
    k = len(classes)
    if k < 2:
        raise InvalidInputError("need at least two classes")
    if probes < 0 or not probe_noise > 0:
        raise InvalidInputError("need probes >= 0 and probe_noise > 0")
    if not 0.0 < threshold < 1.0:
        raise InvalidInputError(f"threshold must be in (0, 1), got {threshold}")
    probes = 0 if scores else probes
    unique: dict[str, ResponseRecord] = {}
    for records in records_by_client.values():
        for r in records:
            unique.setdefault(r.digest, r)
    digests = list(unique)
    position = {d: i for i, d in enumerate(digests)}
    answers: list[int] = []
    probabilities: FloatArray = np.zeros((0, k))
    if digests:
        batch = np.asarray([unique[d].input for d in digests], dtype=np.float32)
        if probes:
            batch = np.concatenate([batch, _probes(batch, digests, probes, probe_noise)])
        raw = np.asarray(suspect_predict(batch.reshape(len(batch), *input_shape)))
        if raw.shape[0] != len(batch) or (not scores and raw.size != len(batch)):
            raise InvalidInputError("suspect returned a wrong number of labels")
        if scores:
            probabilities = _as_probabilities(raw, k)
        else:
            answers = [index.get(label_key(v), -1) for v in raw.reshape(-1).tolist()]
    n = len(digests)

    def pair_scores(pair: Mapping[str, ResponseRecord], honest: int) -> list[int] | None:
        rows = [position[d] for d in pair]
        if scores:
            return _probability_scores(probabilities[rows].mean(axis=0), honest, k)
        weights = Counter[int]()
        for row in rows:
            answer = answers[row]
            if answer >= 0 and answer != honest:
                weights[(answer - honest) % k] += _STORED_WEIGHT
            for answer in answers[n + row * probes : n + (row + 1) * probes]:
                if answer >= 0 and answer != honest:
                    weights[(answer - honest) % k] += 1
        return _label_scores(weights, k)

    def unit_score(unit: Mapping[str, ResponseRecord]) -> int:
        """A selection unit's score: how much the suspect prefers the runner-ups there."""
        rows = [position[d] for d in unit]
        alternative = [_class_index(index, r.alternative) for r in unit.values()]
        if scores:
            honest = [_class_index(index, r.honest_label) for r in unit.values()]
            logs = np.log(np.clip(probabilities[rows], _MIN_PROBABILITY, 1.0))
            ratio = logs[np.arange(len(rows)), alternative] - logs[np.arange(len(rows)), honest]
            mean = float(np.clip(ratio.mean(), -_MAX_LOG_RATIO, _MAX_LOG_RATIO))
            return round(mean * _LABEL_RESOLUTION)
        hit = total = 0
        for row, alt in zip(rows, alternative, strict=True):
            hit += _STORED_WEIGHT * (answers[row] == alt)
            hit += sum(a == alt for a in answers[n + row * probes : n + (row + 1) * probes])
            total += _STORED_WEIGHT + probes
        return round(_LABEL_RESOLUTION * hit / total)

    results = []
    for client_id, records in records_by_client.items():
        keyed_pairs: dict[str, dict[str, ResponseRecord]] = defaultdict(dict)
        units: dict[str, dict[str, ResponseRecord]] = defaultdict(dict)
        for r in records:
            if r.kind not in (KEYED, RUNNER_UP, CONTROL):
                raise InvalidInputError(f"unknown response record kind {r.kind!r}")
            (keyed_pairs if r.kind == KEYED else units)[r.cell][r.digest] = r
        choices: list[list[int]] = []
        observed: list[int] = []
        matches = 0
        for pair in keyed_pairs.values():
            first = next(iter(pair.values()))
            honest = _class_index(index, first.honest_label)
            keyed = (_class_index(index, first.label) - honest) % k
            if keyed == 0:
                raise InvalidInputError(f"a keyed record of pair {first.cell} was not changed")
            candidate = pair_scores(pair, honest)
            if candidate is None:
                continue
            choices.append(candidate)
            observed.append(candidate[keyed - 1])
            matches += int(int(np.argmax(candidate)) == keyed - 1)
        selection = _selection_test(units, unit_score)
        trials = len(choices) + selection.trials
        chance = (len(choices) / (k - 1) + selection.trials * selection.chance) / max(trials, 1)
        # which tests run depends on nothing the key decided for the other one: keyed trials on
        # the confident tags (and the suspect), selection units on the answers' uncertainty
        p_value = 1.0
        if choices and units:
            p_value = combine_independent(uniform_sum_tail(choices, sum(observed)), selection.p)
        elif choices:
            p_value = uniform_sum_tail(choices, sum(observed))
        elif units:
            p_value = selection.p
        results.append(
            Verification(
                scheme=SCHEME,
                agreement=(matches + selection.matches) / trials if trials else 0.0,
                trials=trials,
                matches=matches + selection.matches,
                chance_rate=chance if trials else 1.0 / (k - 1),
                p_value=p_value,
                verified=bool(p_value < threshold),
                threshold=threshold,
                client_id=client_id,
            )
        )
    tested = sum(1 for records in records_by_client.values() if records)
    results = [
        replace(v, p_value=p, verified=bool(p < v.threshold))
        for v in results
        for p in [min(1.0, v.p_value * max(tested, 1))]
    ]
    results.sort(key=lambda v: (v.p_value, -v.matches))
    return results


@dataclass(frozen=True)
class _Selection:
    p: float  # 1 when no unit is marked
    trials: int  # marked units
    matches: int  # marked units scored above the centre
    chance: float  # share of control units scored above the centre


def _selection_test(
    units: Mapping[str, Mapping[str, ResponseRecord]],
    unit_score: Callable[[Mapping[str, ResponseRecord]], int],
) -> _Selection:
    """The exact selection test over one client's uncertain units.

    The key marked each unit (a hash cell) with probability ``rate``, independently of every
    other unit and of anything a model that never saw the client's answers can compute; such a
    model's unit scores are therefore independent of which units are marked, and ``T``, the
    summed centred scores of the marked units, has the distribution of
    :func:`bernoulli_sum_tail`. Nothing the marking decided chooses the units: every uncertain
    answer was kept, the centre is the rounded mean score of all units, a unit whose rows were
    kept under several rates keeps those of the lowest, and at most ``_MAX_SELECTION_UNITS`` units
    enter, those whose public identifiers sort first. With no marked unit the p-value is 1.
    """
    chosen: list[tuple[str, list[ResponseRecord], float]] = []
    for unit_id in sorted(units)[:_MAX_SELECTION_UNITS]:
        records = list(units[unit_id].values())
        if any(r.alternative is None or r.rate is None for r in records):
            raise InvalidInputError(f"response records of unit {unit_id} lack alternative or rate")
        rate = min(float(r.rate) for r in records if r.rate is not None)
        if not 0.0 < rate < 1.0:
            raise InvalidInputError(f"response records of unit {unit_id} have rate {rate}")
        records = [r for r in records if r.rate == rate]
        if len({r.kind for r in records}) != 1:
            raise InvalidInputError(f"response records of unit {unit_id} disagree on its marking")
        chosen.append((unit_id, records, rate))
    if not chosen:
        return _Selection(1.0, 0, 0, 0.0)
    marked = [records[0].kind == RUNNER_UP for _, records, _ in chosen]
    scored = [unit_score({r.digest: r for r in records}) for _, records, _ in chosen]
    centre = round(sum(scored) / len(scored))
    values = [v - centre for v in scored]
    observed = sum(v for v, m in zip(values, marked, strict=True) if m)
    controls = [v for v, m in zip(values, marked, strict=True) if not m]
    return _Selection(
        p=bernoulli_sum_tail(values, [rate for _, _, rate in chosen], observed)
        if any(marked)
        else 1.0,
        trials=sum(marked),
        matches=sum(1 for v, m in zip(values, marked, strict=True) if m and v > 0),
        chance=sum(1 for v in controls if v > 0) / len(controls) if controls else 0.0,
    )


def _class_index(index: Mapping[str, int], label: Label | None) -> int:
    position = None if label is None else index.get(label_key(label))
    if position is None:
        raise InvalidInputError(f"a response record's label {label!r} is not one of the classes")
    return position
