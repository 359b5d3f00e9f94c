"""Jacobian-based dataset augmentation (Papernot et al., "Practical Black-Box Attacks against
Machine Learning", AsiaCCS 2017, section 4).

Starting from a small natural seed set labelled by the victim, the attacker trains a
differentiable substitute and grows the set with ``x + lambda * sign(dF_y(x)/dx)``, where ``y``
is the victim's label of ``x``: new points step towards the substitute's decision boundaries,
where the victim's answers teach the most. The step's sign flips every ``tau`` rounds (the paper's
periodic step size) and, past ``reservoir`` rows, only a random subset of the set is augmented
(reservoir sampling), so that the query cost stays linear in the number of rounds.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from modelshield.attacks._base import (
    Attack,
    RandomState,
    Transcript,
    answer_targets,
    domain_of,
)
from modelshield.attacks._knockoff import PoolKind, draw_pool, flat_pool
from modelshield.attacks._mlp import NumpyMLP
from modelshield.attacks._result import CopyModel
from modelshield.attacks._target import AttackStopped, BudgetedTarget


class JacobianAugmentation(Attack):
    """Papernot et al. (2017) substitute training with Jacobian-based dataset augmentation.

    ``seed`` holds natural rows; ``n_seed`` of them start the set (uniform random rows when no
    seed is given). ``step`` is lambda, in input units; ``rounds`` the number of augmentations;
    the substitute is a numpy MLP with ``hidden_layer_sizes`` trained by L-BFGS.
    """

    def __init__(
        self,
        *,
        budget: int,
        seed: npt.ArrayLike | None = None,
        n_seed: int = 100,
        rounds: int = 6,
        step: float = 0.1,
        tau: int | None = 3,
        reservoir: int | None = None,
        labels: Literal["soft", "hard"] = "hard",
        hidden_layer_sizes: tuple[int, ...] = (64,),
        max_iter: int = 200,
        lower: float | None = None,
        upper: float | None = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        self.budget = budget
        self.seed = seed
        self.n_seed = n_seed
        self.rounds = rounds
        self.step = step
        self.tau = tau
        self.reservoir = reservoir
        self.labels = labels
        self.hidden_layer_sizes = hidden_layer_sizes
        self.max_iter = max_iter
        self.lower = lower
        self.upper = upper
        self.batch_size = batch_size
        self.random_state = random_state

    def _substitute(self, rng: np.random.Generator) -> NumpyMLP:
        return NumpyMLP(
            hidden_layer_sizes=self.hidden_layer_sizes, max_iter=self.max_iter, random_state=rng
        )

    def _steal(
        self, target: BudgetedTarget, rng: np.random.Generator
    ) -> tuple[CopyModel | None, str]:
        classes = target.classes
        domain = domain_of(target.input_spec, self.lower, self.upper)
        pool = flat_pool(self.seed)
        kind: PoolKind = "random" if pool is None else "natural"
        x = draw_pool(kind=kind, n=min(self.n_seed, self.budget), domain=domain, pool=pool, rng=rng)
        transcript = Transcript(domain.n_features, len(classes))
        soft = self.labels == "soft"
        substitute: NumpyMLP | None = None
        done = 0
        try:
            answer = target.query(domain.shaped(x))
            transcript.add(x, answer_targets(answer, classes, soft=soft))
            for r in range(self.rounds):
                substitute = self._substitute(rng).fit(transcript.inputs, transcript.targets)
                base = transcript.inputs
                oracle = np.argmax(transcript.targets, axis=1)
                if self.reservoir is not None and base.shape[0] > self.reservoir:
                    keep = rng.choice(base.shape[0], size=self.reservoir, replace=False)
                    base, oracle = base[keep], oracle[keep]
                sign = -1.0 if self.tau and (r // self.tau) % 2 == 1 else 1.0
                grad = substitute.input_gradient(base, oracle)
                new = domain.clip(base + sign * self.step * np.sign(grad))
                if new.shape[0] > target.remaining:
                    new = new[rng.choice(new.shape[0], size=target.remaining, replace=False)]
                answer = target.query(domain.shaped(new))
                transcript.add(new, answer_targets(answer, classes, soft=soft))
                substitute = None
                done = r + 1
        except AttackStopped:
            pass
        if len(transcript) == 0:
            return None, "no query was answered"
        if substitute is None:
            substitute = self._substitute(rng).fit(transcript.inputs, transcript.targets)
        copy = CopyModel(
            substitute.predict_proba,
            input_spec=target.input_spec,
            classes=classes,
            model=substitute,
        )
        return copy, f"{done} augmentation rounds, substitute trained on {len(transcript)} rows"
