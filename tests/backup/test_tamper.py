"""``backup verify --read-data`` finds every tamper case and exits 3 naming snapshot and object."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import orjson
import pytest

from modelshield import vault
from modelshield.backup import CreateReport, create_snapshot, prune, verify_store
from modelshield.backup._config import RetentionPolicy
from modelshield.backup._manifest import encode_snapshot
from modelshield.cli import _app
from modelshield.errors import IntegrityError
from modelshield.stores import FolderBackupStore

from .conftest import Deployment, load_keys


def run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["modelshield", *args])
    with pytest.raises(SystemExit) as info:
        _app.main()
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


@pytest.fixture
def backed_up(deployment: Deployment, tmp_path: Path) -> tuple[Path, CreateReport]:
    store = FolderBackupStore(tmp_path / "bk")
    report = create_snapshot(deployment.config, store)
    return tmp_path / "bk", report


def _object(root: Path, report: CreateReport, role: str) -> tuple[Path, str]:
    entry = next(e for e in report.snapshot.manifest.entries if e.role == role)
    name = f"objects/{entry.digest[:2]}/{entry.digest}"
    return root / name, name


def _verify(
    root: Path,
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> tuple[int, str]:
    code, _, err = run_cli(
        ["backup", "verify", "--to", str(root), "--trust", str(deployment.backup_trust), *extra],
        monkeypatch,
        capsys,
    )
    return code, " ".join(err.split())


def test_intact_backup_verifies(
    backed_up: tuple[Path, CreateReport],
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = backed_up
    code, out, _ = run_cli(
        ["backup", "verify", "--to", str(root), "--trust", str(deployment.backup_trust),
         "--read-data"], monkeypatch, capsys,
    )  # fmt: skip
    assert code == 0
    assert "backup intact" in out


def test_missing_object(
    backed_up: tuple[Path, CreateReport],
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, report = backed_up
    path, name = _object(root, report, "model")
    path.unlink()
    for extra in ((), ("--read-data",)):
        code, err = _verify(root, deployment, monkeypatch, capsys, *extra)
        assert code == 3
        assert report.snapshot.id[:16] in err
        assert name in err
        assert "missing" in err


def test_changed_byte_needs_read_data(
    backed_up: tuple[Path, CreateReport],
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, report = backed_up
    path, name = _object(root, report, "model")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, _ = _verify(root, deployment, monkeypatch, capsys)
    assert code == 0  # same size: only re-reading the data can see it
    code, err = _verify(root, deployment, monkeypatch, capsys, "--read-data")
    assert code == 3
    assert report.snapshot.id[:16] in err
    assert name in err
    assert "models/digits.sealed" in err


def test_truncated_object(
    backed_up: tuple[Path, CreateReport],
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, report = backed_up
    path, name = _object(root, report, "audit")
    path.write_bytes(path.read_bytes()[:-1])
    code, err = _verify(root, deployment, monkeypatch, capsys)
    assert code == 3
    assert name in err


def test_replaced_manifest(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "bk"
    store = FolderBackupStore(root)
    old = create_snapshot(deployment.config, store)
    new = create_snapshot(deployment.config, store)
    old_file = root / "snapshots" / f"{old.snapshot.id}.json"
    new_file = root / "snapshots" / f"{new.snapshot.id}.json"
    shutil.copyfile(old_file, new_file)  # roll the newest snapshot back to an older one
    code, err = _verify(root, deployment, monkeypatch, capsys, "--read-data")
    assert code == 3
    assert new.snapshot.id[:16] in err
    assert "replaced" in err


def test_forged_signature(
    backed_up: tuple[Path, CreateReport],
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # an attacker who can write the store signs a manifest of their own with their own key
    root, report = backed_up
    snapshot_id, data = encode_snapshot(report.snapshot.manifest, vault.generate_signing_key())
    assert snapshot_id == report.snapshot.id
    (root / "snapshots" / f"{snapshot_id}.json").write_bytes(data)
    code, err = _verify(root, deployment, monkeypatch, capsys, "--read-data")
    assert code == 3
    assert snapshot_id[:16] in err
    assert "signature" in err


def test_flipped_signature_bit(
    backed_up: tuple[Path, CreateReport],
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, report = backed_up
    file = root / "snapshots" / f"{report.snapshot.id}.json"
    wrapped = orjson.loads(file.read_bytes())
    signature = bytearray(base64.b64decode(wrapped["signature"]))
    signature[-1] ^= 0x80
    wrapped["signature"] = base64.b64encode(bytes(signature)).decode()
    file.write_bytes(orjson.dumps(wrapped))
    code, err = _verify(root, deployment, monkeypatch, capsys)
    assert code == 3
    assert report.snapshot.id[:16] in err


def test_swapped_objects_are_caught(
    backed_up: tuple[Path, CreateReport], deployment: Deployment
) -> None:
    # two valid sealed objects swapped under each other's names
    root, report = backed_up
    a, _ = _object(root, report, "config")
    b, _ = _object(root, report, "registry")
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    _, trusted = load_keys(deployment)
    result = verify_store(FolderBackupStore(root), trusted, read_data=True)
    assert not result.ok
    assert {p.path for p in result.problems} == {"shield.toml", "state/registry.db"}
    with pytest.raises(IntegrityError):
        result.raise_for_failure()


def test_prune_refuses_a_store_with_a_forged_snapshot(
    backed_up: tuple[Path, CreateReport], deployment: Deployment
) -> None:
    root, report = backed_up
    _, data = encode_snapshot(report.snapshot.manifest, vault.generate_signing_key())
    (root / "snapshots" / f"{report.snapshot.id}.json").write_bytes(data)
    _, trusted = load_keys(deployment)
    with pytest.raises(IntegrityError):
        prune(FolderBackupStore(root), trusted, RetentionPolicy(keep_last=1))
    assert any((root / "objects").rglob("*"))


def test_tamper_on_s3(deployment: Deployment, s3_env: object) -> None:
    import secrets

    from modelshield.stores import open_backup_store

    store = open_backup_store(f"s3://modelshield-tests/tamper-{secrets.token_hex(4)}", create=True)
    try:
        report = create_snapshot(deployment.config, store)
        _, trusted = load_keys(deployment)
        assert verify_store(store, trusted, read_data=True).ok
        model = next(e for e in report.snapshot.manifest.entries if e.role == "model")
        config = next(e for e in report.snapshot.manifest.entries if e.role == "config")
        name = f"objects/{model.digest[:2]}/{model.digest}"
        data = bytearray(store.get(name) or b"")
        data[100] ^= 0x04
        store.put(name, bytes(data))
        store.delete(f"objects/{config.digest[:2]}/{config.digest}")
        result = verify_store(store, trusted, read_data=True)
        reasons = {p.path: p.reason for p in result.problems}
        assert reasons == {
            "models/digits.sealed": "content does not match its digest (changed or damaged)",
            "shield.toml": "missing",
        }
    finally:
        store.close()


def test_prune_refuses_a_store_with_a_missing_object(
    backed_up: tuple[Path, CreateReport], deployment: Deployment
) -> None:
    """A snapshot whose object is gone fails verification: prune deletes nothing, not even the
    snapshots its policy would forget."""
    root, report = backed_up
    store = FolderBackupStore(root)
    _, trusted = load_keys(deployment)
    second = create_snapshot(deployment.config, store)  # a snapshot keep_last=1 would forget
    path, _ = _object(root, report, "config")
    path.unlink()
    before = sorted(p for p in root.rglob("*") if p.is_file())
    with pytest.raises(IntegrityError, match="missing"):
        prune(store, trusted, RetentionPolicy(keep_last=1))
    assert sorted(p for p in root.rglob("*") if p.is_file()) == before
    assert second.snapshot.id != report.snapshot.id
