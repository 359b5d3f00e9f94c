"""The response policy: every action path, the evidence, and configuration errors."""

from __future__ import annotations

import dataclasses

import pytest

from modelshield.detect import Action, Observation, ResponsePolicy, Rule, TierPolicy
from modelshield.errors import ConfigError


def obs(detector: str, flagged: bool, score: float = 2.0) -> Observation:
    return Observation(
        detector=detector,
        client="alice",
        score=score if flagged else 0.1,
        threshold=1.0,
        flagged=flagged,
        queries_seen=150,
    )


ONE = [obs("ood", True), obs("prada", False)]
TWO = [obs("ood", True), obs("boundary", True, 3.0)]
THREE = [*TWO, obs("coverage", True)]


def kinds(actions: tuple[Action, ...]) -> list[str]:
    return [a.kind for a in actions]


def test_no_flag_no_action() -> None:
    policy = ResponsePolicy.default()
    for tier in ("free", "standard", "trusted"):
        assert (
            policy.decide(client="alice", tier=tier, observations=[obs("ood", False)], now=0) == ()
        )


def test_free_tier_alert_degrade_then_block() -> None:
    policy = ResponsePolicy.default()
    one = policy.decide(client="alice", tier="free", observations=ONE, now=5.0)
    assert kinds(one) == ["alert", "degrade"]
    assert dict(one[1].parameters) == {"degrade_mode": "labels"}
    two = policy.decide(client="alice", tier="free", observations=TWO, now=5.0)
    assert kinds(two) == ["alert", "degrade", "block"]
    assert ResponsePolicy.strongest(two) is two[-1]


def test_standard_tier_throttle_perturb_block() -> None:
    policy = ResponsePolicy.default()
    one = policy.decide(client="alice", tier="standard", observations=ONE, now=0)
    assert kinds(one) == ["alert", "throttle"]
    assert dict(one[1].parameters) == {"throttle_factor": 0.1}
    two = policy.decide(client="alice", tier="standard", observations=TWO, now=0)
    assert kinds(two) == ["alert", "throttle", "degrade"]
    assert dict(two[-1].parameters) == {"degrade_mode": "perturb"}
    three = policy.decide(client="alice", tier="standard", observations=THREE, now=0)
    assert kinds(three)[-1] == "block"


def test_trusted_tier_only_alerts_on_one_flag() -> None:
    policy = ResponsePolicy.default()
    assert kinds(policy.decide(client="a", tier="trusted", observations=ONE, now=0)) == ["alert"]
    assert kinds(policy.decide(client="a", tier="trusted", observations=TWO, now=0)) == [
        "alert",
        "throttle",
    ]


def test_evidence_is_recorded_and_actions_are_frozen() -> None:
    policy = ResponsePolicy.default()
    (alert, *_rest) = policy.decide(client="alice", tier="free", observations=TWO, now=42.0)
    assert alert.at == 42.0
    assert alert.client == "alice"
    assert alert.tier == "free"
    assert [(e.detector, e.score, e.threshold, e.queries_seen) for e in alert.evidence] == [
        ("ood", 2.0, 1.0, 150),
        ("boundary", 3.0, 1.0, 150),
    ]
    record = alert.to_dict()
    assert record["evidence"][1]["detector"] == "boundary"
    assert record["kind"] == "alert"
    with pytest.raises(dataclasses.FrozenInstanceError):
        alert.kind = "block"  # type: ignore[misc]


def test_the_same_detector_twice_counts_once() -> None:
    policy = ResponsePolicy.default()
    same = [obs("ood", True), dataclasses.replace(obs("ood", True), client="group:t")]
    assert "block" not in kinds(policy.decide(client="a", tier="free", observations=same, now=0))


def test_unknown_tier_uses_default_or_fails() -> None:
    policy = ResponsePolicy.default()
    assert kinds(policy.decide(client="a", tier="nope", observations=ONE, now=0)) == [
        "alert",
        "degrade",
    ]
    strict = ResponsePolicy({"x": TierPolicy((Rule("block"),))})
    assert kinds(strict.decide(client="a", tier="x", observations=ONE, now=0)) == ["block"]
    with pytest.raises(ConfigError, match="tier"):
        strict.decide(client="a", tier="nope", observations=ONE, now=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Rule("explode"),  # type: ignore[arg-type]
        lambda: Rule("alert", min_flags=0),
        lambda: Rule("throttle", throttle_factor=0.0),
        lambda: Rule("degrade", degrade_mode="blur"),  # type: ignore[arg-type]
        lambda: TierPolicy(()),
        lambda: ResponsePolicy({}),
        lambda: ResponsePolicy({"a": TierPolicy((Rule("alert"),))}, default_tier="b"),
    ],
)
def test_bad_configuration_is_refused(make) -> None:
    with pytest.raises(ConfigError):
        make()
