"""The guarded prediction path as plain code: limits, validation, prediction, hardening.

Used by the HTTP gateway and by :class:`Shield` (in-process). Clock and random generator are
passed in; state lives behind :class:`~modelshield.gateway._limits.LimitStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from modelshield.config import TierConfig
from modelshield.errors import AuthorizationError, InvalidInputError, RateLimitedError
from modelshield.gateway._harden import LabelsOnly, OutputPolicy, parse_policy
from modelshield.gateway._limits import LimitDecision, LimitRule, LimitStore
from modelshield.models import Predictor, validate_inputs
from modelshield.models._base import FloatArray

Clock = Callable[[], float]


class Marker(Protocol):
    """The response watermark seen from the pipeline: which rows to mark, with which label."""

    def mark(
        self, client: str, inputs: FloatArray, scores: FloatArray
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], Sequence[str]]:
        """Row indices to record, the class index to answer for each, and how each was decided
        (kept with the audit record): the changed rows, and any row kept unchanged for
        comparison (its label is then its own top-1)."""
        ...


class Observer(Protocol):
    """Extraction detection seen from the pipeline: observe a batch, maybe return a flag."""

    def observe(
        self, client: str, inputs: FloatArray, scores: FloatArray, now: float, tier: str
    ) -> tuple[str | None, dict[str, Any]]:
        """The flag to set for this client (``None`` for none) and the evidence."""
        ...


class DeferredObserver(Observer, Protocol):
    """An observer that can also work after the response: the gateway defers each answered
    batch and flushes a client's deferred batches before admitting its next request."""

    def defer(
        self, client: str, inputs: FloatArray, scores: FloatArray, now: float, tier: str
    ) -> bool:
        """Keep the batch; ``True`` when the client's deferred rows should be flushed now."""
        ...

    def release(self, client: str) -> None:
        """One of the client's deferred batches has been answered."""
        ...

    def has_released(self, client: str) -> bool:
        """Whether one of the client's deferred batches has been answered."""
        ...

    def flush(
        self, client: str, *, released_only: bool = False
    ) -> tuple[str | None, dict[str, Any]]:
        """Observe the client's deferred batches; the same result as :meth:`observe`."""
        ...

    def pending_clients(self) -> list[str]:
        """The clients with deferred batches."""
        ...


@dataclass(frozen=True)
class Tier:
    """A tier's limits and output policy, parsed once."""

    name: str
    rule: LimitRule
    policy: OutputPolicy
    max_batch_rows: int

    @classmethod
    def from_config(cls, name: str, config: TierConfig) -> Tier:
        return cls(
            name=name,
            rule=LimitRule(
                rate=config.requests_per_second,
                burst=config.burst,
                budget_rows=config.budget_rows,
                budget_seconds=config.budget_seconds,
            ),
            policy=parse_policy(config.output),
            max_batch_rows=config.max_batch_rows,
        )


DEGRADED = OutputPolicy((LabelsOnly(),))


@dataclass(frozen=True)
class Answer:
    """What a client receives for one batch, plus what the audit record and detectors need."""

    labels: list[Any]
    probabilities: FloatArray | None
    scores: FloatArray = field(repr=False)
    # the rows the watermark decided: changed ones, and controls answered unchanged
    marked_rows: npt.NDArray[np.intp] = field(repr=False)
    degraded: bool = False
    marked_kinds: tuple[str, ...] = field(default=(), repr=False)  # one per marked row


def admit(limits: LimitStore, client: str, tier: Tier, rows: int, now: float) -> LimitDecision:
    """Charge ``rows`` to ``client``; raise :class:`RateLimitedError` or
    :class:`AuthorizationError` (blocked) when refused."""
    if rows > tier.max_batch_rows:
        raise InvalidInputError(f"too many rows: {rows} > limit {tier.max_batch_rows} per request")
    decision = limits.consume(client, rows, tier.rule, now)
    if decision.allowed:
        return decision
    if decision.reason == "blocked":
        raise AuthorizationError("this API key is blocked; its operator can lift the block")
    if decision.reason == "budget":
        raise RateLimitedError("query budget exhausted", retry_after=decision.retry_after)
    raise RateLimitedError("rate limit exceeded", retry_after=decision.retry_after)


def answer(
    predictor: Predictor,
    batch: FloatArray,
    tier: Tier,
    rng: np.random.Generator,
    *,
    client: str,
    degraded: bool = False,
    marker: Marker | None = None,
) -> Answer:
    """Predict, harden and (optionally) watermark one validated batch."""
    scores = _scores(predictor, batch)
    classes = np.asarray(predictor.classes)
    top = scores.argmax(axis=1)
    marked = np.empty(0, dtype=np.intp)
    kinds: Sequence[str] = ()
    if marker is not None:
        marked, marked_labels, kinds = marker.mark(client, batch, scores)
        if marked.size:
            top = top.copy()
            top[marked] = marked_labels
    hardened = _harden(DEGRADED if degraded else tier.policy, scores, rng, marked, top)
    return Answer(
        labels=classes[top].tolist(),
        probabilities=hardened,
        scores=scores,
        marked_rows=marked,
        degraded=degraded,
        marked_kinds=tuple(kinds),
    )


