"""`protect` on an ONNX, a scikit-learn and a torch model: a servable, certified, sealed result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelshield import IntegrityError, vault, watermark
from modelshield.config import load_config
from modelshield.demo import DEMO_INPUT_SPEC, DemoData, DemoModel
from modelshield.evidence import (
    load_certificate,
    load_openings,
    open_commitment,
    verify_certificate,
)
from modelshield.evidence._protect import protect_model
from modelshield.gateway import open_gateway
from modelshield.models import dump_torch, load_model


def _torch_model(demo_model: DemoModel) -> bytes:
    torch = pytest.importorskip("torch")
    mlp = demo_model.estimator
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for layer, w, b in zip((net[0], net[2]), mlp.coefs_, mlp.intercepts_, strict=True):
            layer.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
            layer.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    return dump_torch(net, input_spec=DEMO_INPUT_SPEC, classes=tuple(range(10)))


def _protected(source: Path, data: tuple[Any, Any] | None) -> tuple[Any, Any, Any, Any]:
    """``protect_model`` into ``out`` beside ``source``, with fresh keys: the report, the server
    and owner identities and the signing key."""
    server, owner = vault.generate_identity(), vault.generate_identity()
    signing = vault.generate_signing_key()
    report = protect_model(
        source,
        owner="Example Labs",
        recipients=[server.recipient],
        signing_key=signing,
        owner_recipient=owner.recipient,
        directory=source.parent / "out",
        data=data,
    )
    return report, server, owner, signing


def _served(report: Any, server: Any) -> tuple[set[str], set[str]]:
    """The models and the detected models of a gateway opened on the deployment as written,
    once the server's key is in place."""
    server.save(report.config.parent / "keys" / "server.key")
    gateway = open_gateway(load_config(report.config))
    try:
        return set(gateway.models), set(gateway.observers)
    finally:
        gateway.close()


@pytest.mark.parametrize("kind", ["onnx", "skops", "torch"])
def test_protect_each_model_kind(
    tmp_path: Path, demo_model: DemoModel, demo_data: DemoData, kind: str
) -> None:
    data = {
        "onnx": demo_model.onnx_bytes,
        "skops": demo_model.skops_bytes,
        "torch": _torch_model(demo_model) if kind == "torch" else b"",
    }[kind]
    source = tmp_path / f"digits.{kind}"
    source.write_bytes(data)
    report, server, owner, signing = _protected(source, (demo_data.x_train, demo_data.y_train))
    protected = vault.open_model(report.sealed_model, server, require_signer=signing.verifying_key)
    original = load_model(data)
    agreement = np.mean(protected.predict(demo_data.x_test) == original.predict(demo_data.x_test))
    if kind == "skops":
        assert report.watermarked
        assert agreement >= 0.97  # continued training moves a few answers
    else:
        assert not report.watermarked
        assert agreement == 1.0  # obfuscation preserves the function
    assert report.obfuscated
    certificate = load_certificate(report.certificate)
    check = verify_certificate(certificate, signing.verifying_key)
    assert check.owner == "Example Labs"
    openings = load_openings(vault.unseal_bytes(report.secrets, owner))
    assert all(open_commitment(certificate, o) for o in openings)
    with pytest.raises(IntegrityError):  # the server key does not open the owner's secrets
        vault.unseal_bytes(report.secrets, server)
    config = load_config(report.config)
    assert config.watermark.enabled
    assert config.detection.enabled
    assert config.detection.reference is not None
    assert _served(report, server) == ({"digits"}, {"digits"})  # servable as written
    if kind == "skops":
        opening = next(o for o in openings if o.name == "trigger-set")
        trigger = watermark.make_trigger_set(opening.secret, shape=(64,), classes=tuple(range(10)))
        assert watermark.verify_trigger_set(protected.predict, trigger).verified
        assert not watermark.verify_trigger_set(original.predict, trigger).verified


