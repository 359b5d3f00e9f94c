"""Fixtures of the detector tests: single-threaded BLAS (tiny products only contend)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from modelshield.demo import DemoData, DemoModel


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def reference(demo_data: DemoData, demo_model: DemoModel) -> tuple[np.ndarray, np.ndarray]:
    x = demo_data.x_train
    return x, demo_model.estimator.predict_proba(x).astype(np.float32)


@pytest.fixture(scope="session")
def held_out(demo_data: DemoData, demo_model: DemoModel) -> tuple[np.ndarray, np.ndarray]:
    x = demo_data.x_test
    return x, demo_model.estimator.predict_proba(x).astype(np.float32)
