"""The response policy: from detector observations to actions, per tier (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from modelshield.detect._base import Observation
from modelshield.errors import ConfigError

ActionKind = Literal["alert", "throttle", "degrade", "block"]
DegradeMode = Literal["labels", "perturb"]

SEVERITY: dict[str, int] = {"alert": 0, "throttle": 1, "degrade": 2, "block": 3}


@dataclass(frozen=True)
class Evidence:
    """Why an action was taken: one flagging observation."""

    detector: str
    subject: str
    score: float
    threshold: float
    queries_seen: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "subject": self.subject,
            "score": self.score,
            "threshold": self.threshold,
            "queries_seen": self.queries_seen,
        }


@dataclass(frozen=True)
class Rule:
    """Take ``action`` once at least ``min_flags`` distinct detectors flag the client.

    Rules count flags and never name detectors, so that a flagged client cannot tell from the
    response which detector fired. ``throttle_factor`` scales the client's rate limit;
    ``degrade_mode`` is ``"labels"`` (labels only) or ``"perturb"`` (an argmax-preserving
    perturbation of the probabilities).
    """

    action: ActionKind
    min_flags: int = 1
    throttle_factor: float = 0.1
    degrade_mode: DegradeMode = "labels"

    def __post_init__(self) -> None:
        if self.action not in SEVERITY:
            raise ConfigError(f"response rule: unknown action {self.action!r}")
        if self.min_flags < 1:
            raise ConfigError("response rule: min_flags must be at least 1")
        if not 0.0 < self.throttle_factor <= 1.0:
            raise ConfigError("response rule: throttle_factor must be in (0, 1]")
        if self.degrade_mode not in ("labels", "perturb"):
            raise ConfigError(f"response rule: unknown degrade mode {self.degrade_mode!r}")


@dataclass(frozen=True)
class TierPolicy:
    """The rules of one tier; at least one (a tier with no response is a configuration error)."""

    rules: tuple[Rule, ...]

    def __post_init__(self) -> None:
        if not self.rules:
            raise ConfigError("a tier's response policy needs at least one rule")


@dataclass(frozen=True)
class Action:
    """One response to a flagged client, with its evidence, as an audit record."""

    kind: ActionKind
    client: str
    tier: str
    at: float
    evidence: tuple[Evidence, ...]
    parameters: tuple[tuple[str, str | float], ...] = field(default=())

    @property
    def severity(self) -> int:
        return SEVERITY[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready audit record."""
        return {
            "kind": self.kind,
            "client": self.client,
            "tier": self.tier,
            "at": self.at,
            "evidence": [e.to_dict() for e in self.evidence],
            "parameters": dict(self.parameters),
        }


class ResponsePolicy:
    """Decides actions from observations, per tier; pure (the time is passed in).

    ``tiers`` maps tier names to :class:`TierPolicy`; a client of a tier not listed uses
    ``default_tier`` or, without one, raises :class:`~modelshield.errors.ConfigError`.
    """

    def __init__(self, tiers: Mapping[str, TierPolicy], *, default_tier: str | None = None) -> None:
        if not tiers:
            raise ConfigError("a response policy needs at least one tier")
        if default_tier is not None and default_tier not in tiers:
            raise ConfigError(f"default tier {default_tier!r} is not defined")
        self.tiers = dict(tiers)
        self.default_tier = default_tier

    @classmethod
    def default(cls) -> ResponsePolicy:
        """``free``: alert and degrade to labels at one flag, block at two; ``standard``:
        alert and throttle at one, degrade at two, block at three; ``trusted``: alert at one,
        throttle at two. Unknown tiers are treated as ``free``."""
        return cls(
            {
                "free": TierPolicy(
                    (Rule("alert"), Rule("degrade", degrade_mode="labels"), Rule("block", 2))
                ),
                "standard": TierPolicy(
                    (
                        Rule("alert"),
                        Rule("throttle", throttle_factor=0.1),
                        Rule("degrade", 2, degrade_mode="perturb"),
                        Rule("block", 3),
                    )
                ),
                "trusted": TierPolicy((Rule("alert"), Rule("throttle", 2, throttle_factor=0.5))),
            },
            default_tier="free",
        )

    def decide(
        self, *, client: str, tier: str, observations: Sequence[Observation], now: float
    ) -> tuple[Action, ...]:
        """The actions for ``client`` given its latest observations, mildest first."""
        policy = self.tiers.get(tier)
        if policy is None:
            if self.default_tier is None:
                raise ConfigError(f"no response policy for tier {tier!r}")
            policy = self.tiers[self.default_tier]
        flagged = [o for o in observations if o.flagged]
        evidence = tuple(
            Evidence(o.detector, o.client, o.score, o.threshold, o.queries_seen) for o in flagged
        )
        n_flags = len({o.detector for o in flagged})
        actions = []
        for rule in policy.rules:
            if n_flags < rule.min_flags:
                continue
            parameters: tuple[tuple[str, str | float], ...] = ()
            if rule.action == "throttle":
                parameters = (("throttle_factor", rule.throttle_factor),)
            elif rule.action == "degrade":
                parameters = (("degrade_mode", rule.degrade_mode),)
            actions.append(Action(rule.action, client, tier, now, evidence, parameters))
        return tuple(sorted(actions, key=lambda a: a.severity))

    @staticmethod
    def strongest(actions: Sequence[Action]) -> Action | None:
        """The most severe of ``actions`` (what the gateway enforces), or ``None``."""
        return max(actions, key=lambda a: a.severity, default=None)
