"""Copycat, Knockoff Nets, Jacobian augmentation, ActiveThief and the probes on the digits model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelshield.attacks import (
    ActiveThief,
    Copycat,
    JacobianAugmentation,
    KnockoffNets,
    LineSearch,
    PredictorTarget,
    SklearnThief,
    UniformNoise,
)


def test_knockoff_soft_labels_natural_pool(digits: Any) -> None:
    target = PredictorTarget(digits.predictor)
    result = KnockoffNets(budget=300, pool=digits.pool, random_state=0).run(
        target, evaluation=digits.evaluation
    )
    assert result.rows == target.rows == 300
    assert result.queries == target.queries == 3
    assert result.fidelity is not None
    assert result.fidelity >= 0.93
    assert result.accuracy is not None
    assert result.accuracy >= 0.9


def test_copycat_hard_labels_with_a_sklearn_thief(digits: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    thief = LogisticRegression(max_iter=50)
    result = Copycat(budget=300, pool=digits.pool, thief=thief, random_state=0).run(
        PredictorTarget(digits.predictor, return_probabilities=False),
        evaluation=digits.evaluation,
    )
    assert result.copy is not None
    assert isinstance(result.copy.model, SklearnThief)
    assert result.fidelity is not None
    assert result.fidelity >= 0.88


def test_random_pool_steals_far_less_than_natural_data(digits: Any) -> None:
    natural = KnockoffNets(budget=200, pool=digits.pool, random_state=0).run(
        PredictorTarget(digits.predictor), evaluation=digits.evaluation
    )
    noise = UniformNoise(budget=200, random_state=0).run(
        PredictorTarget(digits.predictor), evaluation=digits.evaluation
    )
    assert natural.fidelity is not None
    assert noise.fidelity is not None
    assert noise.fidelity < natural.fidelity - 0.2


def test_synthetic_pool_stays_in_the_input_box(digits: Any) -> None:
    rows: list[Any] = []
    from modelshield.attacks import ObservedTarget

    target = ObservedTarget(
        PredictorTarget(digits.predictor), observer=lambda x, a: rows.append(np.asarray(x))
    )
    result = KnockoffNets(
        budget=200, pool=digits.pool[:50], pool_kind="synthetic", random_state=0
    ).run(target, evaluation=digits.evaluation)
    sent = np.vstack(rows)
    assert sent.shape == (200, 64)
    assert sent.min() >= 0.0
    assert sent.max() <= 1.0
    assert result.fidelity is not None
    assert result.fidelity >= 0.8


def test_pool_kinds_needing_a_pool_refuse_without_one(digits: Any) -> None:
    with pytest.raises(ValueError, match="needs a pool"):
        KnockoffNets(budget=10, pool_kind="natural").run(PredictorTarget(digits.predictor))


def test_torch_thief(digits: Any) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    result = KnockoffNets(budget=300, pool=digits.pool, thief=net, random_state=0).run(
        PredictorTarget(digits.predictor), evaluation=digits.evaluation
    )
    assert result.fidelity is not None
    assert result.fidelity >= 0.9


def test_jacobian_augmentation_steps_along_the_substitute_gradient(digits: Any) -> None:
    from modelshield.attacks import ObservedTarget

    sent: list[Any] = []
    target = ObservedTarget(
        PredictorTarget(digits.predictor, return_probabilities=False),
        observer=lambda x, a: sent.append(np.asarray(x, dtype=np.float64)),
    )
    attack = JacobianAugmentation(
        budget=480, seed=digits.pool, n_seed=30, step=0.2, rounds=4, tau=3, random_state=0
    )
    result = attack.run(target, evaluation=digits.evaluation)
    assert result.rows == 480
    assert "4 augmentation rounds" in result.message
    assert result.fidelity is not None
    assert result.fidelity >= 0.7
    rows = np.vstack(sent)
    seed, first = rows[:30], rows[30:60]
    # round one moves every seed row by +-lambda on each pixel, clipped to [0, 1]
    moved = np.abs(first - seed)
    clipped = (first == 0.0) | (first == 1.0)
    assert np.all(np.isclose(moved, 0.2, atol=1e-6) | clipped)
    assert not np.allclose(first, seed)


@pytest.mark.parametrize("strategy", ["uncertainty", "kcenter"])
def test_active_thief_beats_random_selection(digits: Any, strategy: str) -> None:
    def run(name: str) -> float:
        result = ActiveThief(
            budget=150, pool=digits.pool, strategy=name, initial=30, rounds=3, random_state=0
        ).run(PredictorTarget(digits.predictor), evaluation=digits.evaluation)
        assert result.rows == 150
        assert result.fidelity is not None
        return result.fidelity

    chosen = run(strategy)
    assert chosen >= 0.9
    assert chosen >= run("random") - 0.01


def test_line_search_sends_halving_chains(iris_softmax: Any) -> None:
    from modelshield.attacks import ObservedTarget

    sent: list[Any] = []
    target = ObservedTarget(
        PredictorTarget(iris_softmax[0], return_probabilities=False),
        observer=lambda x, a: sent.append((np.asarray(x), a.labels)),
    )
    result = LineSearch(budget=300, pairs=10, random_state=0).run(
        target, evaluation=iris_softmax[1]
    )
    assert result.rows == 300
    assert sum(len(x) for x, _ in sent) == 300
    seeds, labels = sent[0]
    half = len(seeds) // 2
    differ = np.flatnonzero(labels[:half] != labels[half:])
    assert differ.size > 0
    # the next request holds the midpoints of the pairs whose labels differ
    np.testing.assert_allclose(sent[1][0], (seeds[differ] + seeds[half + differ]) / 2.0)
    assert result.fidelity is not None
    assert result.fidelity >= 0.9


def test_thief_must_be_trainable() -> None:
    from modelshield.attacks import MLPThief, as_thief

    assert isinstance(as_thief(None, random_state=0), MLPThief)
    with pytest.raises(TypeError, match="cannot use"):
        as_thief(object())


def test_knockoff_on_moved_natural_data(digits: Any) -> None:
    from modelshield.attacks import shift_images

    moved = shift_images(digits.pool, image_shape=(8, 8), max_shift=1, random_state=0)
    assert moved.shape == digits.pool.shape
    assert moved.min() >= 0.0
    assert moved.max() <= 1.0
    changed = np.any(moved != digits.pool, axis=1).mean()
    assert changed > 0.7  # 8 of 9 shifts move the image
    # every output is the input translated by (dy, dx) in {-1, 0, 1}^2 with zero fill
    grid = np.arange(1.0, 65.0).reshape(8, 8)
    allowed = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            t = np.zeros((10, 10))
            t[1 + dy : 9 + dy, 1 + dx : 9 + dx] = grid
            allowed.append(t[1:9, 1:9].ravel())
    outs = shift_images(np.tile(grid.ravel(), (30, 1)), image_shape=(8, 8), random_state=1)
    for row in outs:
        assert any(np.array_equal(row, a) for a in allowed)
    assert len({row.tobytes() for row in outs}) > 3
    result = KnockoffNets(budget=300, pool=moved, random_state=0).run(
        PredictorTarget(digits.predictor), evaluation=digits.evaluation
    )
    assert result.fidelity is not None
    assert result.fidelity >= 0.85
