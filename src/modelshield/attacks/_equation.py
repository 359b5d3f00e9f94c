"""Equation-solving extraction (Tramèr et al., "Stealing Machine Learning Models via Prediction
APIs", USENIX Security 2016, section 4.1).

For a logistic or softmax regression that returns probabilities, each answered row gives linear
equations in the unknown weights: ``log p_k(x) - log p_0(x) = (w_k - w_0) . x + (b_k - b_0)``.
``d + 1`` rows in general position determine them exactly. For a multilayer perceptron the
equations are not linear, and, as in the paper, the copy is found by minimising the cross-entropy
between its probabilities and the victim's on random queries. When the target returns labels
only, the attack falls back to retraining the same model family on the labels it bought.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from modelshield.attacks._base import (
    Attack,
    RandomState,
    Transcript,
    answer_targets,
    domain_of,
)
from modelshield.attacks._mlp import NumpyMLP
from modelshield.attacks._probes import line_search
from modelshield.attacks._result import CopyModel
from modelshield.attacks._target import AttackStopped, BudgetedTarget, FloatArray

ModelFamily = Literal["logistic", "softmax", "mlp"]


@dataclass(frozen=True)
class LinearModel:
    """Recovered logistic/softmax weights, laid out as scikit-learn's ``coef_``/``intercept_``.

    Binary: ``coef_`` is ``(1, d)`` and the probability of the second class is
    ``sigmoid(x . coef_[0] + intercept_[0])``. Multiclass: ``(K, d)`` with the first class's row
    fixed at zero (softmax weights are only defined up to a common shift).
    """

    coef_: FloatArray
    intercept_: FloatArray

    def predict_proba(self, inputs: FloatArray) -> FloatArray:
        z = inputs @ self.coef_.T + self.intercept_
        if self.coef_.shape[0] == 1:
            z = np.hstack([np.zeros_like(z), z])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out: FloatArray = e / e.sum(axis=1, keepdims=True)
        return out


class EquationSolving(Attack):
    """Tramèr et al. (2016) equation-solving extraction of logistic, softmax and MLP models.

    ``model`` names the victim's family: ``logistic`` (two classes) and ``softmax`` are solved
    exactly from ``n_queries`` uniform random rows (default ``d + 1``) when probabilities are
    returned; ``mlp`` fits a numpy MLP with ``hidden_layer_sizes`` to the probabilities of
    ``n_queries`` rows (default: the whole budget) by L-BFGS. Queries are drawn uniformly in
    ``[lower, upper]`` (default: the target's declared input range).
    """

    def __init__(
        self,
        *,
        budget: int,
        model: ModelFamily = "logistic",
        n_queries: int | None = None,
        hidden_layer_sizes: tuple[int, ...] = (20,),
        max_iter: int = 500,
        alpha: float = 1e-4,
        lower: float | None = None,
        upper: float | None = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        self.budget = budget
        self.model = model
        self.n_queries = n_queries
        self.hidden_layer_sizes = hidden_layer_sizes
        self.max_iter = max_iter
        self.alpha = alpha
        self.lower = lower
        self.upper = upper
        self.batch_size = batch_size
        self.random_state = random_state

    def _steal(
        self, target: BudgetedTarget, rng: np.random.Generator
    ) -> tuple[CopyModel | None, str]:
        if self.model not in ("logistic", "softmax", "mlp"):
            raise ValueError(f"unknown model family {self.model!r}")
        classes = target.classes
        if self.model == "logistic" and len(classes) != 2:
            raise ValueError(f"model='logistic' needs two classes, the target has {len(classes)}")
        domain = domain_of(target.input_spec, self.lower, self.upper)
        d = domain.n_features
        exact = self.model != "mlp"
        n = self.n_queries if self.n_queries is not None else (d + 1 if exact else self.budget)
        x = domain.uniform(min(n, self.budget), rng)
        transcript = Transcript(d, len(classes))
        probs: list[FloatArray] = []
        labels_only = False
        try:
            answer = target.query(domain.shaped(x))
            if answer.probabilities is None:
                labels_only = True
            else:
                probs.append(answer.probabilities)
            transcript.add(x, answer_targets(answer, classes, soft=True))
        except AttackStopped:
            pass
        if labels_only and exact:
            # no scores to solve with: Tramèr et al.'s section 6 retraining, the rest of the
            # budget spent on line searches towards the decision boundaries
            line_search(
                target, domain=domain, transcript=transcript, pairs=20, tolerance=1e-2, rng=rng
            )
        if len(transcript) == 0:
            return None, "no query was answered"
        spec = target.input_spec
        if exact and not labels_only:
            model = _solve_linear(
                transcript.inputs, np.concatenate(probs), binary=len(classes) == 2
            )
            copy = CopyModel(model.predict_proba, input_spec=spec, classes=classes, model=model)
            return copy, f"solved {model.coef_.size + model.intercept_.size} unknowns exactly"
        hidden = self.hidden_layer_sizes if self.model == "mlp" else ()
        mlp = NumpyMLP(
            hidden_layer_sizes=hidden,
            alpha=self.alpha,
            max_iter=self.max_iter,
            random_state=rng,
        ).fit(transcript.inputs, transcript.targets)
        how = "retrained on labels only" if labels_only else "fitted to the probabilities"
        return CopyModel(mlp.predict_proba, input_spec=spec, classes=classes, model=mlp), how


def _solve_linear(x: FloatArray, probs: FloatArray, *, binary: bool) -> LinearModel:
    logp = np.log(np.clip(probs, 1e-300, None))
    rhs = logp[:, 1:] - logp[:, :1]
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    theta, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    coef = theta[:-1].T
    intercept = theta[-1]
    if not binary:
        coef = np.vstack([np.zeros((1, x.shape[1])), coef])
        intercept = np.concatenate([[0.0], intercept])
    return LinearModel(coef_=np.asarray(coef), intercept_=np.asarray(intercept))
