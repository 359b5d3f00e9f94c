"""Output hardening: what a client gets back instead of the model's full-precision scores.

Every policy works row by row on a batch of probability vectors (shape ``(n, K)``) and states
whether it keeps each row's top-1 class (``preserves_top1``). The ``labels`` field of a response is
computed from the model's own scores before hardening, so a policy never changes it; the response
watermark is the only step that changes labels, on purpose.

References: rounding and top-k as defences, Tramèr et al., "Stealing Machine Learning Models via
Prediction APIs", USENIX Security 2016; reverse sigmoid, Lee et al., "Defending Against NN Model
Stealing Attacks Using Deceptive Perturbations", IEEE S&P Workshops 2019 (arXiv 2018).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from modelshield.models._base import FloatArray

_EPS = 1e-9


def _restore_top1(original: FloatArray, perturbed: FloatArray) -> FloatArray:
    """Swap values so that each row's largest entry sits at the original top-1 class again.

    Swapping keeps the row's multiset of values (so it still sums to one) and changes only rows
    where the perturbation moved the maximum.
    """
    want = np.argmax(original, axis=1)
    got = np.argmax(perturbed, axis=1)
    rows = np.nonzero(want != got)[0]
    if rows.size:
        fixed = perturbed.copy()
        a, b = want[rows], got[rows]
        fixed[rows, a], fixed[rows, b] = perturbed[rows, b], perturbed[rows, a]
        return fixed
    return perturbed


@dataclass(frozen=True)
class Probabilities:
    """Return the scores unchanged (no defence)."""

    preserves_top1 = True

    def apply(self, scores: FloatArray, rng: np.random.Generator) -> FloatArray:
        return scores

    def spec(self) -> str:
        return "probabilities"


@dataclass(frozen=True)
class TopK:
    """Keep each row's ``k`` largest scores and set the others to zero (not renormalised)."""

    k: int
    preserves_top1 = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("top_k needs k >= 1")

    def apply(self, scores: FloatArray, rng: np.random.Generator) -> FloatArray:
        if self.k >= scores.shape[1]:
            return scores
        # fast path: keep what reaches each row's k-th largest value; exact unless there are ties
        # (a sort: on a few dozen classes it costs less than np.partition's dispatch)
        kth = np.sort(scores, axis=1)[:, -self.k, None]
        mask = scores >= kth
        if np.count_nonzero(mask) == self.k * scores.shape[0]:
            return np.where(mask, scores, 0.0)
        keep = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
        out = np.zeros_like(scores)
        rows = np.arange(scores.shape[0])[:, None]
        out[rows, keep] = scores[rows, keep]
        return out

    def spec(self) -> str:
        return f"top_k:{self.k}"


@dataclass(frozen=True)
class Rounding:
    """Round scores to ``decimals`` places (ART's ``Rounded`` postprocessor does the same).

    Two classes can round to the same value, so the rounded vector's argmax may differ from the
    true top-1 when read naively; the response's ``labels`` field still carries the true top-1.
    """

    decimals: int
    preserves_top1 = False

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 15:
            raise ValueError("round needs 0 <= decimals <= 15")

    def apply(self, scores: FloatArray, rng: np.random.Generator) -> FloatArray:
        return scores.round(self.decimals)

    def spec(self) -> str:
        return f"round:{self.decimals}"


@dataclass(frozen=True)
class ReverseSigmoid:
    """Lee et al.'s reverse sigmoid perturbation, renormalised, with the top-1 class kept.

    ``r(p) = beta * (sigmoid(gamma * logit(p)) - 0.5)`` is subtracted from each probability, the
    result is clipped to [0, 1] and renormalised (the same arithmetic as ART's
    ``ReverseSigmoid``); rows whose argmax moved get it back by a swap (:func:`_restore_top1`).
    """

    beta: float = 1.0
    gamma: float = 0.1
    preserves_top1 = True

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.gamma <= 0:
            raise ValueError("reverse_sigmoid needs beta > 0 and gamma > 0")

    def apply(self, scores: FloatArray, rng: np.random.Generator) -> FloatArray:
        clipped = np.clip(scores, _EPS, 1.0 - _EPS)
        logit = np.log(clipped / (1.0 - clipped))
        perturbation = self.beta * (1.0 / (1.0 + np.exp(-self.gamma * logit)) - 0.5)
        perturbed = np.clip(scores - perturbation, 0.0, 1.0)
        total = perturbed.sum(axis=1, keepdims=True)
        total[total == 0] = 1.0
        return _restore_top1(scores, perturbed / total)

    def spec(self) -> str:
        return f"reverse_sigmoid:{self.beta:g}:{self.gamma:g}"


