"""The vault commands as a user runs them: real subprocesses, real exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

INTEGRITY_LINE = "error: cannot open: wrong key or damaged file"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelshield", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def integrity_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stderr.strip() == INTEGRITY_LINE


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys and a sealed, signed model made with the command line itself."""
    d = tmp_path_factory.mktemp("cli")
    (d / "model.bin").write_bytes(os.urandom(70_000))
    ok(run("keygen", "-o", "srv", cwd=d))
    ok(run("keygen", "-o", "new", cwd=d))
    ok(run("keygen", "--signing", "-o", "me", cwd=d))
    ok(
        run(
            "seal",
            "model.bin",
            "-o",
            "m.sealed",
            "-r",
            "srv.pub",
            "--sign",
            "me.signing.key",
            cwd=d,
        )
    )
    return d


def test_keygen_files_and_modes(work: Path) -> None:
    for name in ("srv.key", "me.signing.key"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o600
    for name in ("srv.pub", "me.signing.pub"):
        assert (work / name).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = run("keygen", "-o", "srv", cwd=work)
    assert again.returncode == 1
    assert "exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_unseal_roundtrip_and_no_overwrite(work: Path) -> None:
    ok(run("unseal", "m.sealed", "-o", "out.bin", "-i", "srv.key", cwd=work))
    assert (work / "out.bin").read_bytes() == (work / "model.bin").read_bytes()
    assert stat.S_IMODE((work / "out.bin").stat().st_mode) == 0o600
    (work / "out.bin").write_bytes(b"keep me")
    again = run("unseal", "m.sealed", "-o", "out.bin", "-i", "srv.key", cwd=work)
    assert again.returncode == 1
    assert (work / "out.bin").read_bytes() == b"keep me"


def test_inspect_json_needs_no_key(work: Path) -> None:
    info = json.loads(ok(run("inspect", "m.sealed", "--json", cwd=work)))
    assert info["format_version"] == 1
    assert info["plaintext_size"] == 70_000
    assert info["signer"]
    assert len(info["recipients"]) == 1
    human = ok(run("inspect", "m.sealed", cwd=work))
    assert "modelshield sealed v1" in human
    assert info["recipients"][0]["key_id"] in human


def test_verify(work: Path) -> None:
    assert "payload digest matches" in ok(
        run("verify", "m.sealed", "--trust", "me.signing.pub", cwd=work)
    )
    out = ok(run("verify", "m.sealed", "--trust", "me.signing.pub", "-i", "srv.key", cwd=work))
    assert "every segment decrypted" in out
    ok(run("keygen", "--signing", "-o", "stranger", cwd=work))
    integrity_failure(run("verify", "m.sealed", "--trust", "stranger.signing.pub", cwd=work))


def test_rewrap_rotates_and_keeps_the_signature(work: Path, tmp_path: Path) -> None:
    sealed = tmp_path / "r.sealed"
    sealed.write_bytes((work / "m.sealed").read_bytes())
    old_id = json.loads(ok(run("inspect", str(sealed), "--json", cwd=work)))["recipients"][0]
    before = json.loads(ok(run("inspect", str(sealed), "--json", cwd=work)))
    ok(
        run(
            "rewrap", str(sealed), "-i", "srv.key", "-r", "new.pub",
            "--remove", old_id["key_id"], cwd=work,
        )
    )  # fmt: skip
    after = json.loads(ok(run("inspect", str(sealed), "--json", cwd=work)))
    assert (
        sealed.read_bytes()[after["header_size"] :]
        == (work / "m.sealed").read_bytes()[before["header_size"] :]
    )
    ok(run("verify", str(sealed), "--trust", "me.signing.pub", "-i", "new.key", cwd=work))
    integrity_failure(
        run("unseal", str(sealed), "-o", str(tmp_path / "x"), "-i", "srv.key", cwd=work)
    )
    assert not (tmp_path / "x").exists()


def test_passphrase_from_the_environment(work: Path, tmp_path: Path) -> None:
    env = {"MODELSHIELD_PASSPHRASE": "tr0ub4dor&3"}
    sealed, out = tmp_path / "p.sealed", tmp_path / "p.out"
    ok(run("seal", "model.bin", "-o", str(sealed), "--passphrase", cwd=work, env=env))
    ok(run("unseal", str(sealed), "-o", str(out), "--passphrase", cwd=work, env=env))
    assert out.read_bytes() == (work / "model.bin").read_bytes()
    wrong = {"MODELSHIELD_PASSPHRASE": "tr0ub4dor&4"}
    integrity_failure(
        run("unseal", str(sealed), "-o", str(tmp_path / "q"), "--passphrase", cwd=work, env=wrong)
    )
    assert not (tmp_path / "q").exists()


def test_passphrase_without_a_terminal_or_the_variable_is_a_usage_error(
    work: Path, tmp_path: Path
) -> None:
    """With no terminal to ask and no variable set, say how to give it (it printed a getpass
    warning, then 'Aborted.'); nothing is written."""
    env = {k: v for k, v in os.environ.items() if k != "MODELSHIELD_PASSPHRASE"}
    result = subprocess.run(
        [sys.executable, "-m", "modelshield", "seal", "model.bin", "-o", str(tmp_path / "n"),
         "--passphrase"],
        capture_output=True, text=True, timeout=120, cwd=work, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "MODELSHIELD_PASSPHRASE" in " ".join(result.stderr.split())
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "empty", "not-sealed"])
def test_bad_input_exits_3_with_one_line(work: Path, tmp_path: Path, damage: str) -> None:
    data = (work / "m.sealed").read_bytes()
    bad = {
        "flip": data[:500] + bytes([data[500] ^ 4]) + data[501:],
        "truncate": data[:-100],
        "append": data + b"\x00",
        "empty": b"",
        "not-sealed": (work / "model.bin").read_bytes(),
    }[damage]
    (tmp_path / "bad").write_bytes(bad)
    integrity_failure(
        run("unseal", str(tmp_path / "bad"), "-o", str(tmp_path / "out"), "-i", "srv.key", cwd=work)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


def test_an_unwritable_destination_is_one_line(work: Path, tmp_path: Path) -> None:
    result = run(
        "seal", "model.bin", "-o", str(tmp_path / "no" / "m.sealed"), "-r", "srv.pub", cwd=work
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith("m.sealed: No such file or directory")
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_identity_and_missing_key(work: Path, tmp_path: Path) -> None:
    integrity_failure(
        run("unseal", "m.sealed", "-o", str(tmp_path / "o"), "-i", "new.key", cwd=work)
    )
    missing = run("unseal", "m.sealed", "-o", str(tmp_path / "o"), "-i", "absent.key", cwd=work)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: key file not found: absent.key"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("seal", "model.bin", "-o", "x.sealed"),  # no recipient
        ("unseal", "m.sealed", "-o", "x.out"),  # no identity
        ("rewrap", "m.sealed", "-i", "srv.key"),  # nothing to do
        ("verify", "m.sealed"),  # no --trust
    ],
)
def test_usage_errors_exit_2(work: Path, args: tuple[str, ...]) -> None:
    result = run(*args, cwd=work)
    assert result.returncode == 2, result.stderr
    assert not (work / "x.sealed").exists()
    assert not (work / "x.out").exists()


def test_keygen_needs_a_name_and_seal_to_a_folder_names_it(work: Path, tmp_path: Path) -> None:
    for name in ("", "keys/"):
        result = run("keygen", "-o", name, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "out").mkdir()
    result = run("seal", str(work / "model.bin"), "-o", str(tmp_path / "out"), "-r",
                 str(work / "srv.pub"), cwd=work)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "is a folder" in " ".join(result.stderr.split())
    assert ".part" not in result.stderr
    assert list((tmp_path / "out").iterdir()) == []
