"""The audit log's group commit is tuned to the number of worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelshield.config import load_config
from modelshield.demo import DemoModel
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
    with pytest.warns(UserWarning, match="unsealed"):
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
print(max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"))
"""


@pytest.mark.parametrize(("setting", "threads"), [(None, 1), (1, 1), (2, 2)])
def test_the_factory_caps_blas_threads(
    tmp_path: Path, demo_model: DemoModel, setting: int | None, threads: int
) -> None:
    """A served worker's BLAS pool has ``[server] blas_threads`` threads (default 1); a second
    thread spun on a core the load needed (docs/gateway.md)."""
    import os
    import subprocess
    import sys

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    extra = "" if setting is None else f"[server]\nblas_threads = {setting}\n"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["MODELSHIELD_CONFIG"] = str(write_config(tmp_path, extra))
    env["OPENBLAS_NUM_THREADS"] = "3"  # the process starts with more; the setting decides
    out = subprocess.run(
        [sys.executable, "-c", _BLAS_PROBE],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert int(out.split()[-1]) == threads
