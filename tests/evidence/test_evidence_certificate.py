"""Ownership certificates verify, and fail on any change; commitments open; RFC 3161 stamps."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelshield import IntegrityError, vault
from modelshield.demo import DemoModel
from modelshield.evidence import (
    Opening,
    create_certificate,
    dump_certificate,
    load_certificate,
    open_commitment,
    tsa_timestamper,
    verify_certificate,
)

from .tsa_server import LocalTSA


@pytest.fixture
def material(tmp_path: Path, demo_model: DemoModel) -> tuple[Path, Any, Any]:
    model = tmp_path / "digits.onnx"
    model.write_bytes(demo_model.onnx_bytes)
    signing = vault.generate_signing_key()
    return model, signing, signing.verifying_key


@pytest.fixture
def certificate(material: tuple[Path, Any, Any]) -> tuple[dict[str, Any], list[Opening]]:
    model, signing, _ = material
    return create_certificate(
        model=model,
        owner="Example Labs Ltd",
        signing_key=signing,
        secrets_to_commit={"trigger-set": b"k" * 32, "response-watermark": b"r" * 32},
        licence="Internal use only.",
    )


def test_certificate_verifies(
    certificate: tuple[dict[str, Any], list[Opening]], material: tuple[Path, Any, Any]
) -> None:
    cert, _ = certificate
    model, _, trusted = material
    check = verify_certificate(cert, trusted, model=model)
    assert check.owner == "Example Labs Ltd"
    assert check.timestamp is None
    assert len(check.model_sha256) == 64


def test_round_trip_through_a_file(
    tmp_path: Path,
    certificate: tuple[dict[str, Any], list[Opening]],
    material: tuple[Path, Any, Any],
) -> None:
    cert, _ = certificate
    path = tmp_path / "cert.json"
    path.write_bytes(dump_certificate(cert))
    assert verify_certificate(load_certificate(path), material[2]).owner == "Example Labs Ltd"


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, (*prefix, i))
    else:
        yield prefix


def _mutated(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return "x"
    text = str(value)
    return text[:-1] + ("A" if text[-1:] != "A" else "B")


def test_every_field_change_is_refused(
    certificate: tuple[dict[str, Any], list[Opening]], material: tuple[Path, Any, Any]
) -> None:
    cert, _ = certificate
    trusted = material[2]
    paths = [p for p in _paths(cert) if p and p[0] in ("body", "format", "version", "signature")]
    assert len(paths) >= 15
    for path in paths:
        forged = copy.deepcopy(cert)
        node = forged
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = _mutated(node[path[-1]])
        with pytest.raises(IntegrityError):
            verify_certificate(forged, trusted)


def test_added_or_removed_fields_are_refused(
    certificate: tuple[dict[str, Any], list[Opening]], material: tuple[Path, Any, Any]
) -> None:
    cert, _ = certificate
    for forged in (dict(cert, extra=1), {k: v for k, v in cert.items() if k != "timestamp"}):
        with pytest.raises(IntegrityError):
            verify_certificate(forged, material[2])
    forged = copy.deepcopy(cert)
    forged["body"]["owner_alias"] = "someone"
    with pytest.raises(IntegrityError):
        verify_certificate(forged, material[2])


def test_another_key_is_refused(certificate: tuple[dict[str, Any], list[Opening]]) -> None:
    cert, _ = certificate
    with pytest.raises(IntegrityError):
        verify_certificate(cert, vault.generate_signing_key().verifying_key)


def test_another_model_file_is_refused(
    tmp_path: Path,
    certificate: tuple[dict[str, Any], list[Opening]],
    material: tuple[Path, Any, Any],
) -> None:
    model, _, trusted = material
    other = tmp_path / "other.onnx"
    shutil.copy(model, other)
    with other.open("ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(IntegrityError, match=r"certificate verifies, but other\.onnx is not the"):
        verify_certificate(certificate[0], trusted, model=other)
    # a forged certificate with that file is still only "does not verify"
    forged = json.loads(json.dumps(certificate[0]))
    forged["body"]["owner"] = "Mallory"
    with pytest.raises(IntegrityError, match=r"^certificate does not verify$"):
        verify_certificate(forged, trusted, model=other)


def test_commitments_open_only_with_the_right_secret(
    certificate: tuple[dict[str, Any], list[Opening]],
) -> None:
    cert, openings = certificate
    assert {o.name for o in openings} == {"trigger-set", "response-watermark"}
    for opening in openings:
        assert open_commitment(cert, opening)
        assert not open_commitment(cert, Opening(opening.name, opening.nonce, b"x" * 32))
        assert not open_commitment(cert, Opening(opening.name, bytes(32), opening.secret))
    assert b"k" * 32 not in dump_certificate(cert)


def test_floats_are_refused(material: tuple[Path, Any, Any]) -> None:
    from modelshield.evidence import canonical

    with pytest.raises(ValueError, match="floats"):
        canonical({"a": 0.5})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for the local TSA")
def test_rfc3161_timestamp_from_a_local_authority(material: tuple[Path, Any, Any]) -> None:
    model, signing, trusted = material
    tsa = LocalTSA()
    try:
        cert, _ = create_certificate(
            model=model,
            owner="Example Labs Ltd",
            signing_key=signing,
            timestamper=tsa_timestamper(tsa.url, tsa.certificate_pem),
        )
        check = verify_certificate(cert, trusted, tsa_certificate_pem=tsa.certificate_pem)
        assert check.timestamp is not None
        assert check.timestamp[:4] == cert["body"]["issued_at"][:4]
        other = LocalTSA()
        try:
            with pytest.raises(IntegrityError):
                verify_certificate(cert, trusted, tsa_certificate_pem=other.certificate_pem)
        finally:
            other.close()
        forged = copy.deepcopy(cert)
        forged["timestamp"]["token"] = forged["timestamp"]["token"][:-8] + "AAAAAAA="
        with pytest.raises(IntegrityError):
            verify_certificate(forged, trusted, tsa_certificate_pem=tsa.certificate_pem)
    finally:
        tsa.close()


@pytest.mark.parametrize("case", ["identical", "upper-case digest", "another file", "forged"])
def test_the_report_names_a_byte_identical_copy_only_under_a_genuine_certificate(
    case: str,
    tmp_path: Path,
    certificate: tuple[dict[str, Any], list[Opening]],
    material: tuple[Path, Any, Any],
) -> None:
    from modelshield.evidence import file_sha256, gather_evidence, plain_summary

    model, _, trusted = material
    cert = copy.deepcopy(certificate[0])
    suspect = model
    if case == "another file":
        suspect = tmp_path / "other.onnx"
        suspect.write_bytes(model.read_bytes() + b"\0")
    if case == "forged":
        cert["body"]["owner"] = "Mallory"
    digest = file_sha256(suspect)
    report = gather_evidence(
        suspect=str(suspect),
        suspect_predict=lambda x: [0] * len(x),  # no watermark test runs without openings
        certificate=cert,
        trusted_key=trusted,
        classes=tuple(range(10)),
        input_shape=(64,),
        suspect_sha256=digest.upper() if case == "upper-case digest" else digest,
    )
    expected = case in ("identical", "upper-case digest")
    assert report.identical_to_certified is expected
    assert report.ours is expected
    assert report.to_dict()["ours"] is expected
    assert ("byte for byte the model the owner certified" in plain_summary(report)) is expected
