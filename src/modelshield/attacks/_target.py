"""Targets: what an attack queries, and the ledger that counts and budgets every query.

A :class:`Target` is anything with an input specification, class labels and ``query``; the
in-process :class:`PredictorTarget` wraps any modelshield Predictor, and an HTTP target (a running
gateway) implements the same three members. Refusals are raised as the library's own errors
(``RateLimitedError`` for 429, ``AuthenticationError`` for 401, ``AuthorizationError`` for 403);
:class:`BudgetedTarget` turns them into a recorded :class:`StopEvent` so that an attack stops
cleanly and still reports what it bought.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from modelshield.errors import (
    AuthenticationError,
    AuthorizationError,
    RateLimitedError,
    ShieldError,
)
from modelshield.models import InputSpec, Label, Predictor

FloatArray = npt.NDArray[np.float64]
StopKind = Literal["budget_exhausted", "rate_limited", "blocked"]


@dataclass(frozen=True)
class Answer:
    """What a target returned for one batch.

    ``labels`` are the ``n`` top-1 labels (always present). ``probabilities`` is an ``(n, K)``
    array with columns in the order of ``Target.classes`` when the deployment returns scores (they
    may be hardened: rounded, noisy, reverse-sigmoid), else ``None``. ``degraded`` is ``True`` when
    the target said that it degraded this answer on purpose (an HTTP target reads it from the
    response; an in-process target never knows).
    """

    labels: npt.NDArray[Any]
    probabilities: FloatArray | None = None
    degraded: bool = False

    def __post_init__(self) -> None:
        if self.labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {self.labels.shape}")
        probs = self.probabilities
        if probs is not None and (probs.ndim != 2 or probs.shape[0] != self.labels.shape[0]):
            raise ValueError(
                f"probabilities of shape {probs.shape} do not match {self.labels.shape[0]} labels"
            )

    @property
    def n_rows(self) -> int:
        """Number of answered rows."""
        return int(self.labels.shape[0])


@runtime_checkable
class Target(Protocol):
    """A deployed classifier an attack can query.

    ``query`` takes a batch of shape ``(n, *input_spec.shape)`` and returns an :class:`Answer` for
    every row, or raises :class:`~modelshield.errors.RateLimitedError`,
    :class:`~modelshield.errors.AuthenticationError` or
    :class:`~modelshield.errors.AuthorizationError` when the deployment refuses the request.
    """

    @property
    def input_spec(self) -> InputSpec: ...

    @property
    def classes(self) -> tuple[Label, ...]: ...

    def query(self, inputs: FloatArray) -> Answer: ...


OutputTransform = Callable[[FloatArray, FloatArray], FloatArray | None]


class PredictorTarget:
    """An in-process target over any modelshield :class:`~modelshield.models.Predictor`.

    ``return_probabilities=False`` answers labels only. ``output``, when given, is called as
    ``output(inputs, probabilities)`` on every batch and returns the (hardened) probabilities the
    client sees, or ``None`` to answer labels only; the labels are the top-1 of what it returns, so
    an output defence that flips labels is visible to the attacker as it would be over HTTP.
    ``queries`` and ``rows`` count every answered request and row.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        return_probabilities: bool = True,
        output: OutputTransform | None = None,
    ) -> None:
        self.predictor = predictor
        self.return_probabilities = return_probabilities
        self.output = output
        self.queries = 0
        self.rows = 0
        self._class_array = np.asarray(predictor.classes)

    @property
    def input_spec(self) -> InputSpec:
        return self.predictor.input_spec

    @property
    def classes(self) -> tuple[Label, ...]:
        return self.predictor.classes

    def query(self, inputs: FloatArray) -> Answer:
        probs = np.asarray(self.predictor.predict_proba(inputs), dtype=np.float64)
        shown: FloatArray | None = probs
        if self.output is not None:
            transformed = self.output(np.asarray(inputs, dtype=np.float64), probs)
            shown = None if transformed is None else np.asarray(transformed, dtype=np.float64)
        basis = probs if shown is None else shown
        labels = self._class_array[np.argmax(basis, axis=1)]
        self.queries += 1
        self.rows += int(probs.shape[0])
        return Answer(labels=labels, probabilities=shown if self.return_probabilities else None)

    def __repr__(self) -> str:
        return f"PredictorTarget({self.predictor!r}, probabilities={self.return_probabilities})"


