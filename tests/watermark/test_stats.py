"""Verification statistics: exact binomial tails, chance rates from the suspect, verdicts."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from modelshield.errors import InvalidInputError, ShieldError
from modelshield.watermark import Verification, binomial_verification, label_chance_rate
from modelshield.watermark._stats import bernoulli_sum_tail, combine_independent, uniform_sum_tail


def test_all_matches_at_one_tenth_is_ten_to_the_minus_ten() -> None:
    v = binomial_verification(scheme="s", matches=10, trials=10, chance_rate=0.1)
    assert math.isclose(v.p_value, 0.1**10, rel_tol=1e-9)
    assert v.verified
    assert v.agreement == 1.0
    assert v.threshold == 1e-6


def test_tail_is_the_binomial_sum() -> None:
    v = binomial_verification(scheme="s", matches=3, trials=5, chance_rate=0.5)
    expected = sum(math.comb(5, k) for k in (3, 4, 5)) / 32
    assert math.isclose(v.p_value, expected, rel_tol=1e-9)
    assert not v.verified


def test_chance_level_agreement_is_not_verified() -> None:
    v = binomial_verification(scheme="s", matches=10, trials=100, chance_rate=0.1)
    assert v.p_value > 0.4
    assert not v.verified


def test_threshold_decides_the_verdict() -> None:
    v = binomial_verification(scheme="s", matches=5, trials=5, chance_rate=0.1)  # p = 1e-5
    assert not v.verified
    assert binomial_verification(
        scheme="s", matches=5, trials=5, chance_rate=0.1, threshold=1e-4
    ).verified


def test_no_trials_is_no_evidence() -> None:
    v = binomial_verification(scheme="s", matches=0, trials=0, chance_rate=0.1)
    assert v.p_value == 1.0
    assert not v.verified
    assert v.trials == 0


def test_zero_chance_rate_is_floored() -> None:
    v = binomial_verification(scheme="s", matches=1, trials=1, chance_rate=0.0)
    assert v.chance_rate == pytest.approx(1e-3)
    assert not v.verified


@pytest.mark.parametrize(
    ("matches", "trials", "threshold"), [(5, 4, 1e-6), (-1, 4, 1e-6), (1, 4, 0.0), (1, 4, 1.0)]
)
def test_bad_arguments_raise(matches: int, trials: int, threshold: float) -> None:
    with pytest.raises(InvalidInputError):
        binomial_verification(
            scheme="s", matches=matches, trials=trials, chance_rate=0.1, threshold=threshold
        )
    assert issubclass(InvalidInputError, ShieldError)


def test_verification_is_frozen_and_serialisable() -> None:
    v = binomial_verification(scheme="s", matches=2, trials=4, chance_rate=0.25, client_id="c")
    with pytest.raises(AttributeError):
        v.p_value = 0.0  # type: ignore[misc]
    d = v.to_dict()
    assert d["client_id"] == "c"
    assert Verification(**d) == v


def test_chance_rate_of_a_constant_suspect_is_the_keyed_frequency() -> None:
    keyed = ["1", "2", "3", "3"]
    assert label_chance_rate(["3"] * 4, keyed) == pytest.approx(0.5)
    assert label_chance_rate(["9"] * 4, keyed) == 0.0


def test_chance_rate_of_a_uniform_suspect() -> None:
    keyed = ["0", "1", "0", "1"]
    assert label_chance_rate(["0", "1", "1", "0"], keyed) == pytest.approx(0.5)
    assert label_chance_rate([], []) == 0.0
    with pytest.raises(InvalidInputError):
        label_chance_rate(["0"], [])


def test_uniform_sum_tail_known_answers() -> None:
    assert uniform_sum_tail([[0, 1, 2, 3]], 2) == pytest.approx(0.5)
    assert uniform_sum_tail([[0, 1], [0, 1]], 2) == pytest.approx(0.25)
    assert uniform_sum_tail([[0, 1], [0, 1]], 1) == pytest.approx(0.75)
    assert uniform_sum_tail([[0, 1], [0, 1]], 0) == 1.0
    assert uniform_sum_tail([[0, 1], [0, 1]], 3) == 0.0
    # repeats count: 5 appears twice among three candidates
    assert uniform_sum_tail([[5, 5, -2]], 5) == pytest.approx(2 / 3)
    assert uniform_sum_tail([], 0) == 1.0
    assert uniform_sum_tail([], 1) == 0.0
    # far in the tail the float sum underflows, but an attainable sum never gets p = 0
    assert 0.0 < uniform_sum_tail([[1] + [0] * 8] * 400, 400) < 1e-300
    with pytest.raises(InvalidInputError):
        uniform_sum_tail([[1, 2], []], 1)


def test_uniform_sum_tail_is_the_brute_force_sum() -> None:
    rng = random.Random(7)
    for _ in range(20):
        choices = [[rng.randint(-4, 6) for _ in range(rng.randint(1, 4))] for _ in range(4)]
        outcomes = [sum(pick) for pick in itertools.product(*choices)]
        for observed in range(min(outcomes) - 1, max(outcomes) + 2):
            expected = sum(o >= observed for o in outcomes) / len(outcomes)
            assert uniform_sum_tail(choices, observed) == pytest.approx(expected, abs=1e-12)


def test_uniform_sum_tail_of_winner_indicators_is_the_binomial_tail() -> None:
    # one candidate in nine scores 1: the test is then the binomial test at chance 1/9
    choices = [[1] + [0] * 8] * 12
    for matches in (0, 3, 7, 12):
        expected = binomial_verification(
            scheme="s", matches=matches, trials=12, chance_rate=1 / 9
        ).p_value
        assert uniform_sum_tail(choices, matches) == pytest.approx(expected, rel=1e-9)


def test_uniform_sum_tail_is_valid_under_the_null() -> None:
    # a suspect independent of the key: scores drawn anyway, the keyed candidate uniform
    rng = np.random.default_rng(3)
    p_values = []
    for _ in range(2000):
        choices = rng.integers(-20, 21, size=(15, 9)).tolist()
        keyed = rng.integers(0, 9, size=15).tolist()
        observed = sum(c[j] for c, j in zip(choices, keyed, strict=True))
        p_values.append(uniform_sum_tail(choices, observed))
    p = np.asarray(p_values)
    for alpha in (0.01, 0.05, 0.2):
        assert np.mean(p <= alpha) <= alpha + 3 * math.sqrt(alpha / 2000)
    assert np.mean(p <= 0.5) > 0.4  # not trivially conservative either


def test_bernoulli_sum_tail_is_exact() -> None:
    """Against enumeration of every marking, on small cases with negative and zero scores."""
    rng = random.Random(1)
    for _ in range(300):
        values = [rng.randint(-6, 6) for _ in range(rng.randint(1, 8))]
        rate = rng.uniform(0.02, 0.98)
        observed = rng.randint(-20, 20)
        exact = 0.0
        for marks in itertools.product((0, 1), repeat=len(values)):
            if sum(m * v for m, v in zip(marks, values, strict=True)) >= observed:
                exact += math.prod(rate if m else 1 - rate for m in marks)
        assert bernoulli_sum_tail(values, rate, observed) == pytest.approx(min(exact, 1.0))
    assert bernoulli_sum_tail([], 0.3, 0) == 1.0
    assert bernoulli_sum_tail([], 0.3, 1) == 0.0
    # an attainable sum keeps a positive p-value even where the float product underflows
    assert 0.0 < bernoulli_sum_tail([5] * 800, 1e-3, 4000) < 1e-300
    for rate in (0.0, 1.0, -0.1):
        with pytest.raises(InvalidInputError):
            bernoulli_sum_tail([1], rate, 1)
    # one rate per unit: T = 2 m1 - m2 + 3 m3 >= 4 only when m1 = m3 = 1 (m2 either way)
    assert bernoulli_sum_tail([2, -1, 3], [0.1, 0.5, 0.9], 4) == pytest.approx(0.1 * 0.9)
    with pytest.raises(InvalidInputError):
        bernoulli_sum_tail([1, 2], [0.5], 1)


def test_combined_p_values_are_valid_for_independent_uniform_ones() -> None:
    rng = np.random.default_rng(2)
    u = rng.random((200_000, 2))
    combined = np.asarray([combine_independent(a, b) for a, b in u[:20_000]])
    for alpha in (0.01, 0.05, 0.2):
        assert np.mean(combined <= alpha) <= alpha + 3 * math.sqrt(alpha / 20_000)
        assert np.mean(combined <= alpha) > 0.8 * alpha  # Fisher's bound is tight for uniforms
    # two small p-values are stronger together than either alone, and never below their product
    assert 1e-8 < combine_independent(1e-4, 1e-4) < 1e-4
    assert combine_independent(1.0, 1.0) == 1.0
    assert combine_independent(0.0, 0.5) > 0.0
