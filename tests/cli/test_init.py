"""`modelshield init` refuses, before writing anything, what `serve` would refuse later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelshield.demo import DemoModel


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        (np.full((100, 5), 0.5), (), "shape"),
        (np.full((100, 64), np.nan), (), "NaN"),
        (np.full((2, 64), 0.5), (), "at least 50 rows"),
        (None, (), "is not a .npy file"),
        (np.full((100, 64), 0.5), ("--no-model",), "go with --model"),
        (np.full((100, 64), 0.5), ("--calibration-only",), "needs --reference"),
    ],
)
def test_init_refuses_rows_the_gateway_would_refuse(
    tmp_path: Path,
    demo_model: DemoModel,
    modelshield_cli: Any,
    rows: Any,
    extra: tuple[str, ...],
    message: str,
) -> None:
    (tmp_path / "m.onnx").write_bytes(demo_model.onnx_bytes)
    if rows is None:
        (tmp_path / "r.npy").write_text("not numpy\n")
    else:
        np.save(tmp_path / "r.npy", rows)
    args = ["init", "d"]
    if "--no-model" not in extra:
        args += ["--model", "m.onnx"]
    args += ["--calibration" if "--calibration-only" in extra else "--reference", "r.npy"]
    r = modelshield_cli(*args, cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in " ".join(r.stderr.split())
    assert "internal error" not in r.stderr
    assert not (tmp_path / "d").exists()


def test_init_on_a_file_is_one_clear_line(tmp_path: Path, modelshield_cli: Any) -> None:
    (tmp_path / "afile").write_text("x")
    r = modelshield_cli("init", "afile", cwd=tmp_path)
    assert r.returncode == 1
    assert "afile" in r.stderr
    assert "internal error" not in r.stderr


def test_init_with_good_rows_enables_detection(
    tmp_path: Path, demo_model: DemoModel, modelshield_cli: Any
) -> None:
    from modelshield.config import load_config
    from modelshield.demo import load_demo_data

    data = load_demo_data()
    (tmp_path / "m.onnx").write_bytes(demo_model.onnx_bytes)
    np.save(tmp_path / "r.npy", data.x_train)
    np.save(tmp_path / "c.npy", data.x_test[:100])
    r = modelshield_cli(
        "init", "d", "--model", "m.onnx", "--reference", "r.npy", "--calibration", "c.npy",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = load_config(tmp_path / "d" / "shield.toml")
    assert config.detection.enabled
    # a request body of the first calibration rows to try the gateway with, and the line to send it
    sample = json.loads((tmp_path / "d" / "sample-request.json").read_text())
    assert np.array_equal(np.asarray(sample["inputs"], np.float32), data.x_test[:3])
    assert "-d @d/sample-request.json" in " ".join(r.stdout.split())
    assert config.detection.reference is not None
    assert config.detection.calibration is not None


def test_init_keeps_keys_and_state_to_the_owner(tmp_path: Path) -> None:
    """state/ holds the registry (TOTP secrets in clear) and the audit log: 0700, as keys/ (it
    was once left at the umask's 0755)."""
    import os
    import stat

    from modelshield.gateway import init_deployment

    old = os.umask(0o022)
    try:
        report = init_deployment(tmp_path / "d")
    finally:
        os.umask(old)
    for sub in ("keys", "state"):
        assert stat.S_IMODE((report.directory / sub).stat().st_mode) == 0o700, sub
