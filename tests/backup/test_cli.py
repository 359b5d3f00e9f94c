"""Command-line edges: missing destination, keys and trust; list without a trusted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Deployment
from .test_tamper import run_cli


def test_create_needs_a_destination(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["backup", "create", "--config", str(deployment.config)], monkeypatch, capsys
    )
    assert code == 1
    assert "no backup destination" in err


def test_create_uses_backup_to_and_list_verify_use_config_keys(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (deployment.root / "backup.toml").write_text(f'to = "{tmp_path / "bk"}"\n')
    code, out, err = run_cli(
        ["backup", "create", "--config", str(deployment.config), "--tag", "a"], monkeypatch, capsys
    )
    assert code == 0, err
    assert "keep a copy of keys/backup.key" in " ".join(out.split())
    dest = str(tmp_path / "bk")
    code, out, _ = run_cli(["backup", "list", "--to", dest], monkeypatch, capsys)
    assert code == 0
    assert "unverified" in out  # no --trust and no ./shield.toml: shown, marked unchecked
    code, out, _ = run_cli(
        ["backup", "list", "--to", dest, "--config", str(deployment.config)], monkeypatch, capsys
    )
    assert code == 0
    assert "unverified" not in out
    assert " ok " in out
    code, out, err = run_cli(
        ["backup", "verify", "--to", dest, "--config", str(deployment.config)], monkeypatch, capsys
    )
    assert code == 0, err
    # without --to, every command takes [backup] to, as create does (they once demanded --to)
    cfg = ["--config", str(deployment.config)]
    code, out, err = run_cli(["backup", "list", *cfg], monkeypatch, capsys)
    assert code == 0, err
    assert " ok " in out
    code, _, err = run_cli(["backup", "verify", *cfg], monkeypatch, capsys)
    assert code == 0, err
    code, out, err = run_cli(
        ["backup", "prune", *cfg, "--keep-last", "5", "--dry-run"], monkeypatch, capsys
    )
    assert code == 0, err
    monkeypatch.chdir(tmp_path)  # no ./shield.toml
    code, _, err = run_cli(["backup", "list"], monkeypatch, capsys)  # no config, no --to
    assert code == 1
    assert "no backup store: pass --to" in err


def test_verify_and_restore_need_keys(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = str(tmp_path / "bk")
    code, _, err = run_cli(
        ["backup", "create", "--config", str(deployment.config), "--to", dest], monkeypatch, capsys
    )
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["backup", "verify", "--to", dest], monkeypatch, capsys)
    assert code == 1
    assert "--trust" in err
    restore = ["backup", "restore", "0000", "--to", dest, "--into", str(tmp_path / "x")]
    code, _, err = run_cli([*restore, "--trust", str(deployment.backup_trust)], monkeypatch, capsys)
    assert code == 1
    assert "--identity" in err
    code, _, err = run_cli(
        [*restore, "--trust", str(deployment.backup_trust), "--identity",
         str(deployment.backup_key)], monkeypatch, capsys,
    )  # fmt: skip
    assert code == 1
    assert "no snapshot 0000" in err
    code, _, err = run_cli(["backup", "list", "--to", str(tmp_path / "typo")], monkeypatch, capsys)
    assert code == 1
    assert "no backup folder" in err