def test_protect_cli(tmp_path: Path, demo_model: DemoModel, modelshield_cli: Any) -> None:
    (tmp_path / "digits.onnx").write_bytes(demo_model.onnx_bytes)

    def run(*args: str) -> Any:
        return modelshield_cli(*args, cwd=tmp_path)

    assert run("keygen", "-o", "server").returncode == 0
    assert run("keygen", "--signing", "-o", "owner").returncode == 0
    r = run(
        "protect",
        "digits.onnx",
        "--owner",
        "Example",
        "-r",
        "server.pub",
        "--signing-key",
        "owner.signing.key",
        "-o",
        "out",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "keys" / "owner.key").exists()
    assert (
        json.loads((tmp_path / "out" / "certificate.json").read_text())["body"]["owner"]
        == "Example"
    )
    r = run(
        "protect",
        "digits.onnx",
        "--owner",
        "Example",
        "-r",
        "server.pub",
        "--signing-key",
        "owner.signing.key",
        "-o",
        "out",
    )
    assert r.returncode == 2  # not an empty folder


def test_protect_without_data_writes_detection_off_and_servable(
    tmp_path: Path, demo_model: DemoModel
) -> None:
    """Without honest rows the detectors cannot be fitted: detection is written switched off
    (it once was written on, and `serve` refused the deployment)."""
    source = tmp_path / "digits.onnx"
    source.write_bytes(demo_model.onnx_bytes)
    report, server, _, _ = _protected(source, None)
    config = load_config(report.config)
    assert not config.detection.enabled
    assert config.watermark.enabled
    assert (report.directory / "state").stat().st_mode & 0o777 == 0o700  # registry, audit log
    assert _served(report, server) == ({"digits"}, set())
    # the same default profile as `modelshield init` (protect once wrote a weaker one of its
    # own: no reverse sigmoid, 1 % of answers watermarked, no marks on uncertain answers)
    from modelshield.gateway import init_deployment

    scaffolded = load_config(init_deployment(tmp_path / "init", source).config)
    assert config.tiers == scaffolded.tiers
    assert config.watermark.model_dump(exclude={"key"}) == scaffolded.watermark.model_dump(
        exclude={"key"}
    )
    assert config.tiers["standard"].output[0].startswith("reverse_sigmoid")


@pytest.mark.parametrize("case", ["bad model", "bad data", "seal fails", "user file"])
def test_a_failed_protect_leaves_no_output_folder(
    tmp_path: Path,
    demo_model: DemoModel,
    modelshield_cli: Any,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """Whatever step fails, the output folder it created is gone (it was left behind, empty or
    half-written), and so is the scratch owner key."""
    (tmp_path / "digits.onnx").write_bytes(demo_model.onnx_bytes)
    (tmp_path / "notes.txt").write_text("not a model\n")
    (tmp_path / "bad.npz").write_text("not an npz\n")
    for args in (("keygen", "-o", "server"), ("keygen", "--signing", "-o", "owner")):
        assert modelshield_cli(*args, cwd=tmp_path).returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["protect", "notes.txt" if case == "bad model" else "digits.onnx", "--owner", "A",
            "-r", "server.pub", "--signing-key", "owner.signing.key", "-o", "out"]  # fmt: skip
    if case == "bad data":
        args += ["--data", "bad.npz"]
    if case in ("seal fails", "user file"):  # a failure after the folder has been written to
        from modelshield.cli import _app

        def broken(*_: object, **__: object) -> None:
            if case == "user file":  # saved there by its owner while protect was running
                (tmp_path / "out" / "notes.txt").write_text("mine")
            raise OSError(28, "No space left on device", "out/models/digits.sealed")

        monkeypatch.setattr(vault, "seal_bytes", broken)
        monkeypatch.setattr("sys.argv", ["modelshield", *args])
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as info:
            _app.main()
        assert info.value.code == 1
    else:
        r = modelshield_cli(*args, cwd=tmp_path)
        assert r.returncode != 0
        assert "internal error" not in r.stderr
    if case == "user file":  # only what protect wrote is gone
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
        assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
        before.append("out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
