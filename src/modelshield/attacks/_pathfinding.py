"""Path-finding extraction of decision trees (Tramèr et al., "Stealing Machine Learning Models via
Prediction APIs", USENIX Security 2016, section 4.2).

When the API reveals which leaf answered (here: a distinct probability vector per leaf, as a tree
returning leaf class frequencies does), each leaf is an axis-aligned box, and moving one feature of
a point while holding the others fixed stays in the leaf exactly on an interval. The attack finds
that interval on every feature by binary search (all features of a leaf searched in parallel, one
request per step), records the leaf's box and answer, and continues from the points just outside
each face, which lie in other leaves, until no unexplored leaf is known or the budget is spent.
The copy answers with the box that contains a row (or the nearest box for a leaf never reached).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from modelshield.attacks._base import Attack, Domain, RandomState, domain_of
from modelshield.attacks._result import CopyModel
from modelshield.attacks._target import (
    Answer,
    AttackStopped,
    BudgetedTarget,
    FloatArray,
    StopEvent,
)


@dataclass(frozen=True)
class LeafBoxes:
    """Recovered leaves: box ``i`` is ``lower[i] <= x <= upper[i]`` and answers ``scores[i]``.

    The first ``n_leaves`` boxes are explored leaves; the rest are single points seen in leaves
    the budget did not reach. A row is answered by the box nearest to it (L1 distance).
    """

    lower: FloatArray
    upper: FloatArray
    scores: FloatArray
    n_leaves: int

    def predict_proba(self, inputs: FloatArray) -> FloatArray:
        out = np.empty((inputs.shape[0], self.scores.shape[1]))
        for start in range(0, inputs.shape[0], 256):
            x = inputs[start : start + 256, None, :]
            gap = np.maximum(self.lower[None] - x, 0.0) + np.maximum(x - self.upper[None], 0.0)
            out[start : start + 256] = self.scores[np.argmin(gap.sum(axis=2), axis=1)]
        return out


class PathFinding(Attack):
    """Tramèr et al. (2016) path-finding extraction of a decision tree that reveals its leaves.

    ``n_seeds`` uniform random rows start the exploration; ``tolerance`` is the width (in input
    units) to which each split threshold is located; ``precision`` the number of decimals of the
    returned probabilities that identify a leaf. Against a labels-only target the label stands in
    for the leaf, which recovers far less.
    """

    def __init__(
        self,
        *,
        budget: int,
        n_seeds: int = 20,
        tolerance: float = 1e-6,
        precision: int = 9,
        lower: float | None = None,
        upper: float | None = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        self.budget = budget
        self.n_seeds = n_seeds
        self.tolerance = tolerance
        self.precision = precision
        self.lower = lower
        self.upper = upper
        self.batch_size = batch_size
        self.random_state = random_state

    def _steal(
        self, target: BudgetedTarget, rng: np.random.Generator
    ) -> tuple[CopyModel | None, str]:
        domain = domain_of(target.input_spec, self.lower, self.upper)
        n_classes = len(target.classes)
        explorer = _Explorer(target, domain, n_classes, self.precision, self.tolerance)
        try:
            seeds = domain.uniform(max(1, self.n_seeds), rng)
            explorer.enqueue(seeds, explorer.ask(seeds, partial=True))
            while explorer.queue:
                point, key, scores = explorer.queue[0]
                if not explorer.known(point, key):
                    explorer.explore(point, key, scores)
                explorer.queue.pop(0)
            message = f"explored all {len(explorer.boxes)} leaves found"
        except AttackStopped:
            message = f"explored {len(explorer.boxes)} leaves before the budget ran out"
        if not explorer.boxes and not explorer.queue:
            return None, "no query was answered"
        boxes = explorer.result()
        copy = CopyModel(
            boxes.predict_proba, input_spec=target.input_spec, classes=target.classes, model=boxes
        )
        return copy, message


Leaf = tuple[FloatArray, Hashable, FloatArray]


class _Explorer:
    def __init__(
        self,
        target: BudgetedTarget,
        domain: Domain,
        n_classes: int,
        precision: int,
        tolerance: float,
    ) -> None:
        self.target = target
        self.domain = domain
        self.n_classes = n_classes
        self.precision = precision
        self.tolerance = tolerance
        self.boxes: list[tuple[FloatArray, FloatArray, Hashable, FloatArray]] = []
        self.queue: list[Leaf] = []
        self.labels_only = False

    def ask(self, x: FloatArray, *, partial: bool = False) -> list[tuple[Hashable, FloatArray]]:
        """Leaf key and score vector of every row (raises AttackStopped when out of budget,
        unless ``partial``: then the rows answered)."""
        answer = self.target.query(self.domain.shaped(x))
        if answer.n_rows < x.shape[0] and partial:
            self.enqueue(x[: answer.n_rows], self._keys(answer))
        if answer.n_rows < x.shape[0]:
            # a partial answer cannot place a leaf's faces: the exploration ends here
            t = self.target
            raise AttackStopped(
                t.stop or StopEvent("budget_exhausted", t.queries, t.rows, "budget spent")
            )
        return self._keys(answer)

    def _keys(self, answer: Answer) -> list[tuple[Hashable, FloatArray]]:
        if answer.probabilities is None:
            self.labels_only = True
            lookup = {label: i for i, label in enumerate(self.target.classes)}
            out: list[tuple[Hashable, FloatArray]] = []
            for label in answer.labels:
                scores = np.zeros(self.n_classes)
                scores[lookup[label.item() if isinstance(label, np.generic) else label]] = 1.0
                out.append((("label", float(np.argmax(scores))), scores))
            return out
        rounded = np.round(answer.probabilities, self.precision)
        return [(tuple(row.tolist()), row) for row in rounded]

    def enqueue(self, x: FloatArray, keys: list[tuple[Hashable, FloatArray]]) -> None:
        for row, (key, scores) in zip(x, keys, strict=True):
            if not self.known(row, key):
                self.queue.append((row, key, scores))

    def known(self, point: FloatArray, key: Hashable) -> bool:
        """True when ``point`` lies in an explored box that gave the same answer."""
        for lo, hi, box_key, _ in self.boxes:
            slack = self.tolerance
            if box_key == key and bool(np.all((lo - slack <= point) & (point <= hi + slack))):
                return True
        return False

    def explore(self, point: FloatArray, key: Hashable, scores: FloatArray) -> None:
        d = self.domain.n_features
        lo_bound, hi_bound = self.domain.lower, self.domain.upper
        # one probe at each end of every feature's range
        probes = np.repeat(point[None], 2 * d, axis=0)
        ends = np.concatenate([lo_bound, hi_bound])
        probes[np.arange(2 * d), np.tile(np.arange(d), 2)] = ends
        probes = self.domain.cast(probes)
        keys = self.ask(probes)
        self.enqueue(probes, keys)
        feature = np.tile(np.arange(d), 2)
        inside = np.concatenate([point, point])
        outside = probes[np.arange(2 * d), feature].copy()
        active = np.array([k != key for k, _ in keys])
        # a face at the domain's edge: the box reaches the bound
        bound = np.where(active, np.nan, outside)
        while active.any():
            idx = np.flatnonzero(active)
            mid = self.domain.cast((inside[idx] + outside[idx]) / 2.0)
            step = np.repeat(point[None], idx.shape[0], axis=0)
            step[np.arange(idx.shape[0]), feature[idx]] = mid
            got = self.ask(step)
            same = np.array([k == key for k, _ in got])
            stuck = (mid == inside[idx]) | (mid == outside[idx])
            inside[idx[same]] = mid[same]
            outside[idx[~same]] = mid[~same]
            self.enqueue(step[~same], [g for g, s in zip(got, same, strict=True) if not s])
            # stop at the tolerance, or when the float grid between the two is exhausted
            done = np.abs(outside[idx] - inside[idx]) <= self.tolerance
            done |= stuck
            active[idx[done]] = False
        # boundary estimate between the last inside and first outside value
        edge = np.where(np.isnan(bound), (inside + outside) / 2.0, bound)
        self.boxes.append((edge[:d], edge[d:], key, scores))

    def result(self) -> LeafBoxes:
        """The explored boxes, plus the points seen in unexplored leaves as single-point boxes
        (nearest-neighbour answers where the budget did not reach)."""
        seen = [(p, p, key, scores) for p, key, scores in self.queue if not self.known(p, key)]
        lows, highs, _, scores = zip(*self.boxes, *seen, strict=True)
        return LeafBoxes(np.vstack(lows), np.vstack(highs), np.vstack(scores), len(self.boxes))
