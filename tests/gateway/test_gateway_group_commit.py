"""The audit log's group commit is tuned to the number of worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from modelshield.config import load_config
from modelshield.demo import DemoData, DemoModel
from modelshield.gateway import open_gateway
from modelshield.gateway._server import WORKERS_ENV, AuditLogSink, create_app
from modelshield.models import load_model

from .conftest import write_config


def _linger(gateway: object) -> float:
    sink = gateway.audit  # type: ignore[attr-defined]
    assert isinstance(sink, AuditLogSink)
    return float(sink._log._max_linger)


@pytest.mark.parametrize(("workers", "lingers"), [(1, False), (2, True)])
def test_only_several_workers_linger(
    tmp_path: Path, demo_model: DemoModel, workers: int, lingers: bool
) -> None:
    config = load_config(write_config(tmp_path))
    predictor = load_model(demo_model.onnx_bytes)
    gateway = open_gateway(config, models={"digits": predictor}, workers=workers)
    try:
        assert (_linger(gateway) > 0) is lingers
    finally:
        gateway.close()


@pytest.mark.parametrize(("value", "lingers"), [(None, False), ("1", False), ("3", True)])
def test_the_factory_reads_the_worker_count(
    tmp_path: Path,
    demo_model: DemoModel,
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
    lingers: bool,
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    monkeypatch.setenv("MODELSHIELD_CONFIG", str(write_config(tmp_path)))
    if value is None:
        monkeypatch.delenv(WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKERS_ENV, value)
    # create_app caps this process's BLAS threads: restore them for the tests that follow
    with pytest.warns(UserWarning, match="unsealed"), threadpool_limits(limits=None):
        app = create_app()
    gateway = app.gateway
    try:
        assert (_linger(gateway) > 0) is lingers
    finally:
        gateway.close()


_BLAS_PROBE = """
import warnings
from threadpoolctl import threadpool_info
from modelshield.gateway._server import create_app
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    app = create_app()
app.gateway.close()
print(sorted({p["num_threads"] for p in threadpool_info()}))
"""


@pytest.mark.parametrize(("setting", "threads"), [(None, 1), (1, 1), (2, 2)])
def test_the_factory_caps_blas_threads(
    tmp_path: Path, demo_model: DemoModel, demo_data: DemoData, setting: int | None, threads: int
) -> None:
    """A served worker's BLAS and OpenMP pools (every library loaded with the detectors, too)
    have ``[server] blas_threads`` threads (default 1); a second thread spun on a core the load
    needed (docs/gateway.md)."""
    import os
    import subprocess
    import sys

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    np.save(tmp_path / "ref.npy", demo_data.x_train)
    np.save(tmp_path / "cal.npy", demo_data.x_test[:225])
    extra = (
        "[detection]\nenabled = true\nreference = 'ref.npy'\ncalibration = 'cal.npy'\n"
        "[watermark]\nenabled = true\nkey = { file = 'wm.key' }\n"
    )
    (tmp_path / "wm.key").write_text("5a" * 32)
    if setting is not None:
        extra += f"[server]\nblas_threads = {setting}\n"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["MODELSHIELD_CONFIG"] = str(write_config(tmp_path, extra))
    # every pool starts with more; the setting decides
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "3"
    out = subprocess.run(
        [sys.executable, "-c", _BLAS_PROBE],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert out.strip().splitlines()[-1] == str([threads])
