"""benchmarks/vault_bench.py's tmpfs run leaves nothing behind, whether it succeeds or fails."""

from __future__ import annotations

import importlib.util
import os
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType

import pytest

from modelshield import vault

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "vault_bench.py"
SIZE = 3 << 20  # three default segments


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vault_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_round_times_copy_seal_unseal_and_cleans_up(
    bench: ModuleType, tmp_path: Path, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    with bench.TmpfsRun(tmp_path, SIZE) as run:
        folder = run.folder
        assert sorted(os.listdir(folder)) == ["input.bin"]
        seconds = run.round(identity, signer)
        assert set(seconds) == {"copy", "seal", "unseal"}
        assert all(s > 0 for s in seconds.values())
        assert sorted(os.listdir(folder)) == ["input.bin"]
    assert os.listdir(tmp_path) == []


def test_a_failing_round_still_cleans_up(
    bench: ModuleType,
    tmp_path: Path,
    identity: vault.Identity,
    signer: vault.SigningKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(bench.vault, "unseal", broken)
    with bench.TmpfsRun(tmp_path, SIZE) as run:
        folder = run.folder
        with pytest.raises(OSError, match="disk full"):
            run.round(identity, signer)
        assert sorted(os.listdir(folder)) == ["input.bin"]  # the sealed file went too
    assert os.listdir(tmp_path) == []


def _fail_inside(run: AbstractContextManager[object]) -> None:
    with run:
        raise RuntimeError("interrupted")


def test_an_exception_in_the_block_removes_the_folder(bench: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="interrupted"):
        _fail_inside(bench.TmpfsRun(tmp_path, SIZE))
    assert os.listdir(tmp_path) == []


def test_no_room_means_no_run(bench: ModuleType, tmp_path: Path) -> None:
    assert bench.TmpfsRun.has_room(tmp_path, SIZE) == (
        os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize > 3 * SIZE + (256 << 20)
    )
    assert not bench.TmpfsRun.has_room(tmp_path / "absent", SIZE)
    assert not bench.TmpfsRun.has_room(tmp_path, 1 << 60)


def test_the_open_model_floor_costs_more_than_the_plain_load_and_cleans_up(
    bench: ModuleType, tmp_path: Path
) -> None:
    model = bench.onnx_model((8,))
    ratio = bench.open_model_floor_ratio(tmp_path, model, 5)
    assert ratio > 1.0  # the load plus the required operations against the load alone
    assert os.listdir(tmp_path) == []
