"""The disaster drill: back up a live deployment, destroy it, restore it elsewhere, serve again
and verify the audit log, through the command line, to a folder and to SeaweedFS over S3."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import httpx
import pytest

from modelshield.backup import list_snapshots, load_trusted
from modelshield.config import load_config
from modelshield.demo import DemoData
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.stores import open_backup_store

from .conftest import Deployment, offsite_keys
from .test_tamper import run_cli


def _predict(url: str, deployment: Deployment, rows: list[list[float]], key: str) -> int:
    response = httpx.post(
        f"{url}/v1/models/{deployment.model_name}/predict",
        json={"inputs": rows},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return response.status_code


@pytest.mark.slow
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_disaster_drill(
    where: str,
    deployment: Deployment,
    demo_data: DemoData,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if where == "s3":
        request.getfixturevalue("s3_env")
        dest = f"s3://modelshield-tests/drill-{secrets.token_hex(4)}/prod"
    else:
        dest = str(tmp_path / "offsite-backups")
    rows = demo_data.x_test[:2].tolist()

    # 1. a live gateway answers requests; the backup runs while it is up
    gateway = open_gateway(load_config(deployment.config))
    with ServerThread(build_app(gateway)) as server:
        for _ in range(4):
            assert _predict(server.url, deployment, rows, deployment.api_key) == 200
        assert _predict(server.url, deployment, rows, "msk_bad") == 401
        code, out, err = run_cli(
            ["backup", "create", "--config", str(deployment.config), "--to", dest,
             "--tag", "drill"], monkeypatch, capsys,
        )  # fmt: skip
        assert code == 0, err
        assert "snapshot" in out
        assert _predict(server.url, deployment, rows, deployment.api_key) == 200
    identity, trust = offsite_keys(deployment, tmp_path / "safe")

    # 2. disaster: the deployment folder, its keys and its databases are gone
    shutil.rmtree(deployment.root)

    # 3. from the off-site keys alone: list, verify every byte, restore into a new folder
    store = open_backup_store(dest)
    try:
        [listing] = list_snapshots(store, load_trusted([trust]))
    finally:
        store.close()
    assert listing.status == "ok"
    assert listing.snapshot is not None
    assert listing.snapshot.manifest.tags == ("drill",)
    common = ["--to", dest, "--trust", str(trust)]
    code, out, err = run_cli(["backup", "list", *common], monkeypatch, capsys)
    assert code == 0, err
    assert listing.id[:8] in out
    code, out, err = run_cli(["backup", "verify", *common, "--read-data"], monkeypatch, capsys)
    assert code == 0, err
    new = tmp_path / "rebuilt"
    restore = ["backup", "restore", listing.id[:8], *common, "--into", str(new)]
    code, out, err = run_cli([*restore, "--identity", str(identity)], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = run_cli([*restore, "--identity", str(identity)], monkeypatch, capsys)
    assert code == 1
    assert "--force" in err

    # 4. the restored deployment verifies its audit log and serves the same clients
    config_path = new / "shield.toml"
    code, out, err = run_cli(["audit", "verify", "--config", str(config_path)], monkeypatch, capsys)
    assert code == 0, err
    assert "audit log intact" in out
    gateway = open_gateway(load_config(config_path))
    with ServerThread(build_app(gateway)) as server:
        assert _predict(server.url, deployment, rows, deployment.api_key) == 200
    code, out, err = run_cli(["audit", "verify", "--config", str(config_path)], monkeypatch, capsys)
    assert code == 0, err


@pytest.mark.slow
def test_backup_drill_for_the_demo(
    deployment: Deployment, demo_data: DemoData, tmp_path: Path
) -> None:
    from modelshield.backup import backup_drill

    report = backup_drill(
        deployment.config,
        tmp_path / "bk",
        tmp_path / "restored",
        api_key=deployment.api_key,
        model=deployment.model_name,
        rows=demo_data.x_test[:2],
    )
    assert report.deleted == (deployment.root / "models" / "digits.sealed",)
    assert not report.deleted[0].exists()
    assert report.served_status == 200
    assert report.audit_ok
    assert report.restored_config == tmp_path / "restored" / "shield.toml"
