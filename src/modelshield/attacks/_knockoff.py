"""Transfer-set attacks: Copycat CNN (Correia-Silva et al., "Copycat CNN: Stealing Knowledge by
Persuading Confession with Random Non-Labeled Data", IJCNN 2018) and Knockoff Nets (Orekondy et
al., "Knockoff Nets: Stealing Functionality of Black-Box Models", CVPR 2019).

The attacker draws a transfer set from a query pool, has the victim label it, and trains a thief
on the answers. Both papers use the same loop; Copycat trains on hard labels, Knockoff on the
victim's probability vectors. Knockoff's "random" sampling strategy is implemented; its adaptive
(bandit) strategy is not.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from modelshield.attacks._base import (
    Attack,
    Domain,
    RandomState,
    Transcript,
    answer_targets,
    domain_of,
)
from modelshield.attacks._result import CopyModel
from modelshield.attacks._target import AttackStopped, BudgetedTarget, FloatArray
from modelshield.attacks._thief import as_thief

PoolKind = Literal["natural", "random", "synthetic"]
LabelKind = Literal["soft", "hard"]


def draw_pool(
    *,
    kind: PoolKind,
    n: int,
    domain: Domain,
    pool: FloatArray | None,
    rng: np.random.Generator,
) -> FloatArray:
    """``n`` query rows of the given kind.

    ``natural``: rows of ``pool`` (data from a related distribution) without replacement, then,
    past the pool's size, synthetic rows made from it. ``random``: uniform in the input box.
    ``synthetic``: mixup of random pairs of pool rows (convex combinations) with a little Gaussian
    noise, clipped to the input box.
    """
    if kind == "random":
        return domain.uniform(n, rng)
    if pool is None or pool.shape[0] == 0:
        raise ValueError(f"pool_kind={kind!r} needs a pool of natural data")
    if kind == "natural":
        take = min(n, pool.shape[0])
        rows = pool[rng.choice(pool.shape[0], size=take, replace=False)]
        if take == n:
            return domain.cast(rows)
        extra = draw_pool(kind="synthetic", n=n - take, domain=domain, pool=pool, rng=rng)
        return np.vstack([domain.cast(rows), extra])
    if kind == "synthetic":
        a = pool[rng.integers(pool.shape[0], size=n)]
        b = pool[rng.integers(pool.shape[0], size=n)]
        lam = rng.uniform(size=(n, 1))
        scale = 0.05 * (domain.upper - domain.lower)
        return domain.clip(lam * a + (1 - lam) * b + rng.normal(size=a.shape) * scale)
    raise ValueError(f"unknown pool kind {kind!r}")


def flat_pool(pool: npt.ArrayLike | None) -> FloatArray | None:
    if pool is None:
        return None
    arr = np.asarray(pool, dtype=np.float64)
    return arr.reshape(arr.shape[0], -1)


class _TransferSetAttack(Attack):
    labels: LabelKind

    def __init__(
        self,
        *,
        budget: int,
        pool: npt.ArrayLike | None = None,
        pool_kind: PoolKind = "natural",
        labels: LabelKind = "soft",
        thief: object = None,
        lower: float | None = None,
        upper: float | None = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        self.budget = budget
        self.pool = pool
        self.pool_kind = pool_kind
        self.labels = labels
        self.thief = thief
        self.lower = lower
        self.upper = upper
        self.batch_size = batch_size
        self.random_state = random_state

    def _steal(
        self, target: BudgetedTarget, rng: np.random.Generator
    ) -> tuple[CopyModel | None, str]:
        if self.labels not in ("soft", "hard"):
            raise ValueError(f"labels must be 'soft' or 'hard', got {self.labels!r}")
        classes = target.classes
        domain = domain_of(target.input_spec, self.lower, self.upper)
        thief = as_thief(self.thief, random_state=rng)
        x = draw_pool(
            kind=self.pool_kind, n=self.budget, domain=domain, pool=flat_pool(self.pool), rng=rng
        )
        transcript = Transcript(domain.n_features, len(classes))
        try:
            answer = target.query(domain.shaped(x))
            transcript.add(x, answer_targets(answer, classes, soft=self.labels == "soft"))
        except AttackStopped:
            pass
        if len(transcript) == 0:
            return None, "no query was answered"
        thief.fit(transcript.inputs, transcript.targets)
        copy = CopyModel(
            thief.predict_proba, input_spec=target.input_spec, classes=classes, model=thief
        )
        return copy, f"thief trained on {len(transcript)} {self.labels}-labelled rows"


class KnockoffNets(_TransferSetAttack):
    """Knockoff Nets (Orekondy et al., CVPR 2019), random strategy: soft labels by default.

    ``pool`` is natural data from a related distribution; ``pool_kind`` chooses natural rows,
    uniform random rows or synthetic (mixup) rows. ``thief`` is a scikit-learn estimator, a
    ``torch.nn.Module`` returning logits, a thief object, or ``None`` for a numpy MLP.
    """

    def __init__(
        self,
        *,
        budget: int,
        pool: npt.ArrayLike | None = None,
        pool_kind: PoolKind = "natural",
        labels: LabelKind = "soft",
        thief: object = None,
        lower: float | None = None,
        upper: float | None = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        super().__init__(
            budget=budget,
            pool=pool,
            pool_kind=pool_kind,
            labels=labels,
            thief=thief,
            lower=lower,
            upper=upper,
            batch_size=batch_size,
            random_state=random_state,
        )


class Copycat(_TransferSetAttack):
    """Copycat CNN (Correia-Silva et al., IJCNN 2018): hard labels by default.

    Same parameters as :class:`KnockoffNets`.
    """

    def __init__(
        self,
        *,
        budget: int,
        pool: npt.ArrayLike | None = None,
        pool_kind: PoolKind = "natural",
        labels: LabelKind = "hard",
        thief: object = None,
        lower: float | None = None,
        upper: float | None = None,
        batch_size: int = 100,
        random_state: RandomState = None,
    ) -> None:
        super().__init__(
            budget=budget,
            pool=pool,
            pool_kind=pool_kind,
            labels=labels,
            thief=thief,
            lower=lower,
            upper=upper,
            batch_size=batch_size,
            random_state=random_state,
        )


def shift_images(
    images: npt.ArrayLike,
    *,
    image_shape: tuple[int, int],
    max_shift: int = 1,
    random_state: RandomState = None,
) -> FloatArray:
    """Natural data "moved" to a related distribution: every image translated by a random whole
    number of pixels (up to ``max_shift`` each way, zero fill), as an attacker's own photos of the
    same kind of object would differ from the victim's training set. Rows keep their layout."""
    from modelshield.attacks._base import as_generator

    arr = np.asarray(images, dtype=np.float64)
    h, w = image_shape
    flat = arr.reshape(arr.shape[0], h, w)
    rng = as_generator(random_state)
    out = np.zeros_like(flat)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(arr.shape[0], 2))
    for i, (dy, dx) in enumerate(shifts):
        src = flat[i, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        out[i, max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out.reshape(arr.shape)
