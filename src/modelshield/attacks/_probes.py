"""Probing query streams: uniform random noise, and the line searches of equation-solving
attacks on label-only APIs (Tramèr et al., USENIX Security 2016, section 6, after Lowd and Meek,
"Adversarial Learning", KDD 2005).

Both are attacks in their own right (each trains a copy from what it bought), and both produce the
query patterns an extraction detector must recognise: rows spread uniformly over the input box,
and chains of rows that halve the distance to a decision boundary.
"""

from __future__ import annotations

import numpy as np

from modelshield.attacks._base import (
    Attack,
    Domain,
    RandomState,
    Transcript,
    answer_targets,
    class_indices,
    domain_of,
)
from modelshield.attacks._knockoff import LabelKind, _TransferSetAttack
from modelshield.attacks._mlp import NumpyMLP
from modelshield.attacks._result import CopyModel
from modelshield.attacks._target import AttackStopped, BudgetedTarget


class UniformNoise(_TransferSetAttack):
    """Queries drawn uniformly at random in the input box, then a thief trained on the answers.

    The "random" query pool of Knockoff Nets (Orekondy et al., CVPR 2019) and the random queries
    of Tramèr et al. (2016); the baseline every detector should flag.
    """

    def __init__(
        self,
        *,
        budget: int,
        labels: LabelKind = "soft",
        thief: object = None,
        lower: float | None = None,
        upper: float | None = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        super().__init__(
            budget=budget,
            pool=None,
            pool_kind="random",
            labels=labels,
            thief=thief,
            lower=lower,
            upper=upper,
            batch_size=batch_size,
            random_state=random_state,
        )


class LineSearch(Attack):
    """Line-search probing of decision boundaries on a label-only API (Tramèr et al. 2016).

    Pairs of rows with different labels are bisected in parallel (``pairs`` per step) until the
    two ends are within ``tolerance`` (Euclidean) of each other, which places points on the
    boundary; new uniform rows supply new pairs. Every labelled row then trains a model of the
    victim's family: softmax regression by default (``hidden_layer_sizes=()``), as in the paper's
    retraining.
    """

    def __init__(
        self,
        *,
        budget: int,
        pairs: int = 20,
        tolerance: float = 1e-2,
        hidden_layer_sizes: tuple[int, ...] = (),
        max_iter: int = 300,
        lower: float | None = None,
        upper: float | None = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        self.budget = budget
        self.pairs = pairs
        self.tolerance = tolerance
        self.hidden_layer_sizes = hidden_layer_sizes
        self.max_iter = max_iter
        self.lower = lower
        self.upper = upper
        self.batch_size = batch_size
        self.random_state = random_state

    def _steal(
        self, target: BudgetedTarget, rng: np.random.Generator
    ) -> tuple[CopyModel | None, str]:
        classes = target.classes
        domain = domain_of(target.input_spec, self.lower, self.upper)
        transcript = Transcript(domain.n_features, len(classes))
        found = line_search(
            target,
            domain=domain,
            transcript=transcript,
            pairs=self.pairs,
            tolerance=self.tolerance,
            rng=rng,
        )
        if len(transcript) == 0:
            return None, "no query was answered"
        model = NumpyMLP(
            hidden_layer_sizes=self.hidden_layer_sizes, max_iter=self.max_iter, random_state=rng
        ).fit(transcript.inputs, transcript.targets)
        copy = CopyModel(
            model.predict_proba, input_spec=target.input_spec, classes=classes, model=model
        )
        return copy, f"{found} boundary points located, model fitted on {len(transcript)} rows"


def line_search(
    target: BudgetedTarget,
    *,
    domain: Domain,
    transcript: Transcript,
    pairs: int,
    tolerance: float,
    rng: np.random.Generator,
) -> int:
    """Spend the rest of the budget on line searches; every labelled row goes into
    ``transcript`` (one-hot). Returns the number of boundary points located."""
    classes = target.classes
    found = 0
    try:
        while target.remaining > 0:
            seeds = domain.uniform(min(2 * pairs, target.remaining), rng)
            answer = target.query(domain.shaped(seeds))
            seeds = seeds[: answer.n_rows]
            transcript.add(seeds, answer_targets(answer, classes, soft=False))
            labels = class_indices(answer, classes)
            half = seeds.shape[0] // 2
            differ = np.flatnonzero(labels[:half] != labels[half : 2 * half])
            a, b = seeds[differ], seeds[half + differ]
            la = labels[differ]
            while a.shape[0] and target.remaining > 0:
                open_ = np.linalg.norm(a - b, axis=1) > tolerance
                found += int((~open_).sum())
                a, b, la = a[open_], b[open_], la[open_]
                if not a.shape[0]:
                    break
                mid = domain.cast((a + b) / 2.0)
                answer = target.query(domain.shaped(mid))
                n = answer.n_rows
                mid, a, b, la = mid[:n], a[:n], b[:n], la[:n]
                transcript.add(mid, answer_targets(answer, classes, soft=False))
                same = class_indices(answer, classes) == la
                a = np.where(same[:, None], mid, a)
                b = np.where(same[:, None], b, mid)
    except AttackStopped:
        pass
    return found
