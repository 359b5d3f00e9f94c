"""Attacks by name, for the command line and the attack x defence matrix."""

from __future__ import annotations

import numpy.typing as npt

from modelshield.attacks._active import ActiveThief
from modelshield.attacks._base import Attack, RandomState
from modelshield.attacks._equation import EquationSolving, ModelFamily
from modelshield.attacks._jacobian import JacobianAugmentation
from modelshield.attacks._knockoff import Copycat, KnockoffNets, LabelKind, PoolKind
from modelshield.attacks._pathfinding import PathFinding
from modelshield.attacks._probes import LineSearch, UniformNoise
from modelshield.attacks._result import AttackResult, Evaluation
from modelshield.attacks._target import Target
from modelshield.errors import ConfigError

ATTACKS: tuple[str, ...] = (
    "active-kcenter",
    "active-uncertainty",
    "copycat",
    "equation-logistic",
    "equation-mlp",
    "equation-softmax",
    "jacobian",
    "knockoff",
    "line-search",
    "path-finding",
    "uniform-noise",
)

_NEEDS_POOL = ("active-kcenter", "active-uncertainty")


def make_attack(
    name: str,
    *,
    budget: int,
    pool: npt.ArrayLike | None = None,
    labels: LabelKind | None = None,
    random_state: RandomState = None,
) -> Attack:
    """The attack called ``name`` (one of :data:`ATTACKS`) with its default settings.

    ``pool`` is natural data for the attacks that use it (Copycat, Knockoff and Jacobian start
    from uniform random rows without one; ActiveThief needs one). ``labels`` overrides the
    attack's default label kind where it has one. Raises :class:`ConfigError` for an unknown name
    or a missing pool.
    """
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    if name in _NEEDS_POOL and pool is None:
        raise ConfigError(f"attack {name!r} needs a pool of natural data")
    kind: PoolKind = "natural" if pool is not None else "random"
    if name.startswith("equation-"):
        family: ModelFamily = "mlp"
        if name == "equation-logistic":
            family = "logistic"
        elif name == "equation-softmax":
            family = "softmax"
        return EquationSolving(budget=budget, model=family, random_state=random_state)
    if name == "path-finding":
        return PathFinding(budget=budget, random_state=random_state)
    if name == "copycat":
        return Copycat(
            budget=budget,
            pool=pool,
            pool_kind=kind,
            labels=labels or "hard",
            random_state=random_state,
        )
    if name == "knockoff":
        return KnockoffNets(
            budget=budget,
            pool=pool,
            pool_kind=kind,
            labels=labels or "soft",
            random_state=random_state,
        )
    if name == "jacobian":
        return JacobianAugmentation(
            budget=budget, seed=pool, labels=labels or "hard", random_state=random_state
        )
    if name == "uniform-noise":
        return UniformNoise(budget=budget, labels=labels or "soft", random_state=random_state)
    if name == "line-search":
        return LineSearch(budget=budget, random_state=random_state)
    assert pool is not None
    return ActiveThief(
        budget=budget,
        pool=pool,
        strategy="kcenter" if name == "active-kcenter" else "uncertainty",
        labels=labels or "soft",
        random_state=random_state,
    )


def run(
    target: Target,
    *,
    attack: str,
    budget: int,
    pool: npt.ArrayLike | None = None,
    labels: LabelKind | None = None,
    evaluation: Evaluation | None = None,
    random_state: RandomState = None,
) -> AttackResult:
    """Run the attack called ``attack`` against ``target``: ``make_attack(...).run(...)``."""
    chosen = make_attack(attack, budget=budget, pool=pool, labels=labels, random_state=random_state)
    return chosen.run(target, evaluation=evaluation)
