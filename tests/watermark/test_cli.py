"""``modelshield watermark``: real subprocesses, real files, real exit codes."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelshield.demo import DEMO_INPUT_SPEC, DemoData, DemoModel
from modelshield.models import dump_torch


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelshield", "watermark", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_keygen_embed_verify(tmp_path: Path, demo_model: DemoModel) -> None:
    key = tmp_path / "wm.key"
    result = run("keygen", "-o", str(key))
    assert result.returncode == 0, result.stderr
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert run("keygen", "-o", str(key)).returncode == 1  # never overwritten silently

    model = tmp_path / "digits.skops"
    model.write_bytes(demo_model.skops_bytes)
    marked = tmp_path / "marked.skops"
    result = run(
        "embed", str(model), "--scheme", "trigger-set", "--key", str(key), "-o", str(marked)
    )
    assert result.returncode == 0, result.stderr

    ours = run("verify", str(marked), "--key", str(key), "--json")
    assert ours.returncode == 0, ours.stderr
    verdict = json.loads(ours.stdout.strip().splitlines()[-1])
    assert verdict["verified"] is True
    assert verdict["p_value"] < 1e-6

    original = run("verify", str(model), "--key", str(key))
    assert original.returncode == 0, original.stderr
    assert "not verified" in original.stdout


def test_bad_key_and_model_files_are_one_line_errors(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.key"
    bad_key.write_bytes(b"too short")
    model = tmp_path / "m.skops"
    model.write_bytes(b"not a model")
    result = run("verify", str(model), "--key", str(bad_key))
    assert result.returncode == 1
    assert "key" in result.stderr
    assert "Traceback" not in result.stderr
    good_key = tmp_path / "good.key"
    good_key.write_bytes(bytes(32))
    result = run("verify", str(model), "--key", str(good_key))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        run("embed", str(model), "--key", str(good_key), "--scheme", "nope", "-o", "x").returncode
        == 2
    )


@pytest.mark.torch
def test_weights_scheme_on_a_torch_file(tmp_path: Path, demo_data: DemoData) -> None:
    torch = pytest.importorskip("torch")
    data = tmp_path / "small.npz"
    np.savez(data, x=demo_data.x_train[:800], y=demo_data.y_train[:800])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model = tmp_path / "net.pt2"
    model.write_bytes(dump_torch(net, input_spec=DEMO_INPUT_SPEC, classes=tuple(range(10))))
    key = tmp_path / "wm.key"
    key.write_bytes(bytes(range(32)))
    marked = tmp_path / "marked.pt2"
    result = run(
        "embed",
        str(model),
        "--scheme",
        "weights",
        "--key",
        str(key),
        "--data",
        str(data),
        "-o",
        str(marked),
    )
    assert result.returncode == 0, result.stderr
    for path, expected in ((marked, True), (model, False)):
        out = run("verify", str(path), "--scheme", "weights", "--key", str(key), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["verified"] is expected
