"""``modelshield obfuscate`` as a user runs it: real subprocesses, exit codes, no partial files."""

from __future__ import annotations

import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from modelshield.demo import DemoData
from modelshield.models import load_model


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelshield", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_obfuscate_writes_an_equivalent_private_file(
    tmp_path: Path, models: dict[str, bytes], demo_data: DemoData
) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(models["demo_mlp"])
    rows = tmp_path / "rows.npy"
    np.save(rows, demo_data.x_test[:50])
    out = tmp_path / "out.onnx"
    result = _run(
        "obfuscate", str(source), "-o", str(out), "--level", "2", "--seed", "1",
        "--inputs", str(rows), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "top-1 identical" in " ".join(result.stdout.split())  # rich wraps long lines
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    original, obfuscated = load_model(source.read_bytes()), load_model(out.read_bytes())
    x = demo_data.x_test
    assert float(np.max(np.abs(original.predict_proba(x) - obfuscated.predict_proba(x)))) <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx", "rows.npy"]

    again = _run("obfuscate", str(source), "-o", str(out), cwd=tmp_path)
    assert again.returncode == 1
    assert "--force" in again.stderr
    forced = _run("obfuscate", str(source), "-o", str(out), "--force", "--json", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert '"top1_equal": true' in forced.stdout


def test_unsupported_model_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"\x00\x01 not a model")
    result = _run("obfuscate", str(source), "-o", str(tmp_path / "out.onnx"), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_bad_level_is_a_usage_error(tmp_path: Path, models: dict[str, bytes]) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(models["cnn"])
    result = _run("obfuscate", str(source), "-o", str(tmp_path / "o.onnx"), "--level", "4",
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert not (tmp_path / "o.onnx").exists()


def test_failed_equivalence_check_writes_nothing(tmp_path: Path, models: dict[str, bytes]) -> None:
    """A deliberately broken transform, injected into a real run of the command."""
    source = tmp_path / "model.onnx"
    source.write_bytes(models["cnn"])
    out = tmp_path / "out.onnx"
    script = textwrap.dedent(
        f"""
        import sys
        from modelshield.obfuscate import _transforms

        def broken(model, index, rng):
            g, link = _transforms._link(model, index)
            if link is None:
                return None
            w = _transforms.get_weight(g, link.first)
            _transforms.set_weight(g, link.first, w[::-1].copy())  # permutes only one side
            return "broken permutation"

        _transforms.permute_units = broken
        sys.argv = ["modelshield", "obfuscate", {str(source)!r}, "-o", {str(out)!r}]
        from modelshield.cli import main
        main()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "equivalence check failed after 'permute units'" in result.stderr
    assert "nothing written" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
