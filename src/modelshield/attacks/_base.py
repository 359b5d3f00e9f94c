"""The shared run loop of every attack and small helpers over targets and answers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from modelshield.attacks._result import AttackResult, CopyModel, Evaluation, Outcome
from modelshield.attacks._target import Answer, BudgetedTarget, FloatArray, Target
from modelshield.models import InputSpec, Label

RandomState = int | np.random.Generator | None


def as_generator(random_state: RandomState) -> np.random.Generator:
    """A numpy Generator from a seed, an existing generator or ``None`` (fresh entropy)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


@dataclass(frozen=True)
class Domain:
    """Bounds of the input space, per element, flattened."""

    lower: FloatArray
    upper: FloatArray
    spec: InputSpec

    @property
    def n_features(self) -> int:
        return int(self.lower.shape[0])

    def uniform(self, n: int, rng: np.random.Generator) -> FloatArray:
        """``n`` rows drawn uniformly in the box, rounded to the model's dtype."""
        x = rng.uniform(self.lower, self.upper, size=(n, self.n_features))
        return self.cast(x)

    def clip(self, x: FloatArray) -> FloatArray:
        return self.cast(np.clip(x, self.lower, self.upper))

    def cast(self, x: npt.ArrayLike) -> FloatArray:
        """Round to what the target computes with, so attacks solve on the exact inputs sent."""
        return np.asarray(x, dtype=self.spec.dtype).astype(np.float64)

    def shaped(self, x: FloatArray) -> FloatArray:
        """Rows reshaped to the target's input shape."""
        return x.reshape((x.shape[0], *self.spec.shape))


def domain_of(spec: InputSpec, lower: float | None, upper: float | None) -> Domain:
    """The input box: explicit bounds first, else the spec's, else [0, 1]."""
    lo = lower if lower is not None else spec.min_value
    hi = upper if upper is not None else spec.max_value
    lo = 0.0 if lo is None else float(lo)
    hi = 1.0 if hi is None else float(hi)
    if not lo < hi:
        raise ValueError(f"empty input domain [{lo}, {hi}]")
    d = spec.n_features
    return Domain(np.full(d, lo), np.full(d, hi), spec)


def class_indices(answer: Answer, classes: tuple[Label, ...]) -> npt.NDArray[np.int64]:
    """Column indices (into ``classes``) of the answered labels."""
    lookup = {label: i for i, label in enumerate(classes)}
    return np.asarray([lookup[_plain(v)] for v in answer.labels], dtype=np.int64)


def _plain(value: Any) -> Label:
    if isinstance(value, np.generic):
        value = value.item()
    return value  # type: ignore[no-any-return]


def one_hot(indices: npt.NDArray[np.int64], n_classes: int) -> FloatArray:
    out = np.zeros((indices.shape[0], n_classes))
    out[np.arange(indices.shape[0]), indices] = 1.0
    return out


def answer_targets(answer: Answer, classes: tuple[Label, ...], *, soft: bool) -> FloatArray:
    """Training targets: the answer's probabilities when ``soft`` and present, else one-hot."""
    if soft and answer.probabilities is not None:
        probs = np.clip(answer.probabilities, 0.0, None)
        sums = probs.sum(axis=1, keepdims=True)
        sums[sums <= 0] = 1.0
        return np.asarray(probs / sums, dtype=np.float64)
    return one_hot(class_indices(answer, classes), len(classes))


class Transcript:
    """The inputs an attack sent and the targets it learned from, accumulated in order."""

    def __init__(self, n_features: int, n_classes: int) -> None:
        self._x: list[FloatArray] = [np.empty((0, n_features))]
        self._t: list[FloatArray] = [np.empty((0, n_classes))]

    def add(self, x: FloatArray, targets: FloatArray) -> None:
        self._x.append(x[: targets.shape[0]])
        self._t.append(targets)

    @property
    def inputs(self) -> FloatArray:
        return np.concatenate(self._x)

    @property
    def targets(self) -> FloatArray:
        return np.concatenate(self._t)

    def __len__(self) -> int:
        return sum(t.shape[0] for t in self._t)


class Attack:
    """Run loop shared by every attack: budgeted target, timing, evaluation, result.

    Subclasses implement ``_steal(target, rng)`` returning the copy (or ``None`` when nothing could
    be learned) and whether the attack finished its plan before the budget ran out.
    """

    budget: int
    batch_size: int
    random_state: RandomState

    def run(self, target: Target, *, evaluation: Evaluation | None = None) -> AttackResult:
        """Attack ``target`` within the budget and return the measured result."""
        if self.budget < 1:
            raise ValueError(f"budget must be at least 1 row, got {self.budget}")
        started = time.perf_counter()
        ledger = BudgetedTarget(target, budget=self.budget, batch_size=self.batch_size)
        # the thieves are small dense models: one BLAS thread is fastest, and on a shared
        # machine several threads per process thrash (30x slower measured on 2 busy cores)
        with threadpool_limits(limits=1):
            copy, message = self._steal(ledger, as_generator(self.random_state))
        seconds = time.perf_counter() - started
        outcome: Outcome = "completed"
        stopped_at: int | None = None
        stopped_row: int | None = None
        if ledger.stop is not None:
            outcome = ledger.stop.kind
            if ledger.stop.kind != "budget_exhausted":
                stopped_at, stopped_row = ledger.stop.query_index, ledger.stop.row_index
                message = f"{message}; stopped: {ledger.stop.message}".lstrip("; ")
        elif ledger.rows >= ledger.budget:
            outcome = "budget_exhausted"
        accuracy = fidelity = None
        if evaluation is not None and copy is not None:
            accuracy, fidelity = evaluation.accuracy(copy), evaluation.fidelity(copy)
        return AttackResult(
            attack=type(self).__name__,
            outcome=outcome,
            budget=self.budget,
            queries=ledger.queries,
            rows=ledger.rows,
            seconds=seconds,
            accuracy=accuracy,
            fidelity=fidelity,
            stopped_at_query=stopped_at,
            stopped_at_row=stopped_row,
            degraded_at_query=ledger.degraded_at,
            message=message,
            copy=copy,
        )

    def _steal(
        self, target: BudgetedTarget, rng: np.random.Generator
    ) -> tuple[CopyModel | None, str]:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (scikit-learn style)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"
