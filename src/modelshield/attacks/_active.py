"""Active-learning extraction (Pal et al., "ActiveThief: Model Extraction Using Active Learning and
Unannotated Public Data", AAAI 2020).

The thief is trained on a small random part of an unlabelled natural pool, then, round after
round, picks the pool rows the victim's answers should teach it most: the rows the thief is least
sure about (``uncertainty``: highest entropy of its probabilities) or the rows farthest from
everything already labelled in the thief's output space (``kcenter``: greedy k-center, the
core-set selection of Sener and Savarese 2018 that ActiveThief uses). ``random`` is the baseline.
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
from modelshield.attacks._knockoff import LabelKind, flat_pool
from modelshield.attacks._result import CopyModel
from modelshield.attacks._target import AttackStopped, BudgetedTarget, FloatArray
from modelshield.attacks._thief import Thief, as_thief

Strategy = Literal["uncertainty", "kcenter", "random"]


def entropy_order(probs: FloatArray) -> npt.NDArray[np.int64]:
    """Indices of rows sorted by decreasing entropy."""
    ent = -np.sum(probs * np.log(np.clip(probs, 1e-12, None)), axis=1)
    return np.argsort(-ent, kind="stable")


def kcenter_greedy(candidates: FloatArray, centers: FloatArray, k: int) -> npt.NDArray[np.int64]:
    """Greedy k-center: ``k`` candidate indices, each the farthest from all centers so far."""
    dist = np.full(candidates.shape[0], np.inf)
    for start in range(0, centers.shape[0], 512):
        block = centers[start : start + 512]
        d2 = ((candidates[:, None, :] - block[None, :, :]) ** 2).sum(axis=2)
        dist = np.minimum(dist, d2.min(axis=1))
    chosen: list[int] = []
    for _ in range(min(k, candidates.shape[0])):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, ((candidates - candidates[i]) ** 2).sum(axis=1))
        dist[i] = -1.0
    return np.asarray(chosen, dtype=np.int64)


class ActiveThief(Attack):
    """ActiveThief (Pal et al., AAAI 2020): pool-based active learning against the victim.

    ``pool`` is unlabelled natural data; ``initial`` rows are drawn at random (default: a tenth
    of the budget), then the rest of the budget is spent in ``rounds`` equal selections by
    ``strategy``. ``thief`` is anything :class:`KnockoffNets` accepts.
    """

    def __init__(
        self,
        *,
        budget: int,
        pool: npt.ArrayLike,
        strategy: Strategy = "uncertainty",
        initial: int | None = None,
        rounds: int = 5,
        labels: LabelKind = "soft",
        thief: object = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        self.budget = budget
        self.pool = pool
        self.strategy = strategy
        self.initial = initial
        self.rounds = rounds
        self.labels = labels
        self.thief = thief
        self.batch_size = batch_size
        self.random_state = random_state

    def _select(
        self, thief: Thief, pool: FloatArray, labelled: FloatArray, k: int, rng: np.random.Generator
    ) -> npt.NDArray[np.int64]:
        if self.strategy == "random":
            return rng.choice(pool.shape[0], size=k, replace=False).astype(np.int64)
        probs = thief.predict_proba(pool)
        if self.strategy == "uncertainty":
            return entropy_order(probs)[:k]
        return kcenter_greedy(probs, thief.predict_proba(labelled), k)

    def _steal(
        self, target: BudgetedTarget, rng: np.random.Generator
    ) -> tuple[CopyModel | None, str]:
        if self.strategy not in ("uncertainty", "kcenter", "random"):
            raise ValueError(f"unknown strategy {self.strategy!r}")
        classes = target.classes
        domain = domain_of(target.input_spec, None, None)
        pool = flat_pool(self.pool)
        if pool is None or pool.shape[0] == 0:
            raise ValueError("ActiveThief needs a pool of unlabelled natural data")
        pool = domain.cast(pool)
        soft = self.labels == "soft"
        thief = as_thief(self.thief, random_state=rng)
        spend = min(self.budget, pool.shape[0])
        first = self.initial if self.initial is not None else max(1, spend // 10)
        first = min(first, spend)
        per_round = max(1, (spend - first) // max(1, self.rounds))
        unlabelled = np.ones(pool.shape[0], dtype=bool)
        transcript = Transcript(domain.n_features, len(classes))
        pick = rng.choice(pool.shape[0], size=first, replace=False)
        fitted_rows = -1
        try:
            for r in range(self.rounds + 1):
                if r > 0:
                    # the last round takes whatever the budget and the pool still allow
                    k = per_round if r < self.rounds else spend
                    k = min(k, target.remaining, int(unlabelled.sum()))
                    if k <= 0:
                        break
                    candidates = np.flatnonzero(unlabelled)
                    local = self._select(thief, pool[candidates], transcript.inputs, k, rng)
                    pick = candidates[local]
                unlabelled[pick] = False
                answer = target.query(domain.shaped(pool[pick]))
                transcript.add(pool[pick], answer_targets(answer, classes, soft=soft))
                thief.fit(transcript.inputs, transcript.targets)
                fitted_rows = len(transcript)
        except AttackStopped:
            pass
        if len(transcript) == 0:
            return None, "no query was answered"
        if fitted_rows != len(transcript):
            thief.fit(transcript.inputs, transcript.targets)
        copy = CopyModel(
            thief.predict_proba, input_spec=target.input_spec, classes=classes, model=thief
        )
        return copy, f"{self.strategy} selection, thief trained on {len(transcript)} rows"
