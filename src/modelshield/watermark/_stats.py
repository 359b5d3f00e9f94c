"""Verification statistics shared by every watermark scheme.

A verification asks one question: could a model that never saw our key agree with the watermark
this often? The answer is an exact one-sided binomial test (``scipy.stats.binomtest``,
``alternative="greater"``) whose chance rate is the probability that an *independent* model hits
the keyed answer, estimated from the suspect's own output distribution rather than assumed to be
``1/K``. The response watermark, whose keyed answers are drawn uniformly per trial, uses an exact
permutation test of a sharper score instead (:func:`uniform_sum_tail`). The verdict is
``p_value < threshold`` (default ``1e-6``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from modelshield.errors import InvalidInputError

DEFAULT_THRESHOLD = 1e-6
_MIN_CHANCE = 1e-3


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a suspect model for one watermark.

    ``matches`` of ``trials`` keyed answers were reproduced (``agreement = matches / trials``);
    ``chance_rate`` is the per-trial probability of a match for a model independent of the key;
    ``p_value`` is the exact binomial tail ``P(X >= matches)`` under that rate (for the response
    watermark, the exact tail of the sharper statistic described in :func:`uniform_sum_tail`, of
    which ``matches`` is a summary); ``verified`` is ``p_value < threshold``.
    """

    scheme: str
    agreement: float
    trials: int
    matches: int
    chance_rate: float
    p_value: float
    verified: bool
    threshold: float
    client_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return asdict(self)


def binomial_verification(
    *,
    scheme: str,
    matches: int,
    trials: int,
    chance_rate: float,
    threshold: float = DEFAULT_THRESHOLD,
    client_id: str | None = None,
) -> Verification:
    """Exact one-sided binomial test of ``matches`` successes in ``trials`` at ``chance_rate``.

    With no trials the p-value is 1 (no evidence). The chance rate is clipped to
    ``[0.001, 1]``: a rate estimated as zero must not turn one lucky match into proof.
    """
    from scipy.stats import binomtest

    if not 0.0 < threshold < 1.0:
        raise InvalidInputError(f"threshold must be in (0, 1), got {threshold}")
    if trials < 0 or not 0 <= matches <= trials:
        raise InvalidInputError(f"need 0 <= matches <= trials, got {matches} of {trials}")
    rate = min(1.0, max(_MIN_CHANCE, float(chance_rate)))
    if trials == 0:
        p_value, agreement = 1.0, 0.0
    else:
        p_value = float(binomtest(matches, trials, rate, alternative="greater").pvalue)
        agreement = matches / trials
    return Verification(
        scheme=scheme,
        agreement=agreement,
        trials=trials,
        matches=matches,
        chance_rate=rate,
        p_value=p_value,
        verified=bool(p_value < threshold),
        threshold=threshold,
        client_id=client_id,
    )


def label_chance_rate(predicted: Sequence[str], keyed: Sequence[str]) -> float:
    """Chance that an independent model's label equals the keyed label.

    ``predicted`` are the suspect's labels on the probes and ``keyed`` the watermark's labels (both
    in canonical text form). The suspect's label distribution ``q`` on the probes is the null model
    of its answers; since the keyed labels come from the key and not from the probe, a model that
    never saw the key matches probe ``i`` with probability ``q(keyed_i)``. The rate is their mean.
    """
    if len(predicted) != len(keyed):
        raise InvalidInputError("predicted and keyed labels differ in length")
    if not predicted:
        return 0.0
    counts = Counter(predicted)
    n = len(predicted)
    return sum(counts.get(label, 0) / n for label in keyed) / n


def uniform_sum_tail(choices: Sequence[Sequence[int]], observed: int) -> float:
    """Exact ``P(S >= observed)`` for ``S = X_1 + ... + X_n`` with independent ``X_j`` uniform over
    the entries of ``choices[j]`` (repeats count).

    This is the null distribution of a keyed permutation test: trial ``j`` offers one integer
    score per candidate keyed answer, computed from the suspect alone, and the key picks one
    candidate uniformly and independently per trial; a model that never saw the key then scores
    ``S`` with exactly this distribution, whatever its own answers are. Computed by convolution
    over the integer support (no approximation).
    """
    if not choices:
        return 1.0 if observed <= 0 else 0.0
    lows = [min(c) for c in choices if c]
    if len(lows) != len(choices):
        raise InvalidInputError("every trial needs at least one candidate score")
    width = sum(max(c) - lo for c, lo in zip(choices, lows, strict=True))
    dist = np.zeros(width + 1)
    dist[0] = 1.0
    reached = 0  # the support so far: each step works on it, not on the whole final width
    for c, lo in zip(choices, lows, strict=True):
        values, counts = np.unique(np.asarray(c, dtype=np.int64) - lo, return_counts=True)
        span = int(values[-1])
        new = np.zeros(reached + span + 1)
        for shift, count in zip(values.tolist(), counts.tolist(), strict=True):
            new[shift : shift + reached + 1] += dist[: reached + 1] * (count / len(c))
        dist[: reached + span + 1] = new
        reached += span
    index = observed - sum(lows)
    if index <= 0:
        return 1.0
    if index > width:
        return 0.0
    # an attainable sum has a positive tail even where the float sum underflows
    return min(1.0, max(float(dist[index:].sum()), math.ulp(0.0)))


def bernoulli_sum_tail(
    values: Sequence[int], rate: float | Sequence[float], observed: int
) -> float:
    """Exact ``P(T >= observed)`` for ``T = m_1 v_1 + ... + m_n v_n`` with the ``m_j`` independent
    Bernoulli draws (probability ``rate``, or ``rate[j]`` per term) and the integer ``values``
    fixed.

    This is the null distribution of a keyed selection test: the key chose each unit for marking
    with a known probability, independently of every other unit, and the suspect gave each unit
    a score computed from its answers alone; a model that never saw the marked answers then sums
    the scores of the chosen units with exactly this distribution. Computed by convolution over
    the integer support (no approximation).
    """
    rates = [float(rate)] * len(values) if isinstance(rate, int | float) else list(rate)
    if len(rates) != len(values):
        raise InvalidInputError("need one rate per value")
    if not all(0.0 < r < 1.0 for r in rates):
        raise InvalidInputError(f"rates must be in (0, 1), got {sorted(set(rates))[:3]}")
    # each unit adds min(v, 0) for sure, and |v| with probability r (v > 0) or 1 - r (v < 0)
    base = sum(min(v, 0) for v in values)
    jumps = [(abs(v), r if v > 0 else 1.0 - r) for v, r in zip(values, rates, strict=True) if v]
    width = sum(j for j, _ in jumps)
    dist = np.zeros(width + 1)
    dist[0] = 1.0
    reached = 0
    for jump, chance in jumps:
        moved = dist[: reached + 1] * chance
        dist[: reached + 1] *= 1.0 - chance
        dist[jump : reached + jump + 1] += moved
        reached += jump
    index = observed - base
    if index <= 0:
        return 1.0
    if index > width:
        return 0.0
    return min(1.0, max(float(dist[index:].sum()), math.ulp(0.0)))


def combine_independent(p_first: float, p_second: float) -> float:
    """Fisher's combination of two independent p-values, as an exact bound.

    For independent p-values that are each at least uniform under the null (exact or
    conservative), ``P(p_1 p_2 <= t) <= t (1 - ln t)``; the bound is returned for
    ``t = p_first * p_second``.
    """
    t = p_first * p_second
    if t <= 0.0:
        return math.ulp(0.0)
    return min(1.0, t * (1.0 - math.log(t)))
