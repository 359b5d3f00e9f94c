"""What an attack run produces: the stolen copy, its evaluation and the query accounting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from modelshield.attacks._target import FloatArray
from modelshield.models import BasePredictor, InputSpec, Label, Predictor

Outcome = Literal["completed", "budget_exhausted", "rate_limited", "blocked"]


class CopyModel(BasePredictor):
    """The attacker's copy as a modelshield Predictor (validated ``predict_proba``/``predict``).

    ``scorer`` maps a validated batch to ``(n, K)`` probabilities; ``model`` is the underlying
    fitted object (a thief, recovered weights, recovered tree leaves) for inspection.
    """

    def __init__(
        self,
        scorer: Callable[[FloatArray], FloatArray],
        *,
        input_spec: InputSpec,
        classes: Sequence[Label],
        model: object = None,
    ) -> None:
        super().__init__(input_spec=input_spec, classes=classes)
        self._scorer = scorer
        self.model = model

    def _scores(self, batch: Any) -> Any:
        flat = np.asarray(batch, dtype=np.float64).reshape(batch.shape[0], -1)
        return np.asarray(self._scorer(flat), dtype=np.float64)


@dataclass(frozen=True)
class Evaluation:
    """A held-out test set for measuring a copy: inputs, the victim's labels, the true labels.

    Build it with :meth:`from_predictor` from the victim itself (in process, not through the
    target, so that it costs no query).
    """

    inputs: FloatArray
    victim_labels: npt.NDArray[Any]
    true_labels: npt.NDArray[Any] | None = None

    @classmethod
    def from_predictor(
        cls,
        victim: Predictor,
        *,
        inputs: npt.ArrayLike,
        true_labels: npt.ArrayLike | None = None,
    ) -> Evaluation:
        x = np.asarray(inputs, dtype=np.float64)
        truth = None if true_labels is None else np.asarray(true_labels)
        return cls(inputs=x, victim_labels=np.asarray(victim.predict(x)), true_labels=truth)

    @classmethod
    def uniform(
        cls, victim: Predictor, *, n_rows: int = 1000, random_state: int | None = None
    ) -> Evaluation:
        """Agreement on rows drawn uniformly in the victim's declared input range ([0, 1] where
        it declares none): a stand-in when no natural test data is at hand."""
        spec = victim.input_spec
        lo = 0.0 if spec.min_value is None else spec.min_value
        hi = 1.0 if spec.max_value is None else spec.max_value
        rng = np.random.default_rng(random_state)
        x = rng.uniform(lo, hi, size=(n_rows, *spec.shape)).astype(spec.dtype)
        return cls.from_predictor(victim, inputs=x)

    def fidelity(self, copy: Predictor) -> float:
        """Top-1 agreement of ``copy`` with the victim on the test inputs."""
        return float(np.mean(np.asarray(copy.predict(self.inputs)) == self.victim_labels))

    def accuracy(self, copy: Predictor) -> float | None:
        """Accuracy of ``copy`` on the true labels, or ``None`` when they are unknown."""
        if self.true_labels is None:
            return None
        return float(np.mean(np.asarray(copy.predict(self.inputs)) == self.true_labels))


@dataclass(frozen=True)
class AttackResult:
    """One attack run: outcome, accounting, evaluation and the copy.

    ``queries`` and ``rows`` are the requests and rows the target answered; ``stopped_at_query``
    is the index of the refused request when the target rate-limited or blocked the attacker
    (``None`` otherwise); ``degraded_at_query`` the first request whose answer came back degraded.
    ``accuracy`` and ``fidelity`` are ``None`` when no :class:`Evaluation` was given.
    """

    attack: str
    outcome: Outcome
    budget: int
    queries: int
    rows: int
    seconds: float
    accuracy: float | None
    fidelity: float | None
    stopped_at_query: int | None
    stopped_at_row: int | None
    degraded_at_query: int | None
    message: str
    copy: Predictor | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (everything but the copy)."""
        return {
            "attack": self.attack,
            "outcome": self.outcome,
            "budget": self.budget,
            "queries": self.queries,
            "rows": self.rows,
            "seconds": round(self.seconds, 4),
            "accuracy": self.accuracy,
            "fidelity": self.fidelity,
            "stopped_at_query": self.stopped_at_query,
            "stopped_at_row": self.stopped_at_row,
            "degraded_at_query": self.degraded_at_query,
            "message": self.message,
        }
