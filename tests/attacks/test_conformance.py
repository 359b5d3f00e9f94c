"""One suite over every attack: estimator contract, exact budgets, clean stops, determinism."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

import modelshield.attacks as attacks
from modelshield.attacks import ATTACKS, Attack, AttackResult, PredictorTarget, make_attack
from modelshield.errors import ConfigError, RateLimitedError

BUDGET = 120


def _victim_for(name: str, request: pytest.FixtureRequest) -> Any:
    if name in ("equation-logistic", "path-finding"):
        return request.getfixturevalue("cancer_logistic")
    return request.getfixturevalue("digits")


def _attack(name: str, victim: Any, budget: int = BUDGET) -> Attack:
    attack = make_attack(name, budget=budget, pool=victim.pool, random_state=0)
    # keep the suite fast: fewer optimiser iterations where the attack has them
    for param in ("max_iter",):
        if hasattr(attack, param):
            setattr(attack, param, 50)
    return attack


@pytest.fixture(params=ATTACKS)
def named(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, _victim_for(request.param, request)


def test_constructor_only_stores_parameters(named: tuple[str, Any]) -> None:
    name, victim = named
    attack = _attack(name, victim)
    params = attack.get_params()
    signature = inspect.signature(type(attack).__init__)
    assert set(params) == {p for p in signature.parameters if p != "self"}
    for p in signature.parameters.values():
        assert p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.name == "self"
        assert p.kind is not p.VAR_KEYWORD
    assert "random_state" in params
    assert "budget" in params
    assert not [k for k in vars(attack) if k.endswith("_") and not k.startswith("_")]
    assert type(attack).__doc__
    assert "et al." in type(attack).__doc__ or name == "uniform-noise"


def test_never_exceeds_the_budget_and_counts_exactly(named: tuple[str, Any]) -> None:
    name, victim = named
    target = PredictorTarget(victim.predictor)
    result = _attack(name, victim).run(target, evaluation=victim.evaluation)
    assert isinstance(result, AttackResult)
    assert result.rows <= BUDGET
    assert (result.rows, result.queries) == (target.rows, target.queries)
    assert result.copy is not None
    assert result.fidelity is not None
    assert 0.0 <= result.fidelity <= 1.0
    assert result.stopped_at_query is None
    assert result.to_dict()["rows"] == result.rows


def test_stops_cleanly_when_rate_limited_partway(named: tuple[str, Any], refusing: Any) -> None:
    name, victim = named
    inner = PredictorTarget(victim.predictor)
    target = refusing(inner, allow=1, error=RateLimitedError("budget exhausted", retry_after=None))
    attack = _attack(name, victim, budget=10_000)
    attack.batch_size = 10
    result = attack.run(target, evaluation=victim.evaluation)
    assert result.outcome == "rate_limited"
    assert result.stopped_at_query == 1
    assert result.stopped_at_row == 10 == result.rows
    assert result.queries == 1
    assert target.refused == 1  # no request after the refusal
    assert "budget exhausted" in result.message
    assert result.copy is not None  # trained on the ten rows it bought


def test_same_random_state_same_queries(named: tuple[str, Any]) -> None:
    name, victim = named
    streams: list[list[Any]] = [[], []]
    for stream in streams:
        target = attacks.ObservedTarget(
            PredictorTarget(victim.predictor), observer=lambda x, a, s=stream: s.append(x.copy())
        )
        _attack(name, victim, budget=60).run(target)
    assert len(streams[0]) == len(streams[1])
    for a, b in zip(*streams, strict=True):
        np.testing.assert_array_equal(a, b)


def test_unknown_attack_and_missing_pool() -> None:
    with pytest.raises(ConfigError, match="unknown attack"):
        make_attack("nope", budget=1)
    with pytest.raises(ConfigError, match="needs a pool"):
        make_attack("active-kcenter", budget=1)


def test_run_by_name(digits: Any) -> None:
    target = PredictorTarget(digits.predictor)
    result = attacks.run(
        target, attack="copycat", budget=50, pool=digits.pool, evaluation=digits.evaluation
    )
    assert result.attack == "Copycat"
    assert result.rows == target.rows == 50


def test_zero_budget_is_refused(digits: Any) -> None:
    with pytest.raises(ValueError, match="budget"):
        attacks.KnockoffNets(budget=0, pool=digits.pool).run(PredictorTarget(digits.predictor))


def test_public_names_are_exactly_all() -> None:
    from types import ModuleType

    public = {
        n
        for n, v in vars(attacks).items()
        if not n.startswith("_") and not isinstance(v, ModuleType) and n != "annotations"
    }
    assert public == set(attacks.__all__)
    assert "experimental" in (attacks.__doc__ or "")
