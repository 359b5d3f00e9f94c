"""Verification statistics: exact binomial tails, chance rates from the suspect, verdicts."""

from __future__ import annotations

import math

import pytest

from modelshield.errors import InvalidInputError, ShieldError
from modelshield.watermark import Verification, binomial_verification, label_chance_rate


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
