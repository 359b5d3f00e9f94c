"""``modelshield attack run`` as a user meets it: a real subprocess against a model file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelshield", "attack", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_attack_run_writes_json(tmp_path: Path, demo_model: Any, demo_data: Any) -> None:
    model = tmp_path / "digits.onnx"
    model.write_bytes(demo_model.onnx_bytes)
    data = tmp_path / "data.npz"
    np.savez(data, pool=demo_data.x_train, x_test=demo_data.x_test, y_test=demo_data.y_test)
    out = tmp_path / "out.json"
    result = run(
        "run", "--target", str(model), "--attack", "copycat", "--budget", "200",
        "--data", str(data), "--json", str(out), "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["rows"] == 200
    assert summary["queries"] == 2
    assert summary["attack"] == "Copycat"
    assert summary["evaluated_on"] == "x_test"
    assert 0.8 <= summary["fidelity"] <= 1.0
    assert "fidelity" in result.stdout
    out.write_text("an older result")
    again = run(
        "run", "--target", str(model), "--attack", "copycat", "--budget", "200",
        "--data", str(data), "--json", str(out), "--seed", "3",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr  # the result replaces the older one
    assert json.loads(out.read_text())["rows"] == 200


def test_attack_run_errors_are_one_line(tmp_path: Path, demo_model: Any) -> None:
    model = tmp_path / "digits.onnx"
    model.write_bytes(demo_model.onnx_bytes)
    unknown = run("run", "--target", str(model), "--attack", "nope")
    assert unknown.returncode == 1
    assert "unknown attack" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    missing = run("run", "--target", str(tmp_path / "absent.onnx"))
    assert missing.returncode == 1
    assert "cannot read the model file" in missing.stderr
    url = run("run", "--target", "https://gateway.example/v1", "--attack", "knockoff")
    assert url.returncode == 1
    assert "needs --api-key" in url.stderr
    # an output that cannot be written is refused before the attack runs, not after it
    nowhere = run("run", "--target", str(model), "--json", str(tmp_path / "no" / "r.json"))
    assert nowhere.returncode == 1
    assert "not an existing folder" in " ".join(nowhere.stderr.split())
    folder = run("run", "--target", str(model), "--json", str(tmp_path))
    assert folder.returncode == 1
    assert "is a folder" in " ".join(folder.stderr.split())
    (tmp_path / "notes.txt").write_text("not data\n")
    text = run("run", "--target", str(model), "--data", str(tmp_path / "notes.txt"))
    assert text.returncode == 1
    assert "is not a .npz file" in " ".join(text.stderr.split())


def test_attack_list_names_every_attack() -> None:
    from modelshield.attacks import ATTACKS

    result = run("list")
    assert result.returncode == 0
    assert result.stdout.split() == list(ATTACKS)