Observer = Callable[[FloatArray, Answer], None]


class ObservedTarget:
    """A target that shows every answered ``(inputs, answer)`` pair to ``observer``.

    This is how a detector watches an attack's query stream: wrap the target an attack runs
    against, and the observer sees exactly the batches the deployment answered, in order.
    """

    def __init__(self, target: Target, *, observer: Observer) -> None:
        self.target = target
        self.observer = observer

    @property
    def input_spec(self) -> InputSpec:
        return self.target.input_spec

    @property
    def classes(self) -> tuple[Label, ...]:
        return self.target.classes

    def query(self, inputs: FloatArray) -> Answer:
        answer = self.target.query(inputs)
        self.observer(inputs, answer)
        return answer


@dataclass(frozen=True)
class StopEvent:
    """Why and where an attack stopped querying.

    ``query_index`` is the 0-based index of the request that was refused (equal to the number of
    requests answered before it); ``row_index`` the number of rows answered before it. For
    ``budget_exhausted`` both are the totals spent.
    """

    kind: StopKind
    query_index: int
    row_index: int
    message: str = ""


class AttackStopped(ShieldError):
    """Raised by :class:`BudgetedTarget` when no more queries can be made; carries the event."""

    def __init__(self, event: StopEvent) -> None:
        super().__init__(f"attack stopped ({event.kind}) at query {event.query_index}")
        self.event = event


class BudgetedTarget:
    """Counts requests and rows exactly, enforces a row budget and records refusals.

    A batch is cut to the rows left in the budget and sent in requests of at most ``batch_size``
    rows. When the budget is spent, or the wrapped target refuses a request (rate limit, bad or
    revoked credentials, forbidden), the event is recorded in ``stop``: the rows answered so far in
    the call are returned, and the next call raises :class:`AttackStopped`. ``degraded_at`` is the
    index of the first request whose answer was degraded: flagged by the target, or labels only
    after the target had returned probabilities.
    """

    def __init__(self, target: Target, *, budget: int, batch_size: int = 100) -> None:
        if budget < 0:
            raise ValueError(f"budget must be non-negative, got {budget}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.target = target
        self.budget = budget
        self.batch_size = batch_size
        self.queries = 0
        self.rows = 0
        self.stop: StopEvent | None = None
        self.degraded_at: int | None = None
        self._had_probabilities = False

    @property
    def input_spec(self) -> InputSpec:
        return self.target.input_spec

    @property
    def classes(self) -> tuple[Label, ...]:
        return self.target.classes

    @property
    def remaining(self) -> int:
        """Rows left in the budget (0 once stopped)."""
        return 0 if self.stop is not None else self.budget - self.rows

    def query(self, inputs: FloatArray) -> Answer:
        batch = np.asarray(inputs)
        if self.stop is None and self.rows >= self.budget:
            self.stop = StopEvent("budget_exhausted", self.queries, self.rows, "budget spent")
        if self.stop is not None:
            raise AttackStopped(self.stop)
        batch = batch[: self.budget - self.rows]
        answers: list[Answer] = []
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = batch[start : start + self.batch_size]
            try:
                answer = self.target.query(chunk)
            except RateLimitedError as exc:
                self.stop = StopEvent("rate_limited", self.queries, self.rows, str(exc))
            except (AuthenticationError, AuthorizationError) as exc:
                self.stop = StopEvent("blocked", self.queries, self.rows, str(exc))
            if self.stop is not None:
                break
            self._note_degradation(answer)
            self.queries += 1
            self.rows += answer.n_rows
            answers.append(answer)
        if not answers:
            assert self.stop is not None
            raise AttackStopped(self.stop)
        return _concat(answers)

    def _note_degradation(self, answer: Answer) -> None:
        has_probs = answer.probabilities is not None
        lost = self._had_probabilities and not has_probs
        if self.degraded_at is None and (answer.degraded or lost):
            self.degraded_at = self.queries
        self._had_probabilities = self._had_probabilities or has_probs


def _concat(answers: list[Answer]) -> Answer:
    if len(answers) == 1:
        return answers[0]
    labels = np.concatenate([a.labels for a in answers])
    probs: FloatArray | None = None
    if all(a.probabilities is not None for a in answers):
        probs = np.concatenate([a.probabilities for a in answers if a.probabilities is not None])
    return Answer(labels=labels, probabilities=probs, degraded=any(a.degraded for a in answers))
