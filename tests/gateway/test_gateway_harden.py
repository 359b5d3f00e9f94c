"""Output policies: row-wise correctness on batches, top-1 preservation, ART's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from modelshield.gateway._harden import (
    LabelsOnly,
    Noise,
    ReverseSigmoid,
    Rounding,
    TopK,
    parse_policy,
)


def batch(n: int = 200, k: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


RNG = np.random.default_rng(1)


@pytest.mark.parametrize(
    "step",
    [TopK(1), TopK(3), ReverseSigmoid(1.0, 0.1), ReverseSigmoid(0.7, 0.5), Noise(0.05), Noise(0.3)],
)
def test_top1_preserving_steps_keep_every_rows_argmax(step: object) -> None:
    p = batch()
    out = step.apply(p, RNG)  # type: ignore[attr-defined]
    assert step.preserves_top1  # type: ignore[attr-defined]
    np.testing.assert_array_equal(np.argmax(out, axis=1), np.argmax(p, axis=1))


def test_top_k_zeroes_all_but_k_in_each_row() -> None:
    p = batch()
    out = TopK(3).apply(p, RNG)
    assert ((out > 0).sum(axis=1) == 3).all()
    for row_in, row_out in zip(p, out, strict=True):
        kept = np.sort(row_in)[-3:]
        np.testing.assert_allclose(np.sort(row_out[row_out > 0]), kept)


def test_rounding_matches_numpy_round_and_art() -> None:
    p = batch()
    np.testing.assert_array_equal(Rounding(2).apply(p, RNG), np.around(p, decimals=2))


def test_reverse_sigmoid_matches_the_published_formula_where_argmax_kept() -> None:
    p = batch()
    beta, gamma = 1.0, 0.1
    clipped = np.clip(p, 1e-9, 1 - 1e-9)
    r = beta * (1 / (1 + np.exp(-gamma * np.log(clipped / (1 - clipped)))) - 0.5)
    expected = np.clip(p - r, 0, 1)
    expected /= expected.sum(axis=1, keepdims=True)
    out = ReverseSigmoid(beta, gamma).apply(p, RNG)
    same = np.argmax(expected, axis=1) == np.argmax(p, axis=1)
    assert same.mean() > 0.5
    np.testing.assert_allclose(out[same], expected[same], atol=1e-12)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_reverse_sigmoid_changes_the_scores() -> None:
    p = batch()
    assert np.abs(ReverseSigmoid(1.0, 0.1).apply(p, RNG) - p).max() > 0.05


def test_noise_is_a_distribution_and_differs() -> None:
    p = batch()
    out = Noise(0.1).apply(p, np.random.default_rng(3))
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert (out >= 0).all()
    assert np.abs(out - p).max() > 0.01


def test_labels_only_returns_no_scores() -> None:
    policy = parse_policy(["labels"])
    assert not policy.returns_scores
    assert policy.apply(batch(), RNG) is None
    assert isinstance(policy.steps[0], LabelsOnly)


def test_composition_applies_in_order() -> None:
    p = batch()
    policy = parse_policy(["top_k:2", "round:1"])
    np.testing.assert_array_equal(policy.apply(p, RNG), np.round(TopK(2).apply(p, RNG), 1))
    assert policy.specs() == ("top_k:2", "round:1")
    assert not policy.preserves_top1


@pytest.mark.parametrize(
    "bad",
    [
        [],
        ["top_k"],
        ["top_k:0"],
        ["round:x"],
        ["noise:2"],
        ["noise:nan"],
        ["pickle"],
        ["reverse_sigmoid:1"],
    ],
)
def test_bad_policy_spellings_are_refused(bad: list[str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each spelling has its own message
        parse_policy(bad)


def test_labels_are_per_row_not_the_art_class_labels_bug() -> None:
    # ART's ClassLabels once wrote one_hot[:, argmax] = 1, marking every predicted column in every
    # row; our labels come from each row's own argmax.
    from modelshield.config import TierConfig
    from modelshield.gateway._pipeline import Tier, answer

    class Fixed:
        classes = tuple(range(4))

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            return np.eye(4)[[0, 1, 2, 3]][: len(x)] * 0.7 + 0.075

    tier = Tier.from_config("t", TierConfig(output=("labels",)))
    result = answer(Fixed(), np.zeros((4, 2)), tier, RNG, client="c")  # type: ignore[arg-type]
    assert result.labels == [0, 1, 2, 3]
    assert result.probabilities is None


def test_top_k_with_ties_keeps_exactly_k() -> None:
    p = np.array([[0.25, 0.25, 0.25, 0.25], [0.4, 0.2, 0.2, 0.2]])
    out = TopK(2).apply(p, RNG)
    assert ((out > 0).sum(axis=1) == 2).all()
    assert out[1, 0] == 0.4


def test_our_policies_match_art_postprocessors_where_they_overlap() -> None:
    from art.defences.postprocessor import ClassLabels
    from art.defences.postprocessor import ReverseSigmoid as ArtReverseSigmoid
    from art.defences.postprocessor import Rounded as ArtRounded

    p = batch()
    np.testing.assert_allclose(Rounding(3).apply(p, RNG), ArtRounded(decimals=3)(p))
    art = ArtReverseSigmoid(beta=1.0, gamma=0.1)(p)
    ours = ReverseSigmoid(1.0, 0.1).apply(p, RNG)
    same = np.argmax(art, axis=1) == np.argmax(p, axis=1)
    assert same.mean() > 0.5
    np.testing.assert_allclose(ours[same], art[same], atol=1e-9)
    # where ART's perturbation moved the argmax, ours keeps the true top-1 (a swap)
    np.testing.assert_array_equal(np.argmax(ours, axis=1), np.argmax(p, axis=1))
    # ART's ClassLabels marks every predicted column in every row of a batch
    two = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert ClassLabels()(two).tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]