@dataclass(frozen=True)
class Noise:
    """Gaussian noise of standard deviation ``scale`` on each probability, clipped, renormalised,
    with the top-1 class kept (ART's ``GaussianNoise`` without the guarantee on the argmax)."""

    scale: float
    preserves_top1 = True

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 1:
            raise ValueError("noise needs 0 < scale <= 1")

    def apply(self, scores: FloatArray, rng: np.random.Generator) -> FloatArray:
        noisy = np.clip(scores + rng.normal(0.0, self.scale, size=scores.shape), 0.0, 1.0)
        total = noisy.sum(axis=1, keepdims=True)
        total[total == 0] = 1.0
        return _restore_top1(scores, noisy / total)

    def spec(self) -> str:
        return f"noise:{self.scale:g}"


@dataclass(frozen=True)
class LabelsOnly:
    """Return no scores at all, only the top-1 label of each row."""

    preserves_top1 = True

    def apply(self, scores: FloatArray, rng: np.random.Generator) -> FloatArray:
        return scores

    def spec(self) -> str:
        return "labels"


Step = Probabilities | TopK | Rounding | ReverseSigmoid | Noise | LabelsOnly


@dataclass(frozen=True)
class OutputPolicy:
    """An ordered composition of steps. ``returns_scores`` is false once ``labels`` is a step."""

    steps: tuple[Step, ...] = (Probabilities(),)

    @functools.cached_property
    def returns_scores(self) -> bool:
        return not any(isinstance(s, LabelsOnly) for s in self.steps)

    @property
    def preserves_top1(self) -> bool:
        return all(s.preserves_top1 for s in self.steps)

    def apply(self, scores: FloatArray, rng: np.random.Generator) -> FloatArray | None:
        """The hardened scores, or ``None`` when this policy returns labels only."""
        if not self.returns_scores:
            return None
        out = scores
        for step in self.steps:
            out = step.apply(out, rng)
        return out

    def specs(self) -> tuple[str, ...]:
        return tuple(s.spec() for s in self.steps)


def _int_arg(name: str, args: Sequence[str]) -> int:
    if len(args) != 1 or not args[0].isdigit():
        raise ValueError(f"{name} takes one whole number, e.g. {name}:2")
    return int(args[0])


def _float_args(name: str, args: Sequence[str], count: int) -> list[float]:
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise ValueError(f"{name} takes {count} number(s)") from None
    if len(values) != count or not all(np.isfinite(values)):
        raise ValueError(f"{name} takes {count} finite number(s)")
    return values


def parse_step(text: str) -> Step:
    """One step from its configuration spelling (see :class:`modelshield.config.TierConfig`)."""
    name, *args = text.strip().split(":")
    if name == "probabilities" and not args:
        return Probabilities()
    if name == "labels" and not args:
        return LabelsOnly()
    if name == "top_k":
        return TopK(_int_arg(name, args))
    if name == "round":
        return Rounding(_int_arg(name, args))
    if name == "reverse_sigmoid":
        beta, gamma = _float_args(name, args, 2) if args else (1.0, 0.1)
        return ReverseSigmoid(beta, gamma)
    if name == "noise":
        (scale,) = _float_args(name, args, 1)
        return Noise(scale)
    raise ValueError(
        f"unknown output policy {text!r}; expected probabilities, labels, top_k:N, round:N, "
        "reverse_sigmoid:BETA:GAMMA or noise:SCALE"
    )


def parse_policy(texts: Iterable[str]) -> OutputPolicy:
    """An :class:`OutputPolicy` from a list of step spellings; raises ``ValueError`` when bad."""
    steps = tuple(parse_step(t) for t in texts)
    if not steps:
        raise ValueError("an output policy needs at least one step")
    return OutputPolicy(steps)
