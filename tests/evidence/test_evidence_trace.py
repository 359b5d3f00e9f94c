"""How the response-watermark trace reads a suspect's probabilities."""

from __future__ import annotations

import numpy as np

from modelshield.evidence._trace import _column_order


def test_probability_columns_follow_our_class_order() -> None:
    assert _column_order([2, 0, 1], [0, 1, 2]) == [1, 2, 0]
    assert _column_order(["0", "1", "2"], [0, 1, 2]) == [0, 1, 2]  # labels compare as text
    assert _column_order(np.array([1, 0]), ("0", "1")) == [1, 0]


def test_other_classes_fall_back_to_labels() -> None:
    assert _column_order(None, [0, 1]) is None
    assert _column_order([0, 1], [0, 1, 2]) is None  # the copy never saw class 2
    assert _column_order([0, 1, 3], [0, 1, 2]) is None
    assert _column_order([0, 0, 1], [0, 1]) is None  # repeated labels
