"""`modelshield certify` and `certify --verify` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelshield.demo import DemoModel


def test_certify_and_verify(tmp_path: Path, demo_model: DemoModel, modelshield_cli: Any) -> None:
    (tmp_path / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    (tmp_path / "wm.key").write_bytes(b"w" * 32)
    (tmp_path / "LICENCE.txt").write_text("Evaluation only.\n")
    assert modelshield_cli("keygen", "--signing", "-o", "owner", cwd=tmp_path).returncode == 0
    assert modelshield_cli("keygen", "-o", "vaultkey", cwd=tmp_path).returncode == 0
    r = modelshield_cli(
        "certify", "digits.onnx", "--owner", "Example Labs", "--signing-key", "owner.signing.key",
        "--licence", "LICENCE.txt", "--commit", "trigger-set=wm.key", "-r", "vaultkey.pub",
        "-o", "cert.json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cert.json.openings.sealed").exists()
    assert b"w" * 32 not in (tmp_path / "cert.json").read_bytes()
    r = modelshield_cli(
        "certify",
        "--verify",
        "cert.json",
        "--trust",
        "owner.signing.pub",
        "digits.onnx",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "certificate verifies" in r.stdout
    # any change: exit 3 with one line
    cert = json.loads((tmp_path / "cert.json").read_text())
    cert["body"]["owner"] = "Mallory"
    (tmp_path / "forged.json").write_text(json.dumps(cert))
    r = modelshield_cli(
        "certify", "--verify", "forged.json", "--trust", "owner.signing.pub", cwd=tmp_path
    )
    assert r.returncode == 3
    assert r.stderr.strip() == "error: certificate does not verify"
    # a genuine certificate with another model file: exit 3, and the message says which failed
    (tmp_path / "other.onnx").write_bytes(demo_model.onnx_bytes + b"\0")
    r = modelshield_cli(
        "certify", "--verify", "cert.json", "--trust", "owner.signing.pub", "other.onnx",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 3
    assert r.stderr.strip() == (
        "error: the certificate verifies, but other.onnx is not the certified model "
        "(its SHA-256 differs)"
    )
    # refuses to overwrite
    r = modelshield_cli(
        "certify", "digits.onnx", "--owner", "X", "--signing-key", "owner.signing.key",
        "-o", "cert.json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1
    assert "refusing to overwrite" in r.stderr


def test_certify_usage_errors_exit_2(tmp_path: Path, modelshield_cli: Any) -> None:
    r = modelshield_cli("certify", "--verify", "x.json", cwd=tmp_path)
    assert r.returncode == 2
    r = modelshield_cli("certify", "model.onnx", cwd=tmp_path)
    assert r.returncode == 2


def test_evidence_command_on_a_stolen_file(
    tmp_path: Path, demo_model: DemoModel, modelshield_cli: Any
) -> None:
    from modelshield import watermark
    from modelshield.demo import DEMO_INPUT_SPEC, load_demo_data
    from modelshield.models import dump_sklearn

    data = load_demo_data()
    key = watermark.generate_key()
    (tmp_path / "trigger.key").write_bytes(key)
    trigger = watermark.make_trigger_set(key, shape=(64,), classes=tuple(range(10)))
    marked = watermark.embed_trigger_set(
        demo_model.estimator, trigger, data.x_train, data.y_train, random_state=0
    )
    (tmp_path / "stolen.skops").write_bytes(dump_sklearn(marked, input_spec=DEMO_INPUT_SPEC))
    (tmp_path / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    assert modelshield_cli("keygen", "--signing", "-o", "owner", cwd=tmp_path).returncode == 0
    assert modelshield_cli("keygen", "-o", "vault", cwd=tmp_path).returncode == 0
    r = modelshield_cli(
        "certify", "digits.onnx", "--owner", "Example Labs", "--signing-key", "owner.signing.key",
        "--commit", "trigger-set=trigger.key", "-r", "vault.pub", "-o", "cert.json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = modelshield_cli(
        "evidence", "stolen.skops", "--certificate", "cert.json", "--trust", "owner.signing.pub",
        "--openings", "cert.json.openings.sealed", "-i", "vault.key", "-o", "report.html",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "report.html").read_text()
    assert "the suspect is a copy of the certified model" in html
    (tmp_path / "report.html").write_text("an older report")
    r = modelshield_cli(
        "evidence", "stolen.skops", "--certificate", "cert.json", "--trust", "owner.signing.pub",
        "-o", "report.html", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr  # a report is replaced by the newer one
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    # a byte-identical copy of the certified file is claimed on its digest alone (no openings)
    (tmp_path / "copy.onnx").write_bytes(demo_model.onnx_bytes)
    r = modelshield_cli(
        "evidence", "copy.onnx", "--certificate", "cert.json", "--trust", "owner.signing.pub",
        "-o", "copy.html", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "copy.html").read_text()
    assert "the suspect is a copy of the certified model" in html
    assert "identical: the certified model itself" in html
    assert "certify --verify cert.json --trust owner.signing.pub copy.onnx" in html
    assert "byte for byte the model the owner certified" in " ".join(r.stdout.split())
    # an independent model (the demo's recipe, another seed) is not claimed
    from modelshield.demo import train_demo_model

    (tmp_path / "independent.onnx").write_bytes(train_demo_model(1, data).onnx_bytes)
    r = modelshield_cli(
        "evidence", "independent.onnx", "--certificate", "cert.json",
        "--trust", "owner.signing.pub",
        "--openings", "cert.json.openings.sealed", "-i", "vault.key", "-o", "other.html",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ownership of the suspect is not established" in (tmp_path / "other.html").read_text()

    # a certificate edited after signing: the report is written and says so, and the command
    # fails with the integrity exit code (it once exited 0)
    edited = (tmp_path / "cert.json").read_text().replace("Example Labs", "Evil Labs")
    (tmp_path / "edited.json").write_text(edited)
    r = modelshield_cli(
        "evidence", "stolen.skops", "--certificate", "edited.json", "--trust", "owner.signing.pub",
        "-o", "edited.html", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "does not verify" in " ".join(r.stderr.split())
    assert (tmp_path / "edited.html").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    assert not list(tmp_path.glob(".*.part"))


def test_certify_checks_what_it_can_of_the_sealed_artifact(
    tmp_path: Path, demo_model: DemoModel, modelshield_cli: Any
) -> None:
    """--sealed must name a sealed artifact whose plaintext has the model's size (all that can
    be seen without a key); an unrelated file was once certified as 'the sealed model'."""
    (tmp_path / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    (tmp_path / "other.bin").write_bytes(b"x" * 100)
    (tmp_path / "notes.txt").write_text("not sealed\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00licence")
    for args in (("keygen", "--signing", "-o", "owner"), ("keygen", "-o", "server")):
        assert modelshield_cli(*args, cwd=tmp_path).returncode == 0
    for src in ("digits.onnx", "other.bin"):
        r = modelshield_cli("seal", src, "-o", f"{src}.sealed", "-r", "server.pub", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    base = ("certify", "digits.onnx", "--owner", "Example", "--signing-key", "owner.signing.key")
    r = modelshield_cli(*base, "--sealed", "other.bin.sealed", "-o", "c1.json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "not the sealed artifact of this model" in " ".join(r.stderr.split())
    r = modelshield_cli(*base, "--sealed", "notes.txt", "-o", "c2.json", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    r = modelshield_cli(*base, "--licence", "binary.txt", "-o", "c3.json", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    r = modelshield_cli("certify", "digits.onnx", "--owner", " ", "--signing-key",
                        "owner.signing.key", "-o", "c4.json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "internal error" not in r.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("c")]
    r = modelshield_cli(*base, "--sealed", "digits.onnx.sealed", "-o", "ok.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ok.json").read_text())["body"]["sealed"]["file"] == (
        "digits.onnx.sealed"
    )
