"""``modelshield clients`` and ``modelshield admin`` as a user meets them: real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest

from modelshield.access import (
    ADMIN_PREFIX,
    CLIENT_PREFIX,
    CredentialsRejected,
    RejectReason,
    open_admin_registry,
    open_registry,
)
from modelshield.access._keys import parse_key


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelshield", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    (tmp_path / "shield.toml").write_text('[registry]\nurl = "sqlite:///state/registry.db"\n')
    return tmp_path


def registry_url(deployment: Path) -> str:
    return f"sqlite:///{deployment / 'state' / 'registry.db'}"


def test_clients_lifecycle(deployment: Path) -> None:
    added = run("clients", "add", "alice", "--models", "digits,iris", "--json", cwd=deployment)
    assert added.returncode == 0, added.stderr
    record = json.loads(added.stdout)
    assert list(record) == ["name", "key_id", "api_key"]
    assert record["name"] == "alice"
    key = record["api_key"]
    assert parse_key(key, CLIENT_PREFIX).key_id == record["key_id"]
    with open_registry(registry_url(deployment)) as registry:
        client = registry.authenticate(key, time.time())
        assert client.models == frozenset({"digits", "iris"})
        assert client.tier == "standard"

    # human output: the key once; list shows the key id and never a secret
    other = run(
        "clients", "add", "bob", "--models", "digits", "--tier", "gold", "--expires", "30d",
        cwd=deployment,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert "no tier 'gold'" in " ".join(other.stderr.split())  # shield.toml has none
    bob_key = next(w for w in other.stdout.split() if w.startswith("msk_"))
    assert other.stdout.count(bob_key) == 1
    listed = run("clients", "list", "--config", str(deployment / "shield.toml"), cwd=Path("/"))
    assert listed.returncode == 0, listed.stderr
    assert record["key_id"] in listed.stdout
    assert "gold" in listed.stdout
    as_json = run("clients", "list", "--json", cwd=deployment)
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["alice", "bob"]
    assert rows[1]["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=120)
    for text in (listed.stdout, as_json.stdout):
        assert "msk_" not in text
        for k in (key, bob_key):
            assert parse_key(k, CLIENT_PREFIX).secret not in text

    rotated = run("clients", "rotate", "alice", "--json", cwd=deployment)
    assert rotated.returncode == 0, rotated.stderr
    new_key = json.loads(rotated.stdout)["api_key"]
    revoked = run("clients", "revoke", "bob", cwd=deployment)
    assert revoked.returncode == 0, revoked.stderr
    with open_registry(registry_url(deployment)) as registry:
        now = time.time()
        assert registry.authenticate(new_key, now).name == "alice"
        for old in (key, bob_key):
            with pytest.raises(CredentialsRejected) as info:
                registry.authenticate(old, now)
            assert info.value.reason is RejectReason.REVOKED


def test_revoke_by_key_id_and_unknown_names(deployment: Path) -> None:
    added = json.loads(
        run("clients", "add", "carol", "--models", "digits", "--json", cwd=deployment).stdout
    )
    assert run("clients", "revoke", added["key_id"], cwd=deployment).returncode == 0
    missing = run("clients", "revoke", "nobody", cwd=deployment)
    assert missing.returncode == 1
    assert "nobody" in missing.stderr
    assert "Traceback" not in missing.stderr
    duplicate = run("clients", "add", "dave", "--models", "digits", cwd=deployment)
    assert duplicate.returncode == 0
    again = run("clients", "add", "dave", "--models", "digits", cwd=deployment)
    assert again.returncode == 1
    assert "client 'dave' already has a key that is not revoked" in " ".join(again.stderr.split())
    # a name whose keys are all revoked: the message says so (it once said "no client")
    assert run("clients", "revoke", "dave", cwd=deployment).returncode == 0
    gone = run("clients", "resume", "dave", cwd=deployment)
    assert gone.returncode == 1
    assert "client 'dave' has no live key: its keys are revoked" in " ".join(gone.stderr.split())


@pytest.mark.parametrize(
    "args",
    [
        ("clients", "add", "alice"),  # --models is required
        ("clients", "add", "alice", "--models", "digits", "--expires", "soon"),
        ("clients", "add", "alice", "--models", "digits", "--expires", "99999999999999d"),
        ("clients", "rotate", "alice", "--expires", "99999999999999d"),
        ("clients", "add", "alice", "--models", "digits", "--no-such-option"),
        ("clients", "add", "bad name", "--models", "digits"),  # once exit 1
        ("clients", "add", "alice", "--models", ","),
        ("clients", "revoke"),
        ("admin", "enroll"),
    ],
)
def test_usage_errors_exit_2(deployment: Path, args: tuple[str, ...]) -> None:
    before = run("clients", "list", "--all", "--json", cwd=deployment)
    result = run(*args, cwd=deployment)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    after = run("clients", "list", "--all", "--json", cwd=deployment)
    assert after.returncode == 0
    assert after.stdout == before.stdout  # nothing written, no key revoked


def test_missing_config_is_an_error(tmp_path: Path) -> None:
    result = run("clients", "list", cwd=tmp_path)
    assert result.returncode == 1
    assert "shield.toml" in result.stderr


def test_admin_enroll(deployment: Path) -> None:
    result = run("admin", "enroll", "root", cwd=deployment)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    admin_key = next(w for w in out.split() if w.startswith("msa_"))
    uri = next(w for w in out.split() if w.startswith("otpauth://"))
    assert out.count(admin_key) == 1
    assert "█" in out or "▀" in out  # the QR code
    totp = pyotp.parse_uri(uri)
    now = time.time()
    with open_admin_registry(registry_url(deployment)) as admins:
        admin = admins.verify(admin_key, totp.at(now), now)
        assert admin.name == "root"
        assert parse_key(admin_key, ADMIN_PREFIX).key_id == admin.key_id
    as_json = run("admin", "enroll", "ops", "--json", cwd=deployment)
    record = json.loads(as_json.stdout)
    assert set(record) == {"name", "key_id", "admin_key", "totp_secret", "otpauth_uri"}
    listed = run("admin", "list", cwd=deployment)
    assert "root" in listed.stdout
    assert "ops" in listed.stdout
    assert record["totp_secret"] not in listed.stdout
    assert "msa_" not in listed.stdout
    assert "locked out" not in listed.stdout
    # five wrong codes lock "ops" out: the list says so (it once still said "active")
    now = time.time()
    wrong = "000000" if pyotp.TOTP(record["totp_secret"]).at(now) != "000000" else "111111"
    with open_admin_registry(registry_url(deployment)) as admins:
        for _ in range(5):
            with pytest.raises(CredentialsRejected):
                admins.verify(record["admin_key"], wrong, now)
    listed = run("admin", "list", cwd=deployment)
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if len(line.split()) > 2}
    assert "locked out until" in rows["ops"]
    assert "locked out" not in rows["root"]


def test_revocation_by_another_process_is_honoured_within_one_second(deployment: Path) -> None:
    record = json.loads(
        run("clients", "add", "erin", "--models", "digits", "--json", cwd=deployment).stdout
    )
    with open_registry(registry_url(deployment)) as gateway_side:
        assert gateway_side.authenticate(record["api_key"], time.time()).name == "erin"  # cached
        assert run("clients", "revoke", "erin", cwd=deployment).returncode == 0
        revoked_at = time.monotonic()
        reason: RejectReason | None = None
        while reason is None and time.monotonic() - revoked_at < 1.0:
            try:
                gateway_side.authenticate(record["api_key"], time.time())
            except CredentialsRejected as exc:
                reason = exc.reason
            else:
                time.sleep(0.01)
        assert reason is RejectReason.REVOKED
        assert time.monotonic() - revoked_at < 1.0


def test_list_shows_an_expired_key_as_expired(deployment: Path) -> None:
    """`clients list` once showed a key past its expiry as `active` (the gateway refuses it)."""
    import time

    added = run("clients", "add", "eve", "--models", "digits", "--expires", "1s", cwd=deployment)
    assert added.returncode == 0, added.stderr
    assert run("clients", "add", "fay", "--models", "digits", cwd=deployment).returncode == 0
    time.sleep(1.2)
    rows = {
        r["name"]: r
        for r in map(
            json.loads, run("clients", "list", "--json", cwd=deployment).stdout.split("\n")[:-1]
        )
    }
    assert rows["eve"]["expired"] is True
    assert rows["fay"]["expired"] is False
    table = run("clients", "list", cwd=deployment).stdout
    line = {ln.split()[1]: ln for ln in table.splitlines() if ln.split()[1:2] in (["eve"], ["fay"])}
    assert "expired" in line["eve"]
    assert "active" in line["fay"]


def _audited_deployment(tmp_path: Path, audit_url: str) -> Path:
    from modelshield import audit

    audit.write_audit_key(tmp_path / "audit.key", audit.generate_audit_key())
    (tmp_path / "shield.toml").write_text(
        '[registry]\nurl = "sqlite:///state/registry.db"\n'
        f'[audit]\nurl = "{audit_url}"\nkey = {{ file = "audit.key" }}\n'
    )
    return tmp_path


def test_command_line_changes_are_audited(tmp_path: Path) -> None:
    """The admin API and the dashboard audited their changes; the command line did not."""
    from modelshield import audit
    from modelshield.config import load_config
    from modelshield.stores import open_audit_store

    cwd = _audited_deployment(tmp_path, "sqlite:///state/audit.db")
    steps = [
        ("clients", "add", "gil", "--models", "digits"),
        ("clients", "suspend", "gil"),
        ("clients", "resume", "gil"),
        ("clients", "rotate", "gil"),
        ("clients", "revoke", "gil"),
        ("admin", "enroll", "root", "--json"),
        ("admin", "revoke", "root"),
    ]
    for step in steps:
        result = run(*step, cwd=cwd)
        assert result.returncode == 0, (step, result.stderr)
    config = load_config(cwd / "shield.toml")
    store = open_audit_store(config.audit.url, read_only=True)
    try:
        records = [r for r in audit.export(store) if r["decision"] == "admin"]
        assert audit.verify(store, audit.audit_key_from_config(config)).ok
    finally:
        store.close()
    assert [r["reason"] for r in records] == [
        "add:gil", "suspend:gil", "resume:gil", "rotate:gil", "revoke:gil",
        "admin-enroll:root", "admin-revoke:root",
    ]  # fmt: skip
    assert {r["client"] for r in records} == {"admin:cli"}
    assert all(r["key_id"] for r in records)


def test_a_change_whose_record_cannot_be_written_is_made_and_says_so(tmp_path: Path) -> None:
    cwd = _audited_deployment(tmp_path, "postgresql://postgres@127.0.0.1:1/nowhere")
    added = run("clients", "add", "hal", "--models", "digits", "--json", cwd=cwd)
    assert added.returncode == 1
    assert json.loads(added.stdout)["api_key"]  # the key exists, so it is shown all the same
    assert "client hal added, but its audit record could not be written" in " ".join(
        added.stderr.split()
    )
    revoked = run("clients", "revoke", "hal", cwd=cwd)
    assert revoked.returncode == 1
    assert "revoked" in revoked.stdout  # a revocation does not wait for the audit store
    with open_registry(registry_url(cwd)) as registry:
        assert [c.status.value for c in registry.list(include_revoked=True)] == ["revoked"]
