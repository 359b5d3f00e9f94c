"""Fixtures of the watermark tests: a key, the trigger-marked demo model, digit augmentations."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from modelshield.demo import DemoData, DemoModel
from modelshield.watermark import TriggerSet, embed_trigger_set, make_trigger_set

KEY = bytes(range(100, 132))
OTHER_KEY = bytes(range(200, 232))
CLASSES = tuple(range(10))


def shift(x: npt.NDArray[Any], dx: int, dy: int) -> npt.NDArray[np.float32]:
    """Move 8x8 digits by (dx, dy) pixels, filling with background."""
    images = np.asarray(x, dtype=np.float32).reshape(-1, 8, 8)
    out = np.zeros_like(images)
    src_x = slice(max(-dx, 0), 8 - max(dx, 0))
    dst_x = slice(max(dx, 0), 8 - max(-dx, 0))
    src_y = slice(max(-dy, 0), 8 - max(dy, 0))
    dst_y = slice(max(dy, 0), 8 - max(-dy, 0))
    out[:, dst_y, dst_x] = images[:, src_y, src_x]
    return out.reshape(-1, 64)


@pytest.fixture(scope="session")
def trigger_set() -> TriggerSet:
    return make_trigger_set(KEY, shape=(64,), classes=CLASSES)


@pytest.fixture(scope="session")
def marked_estimator(demo_model: DemoModel, demo_data: DemoData, trigger_set: TriggerSet) -> Any:
    return embed_trigger_set(
        demo_model.estimator, trigger_set, demo_data.x_train, demo_data.y_train
    )