@dataclass(frozen=True, slots=True)
class Question:
    """One validated batch to answer, with whom and how it is answered."""

    batch: FloatArray
    tier: Tier
    client: str
    degraded: bool = False


def answer_many(
    predictor: Predictor,
    questions: Sequence[Question],
    rng: np.random.Generator,
    *,
    marker: Marker | None = None,
) -> list[Answer]:
    """Answer several validated batches of one model with one prediction (dynamic batching).

    Each batch gets what :func:`answer` would give it: the model, the output policies and the
    watermark all work row by row, so only the number of calls changes (one prediction, one
    marking per client, one hardening per policy). The scores may differ from separate
    predictions in the last float bits, as any change of batch size can make them differ.
    """
    if len(questions) == 1:
        q = questions[0]
        return [
            answer(
                predictor, q.batch, q.tier, rng,
                client=q.client, degraded=q.degraded, marker=marker,
            )
        ]  # fmt: skip
    bounds = np.cumsum([0, *(q.batch.shape[0] for q in questions)]).tolist()
    batch = np.concatenate([q.batch for q in questions])
    scores = _scores(predictor, batch)
    top = scores.argmax(axis=1)
    marked = np.zeros(batch.shape[0], dtype=bool)
    kinds: dict[int, str] = {}
    if marker is not None:
        for client, members in _groups(questions, lambda q: q.client).items():
            rows = _rows(members, bounds, batch.shape[0])
            hits, labels, decided = marker.mark(client, batch[rows], scores[rows])
            if hits.size:
                chosen = rows[hits]
                top[chosen] = labels
                marked[chosen] = True
                kinds.update(zip(chosen.tolist(), decided, strict=True))
    hardened: list[FloatArray | None] = [None] * len(questions)
    for policy, members in _groups(
        questions, lambda q: DEGRADED if q.degraded else q.tier.policy
    ).items():
        rows = _rows(members, bounds, batch.shape[0])
        out = _harden(policy, scores[rows], rng, np.flatnonzero(marked[rows]), top[rows])
        if out is None:
            continue
        start = 0
        for i in members:
            size = bounds[i + 1] - bounds[i]
            hardened[i] = out[start : start + size]
            start += size
    classes = np.asarray(predictor.classes)
    answers = []
    for i, q in enumerate(questions):
        lo, hi = bounds[i], bounds[i + 1]
        own = np.flatnonzero(marked[lo:hi]).astype(np.intp)
        answers.append(
            Answer(
                labels=classes[top[lo:hi]].tolist(),
                probabilities=hardened[i],
                scores=scores[lo:hi],
                marked_rows=own,
                degraded=q.degraded,
                marked_kinds=tuple(kinds[lo + r] for r in own.tolist()),
            )
        )
    return answers


def _groups(questions: Sequence[Question], key: Callable[[Question], Any]) -> dict[Any, list[int]]:
    """Question indices by ``key``, in order."""
    groups: dict[Any, list[int]] = {}
    for i, q in enumerate(questions):
        groups.setdefault(key(q), []).append(i)
    return groups


def _rows(members: list[int], bounds: list[int], total: int) -> npt.NDArray[np.intp]:
    """The row indices (into the joined batch) of the questions ``members``."""
    if len(members) == len(bounds) - 1:
        return np.arange(total, dtype=np.intp)
    return np.concatenate([np.arange(bounds[i], bounds[i + 1], dtype=np.intp) for i in members])


def _scores(predictor: Predictor, batch: FloatArray) -> FloatArray:
    # the batch was validated by :func:`validate`; adapters skip validating it twice
    checked = getattr(predictor, "predict_proba_validated", None)
    out: FloatArray = checked(batch) if checked is not None else predictor.predict_proba(batch)
    return out


def _harden(
    policy: OutputPolicy,
    scores: FloatArray,
    rng: np.random.Generator,
    marked: npt.NDArray[np.intp],
    top: npt.NDArray[np.intp],
) -> FloatArray | None:
    """``policy`` applied to ``scores``; the ``marked`` rows then get their watermark label
    (in ``top``) on top, so that a watermark answer looks like an ordinary one."""
    out = policy.apply(scores, rng)
    if out is not None and marked.size:
        out = _move_top(out, marked, top[marked])
    return out


def _move_top(
    scores: FloatArray, rows: npt.NDArray[np.intp], new_top: npt.NDArray[np.intp]
) -> FloatArray:
    out = scores.copy()
    old_top = np.argmax(out[rows], axis=1)
    a = out[rows, old_top].copy()
    out[rows, old_top] = out[rows, new_top]
    out[rows, new_top] = a
    return out


def validate(predictor: Predictor, inputs: Any) -> FloatArray:
    """Validate request inputs against the model's input spec (raises InvalidInputError)."""
    return validate_inputs(inputs, predictor.input_spec)
