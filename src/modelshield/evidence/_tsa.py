"""RFC 3161 time-stamp client: ask a time-stamp authority (TSA) to countersign a digest.

The request and the response are the DER structures of RFC 3161 (asn1crypto parses them); the
response's CMS signature is checked with pyca/cryptography against the TSA certificate the caller
trusts. A token proves that the digest existed at the TSA's ``genTime``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelshield.errors import IntegrityError, ServiceUnavailableError

_log = logging.getLogger(__name__)

TSA_REQUEST_TYPE = "application/timestamp-query"


@dataclass(frozen=True)
class TimestampToken:
    """A verified time-stamp: the TSA's time and the DER token (a CMS ``ContentInfo``)."""

    time: datetime
    token: bytes
    policy: str
    serial: int


def build_request(digest: bytes, nonce: int) -> bytes:
    """A DER ``TimeStampReq`` for a SHA-256 ``digest`` asking for the TSA's certificate."""
    from asn1crypto import algos, tsp

    request = tsp.TimeStampReq(
        {
            "version": 1,
            "message_imprint": tsp.MessageImprint(
                {
                    "hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                    "hashed_message": digest,
                }
            ),
            "nonce": nonce,
            "cert_req": True,
        }
    )
    data: bytes = request.dump()
    return data


def _verify_cms_signature(signed_data: Any, tsa_certificate_pem: bytes) -> None:
    try:
        _check_cms_signature(signed_data, tsa_certificate_pem)
    except IntegrityError:
        raise
    except Exception as exc:  # any malformation of the token is an integrity failure
        _log.debug("time-stamp signature check failed: %r", exc)
        raise IntegrityError("time-stamp token signature does not verify") from None


def _check_cms_signature(signed_data: Any, tsa_certificate_pem: bytes) -> None:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    signer = signed_data["signer_infos"][0]
    content = signed_data["encap_content_info"]["content"].contents
    digest_name = signer["digest_algorithm"]["algorithm"].native
    if digest_name not in ("sha256", "sha384", "sha512"):
        raise IntegrityError("time-stamp token uses an unsupported digest")
    algorithm: hashes.HashAlgorithm = {
        "sha256": hashes.SHA256(),
        "sha384": hashes.SHA384(),
        "sha512": hashes.SHA512(),
    }[digest_name]
    attrs = signer["signed_attrs"]
    content_type = next(
        (a["values"][0].native for a in attrs if a["type"].native == "content_type"), None
    )
    if content_type != "tst_info":
        raise IntegrityError("time-stamp token does not sign a TSTInfo")
    message_digest = next(
        (a["values"][0].native for a in attrs if a["type"].native == "message_digest"), None
    )
    if message_digest != hashlib.new(digest_name, content).digest():
        raise IntegrityError("time-stamp token content does not match its signed digest")
    # the signature covers the DER of the attributes as a SET (tag 0x31), not as [0] IMPLICIT
    signed_bytes = b"\x31" + attrs.dump()[1:]
    certificate = x509.load_pem_x509_certificate(tsa_certificate_pem)
    key = certificate.public_key()
    signature = signer["signature"].native
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, signed_bytes, ec.ECDSA(algorithm))
        else:
            raise IntegrityError("unsupported TSA key type")
    except InvalidSignature:
        raise IntegrityError("time-stamp token signature does not verify") from None


def verify_token(token: bytes, digest: bytes, tsa_certificate_pem: bytes) -> TimestampToken:
    """Check a DER time-stamp token against ``digest`` and the trusted TSA certificate."""
    from asn1crypto import cms

    try:
        info = cms.ContentInfo.load(token)
        signed_data = info["content"]
        tst = signed_data["encap_content_info"]["content"].parsed
        imprint = tst["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        hashed = imprint["hashed_message"].native
        gen_time = tst["gen_time"].native
        policy = tst["policy"].dotted
        serial = int(tst["serial_number"].native)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        _log.debug("malformed time-stamp token: %r", exc)
        raise IntegrityError("malformed time-stamp token") from None
    if algorithm != "sha256" or hashed != digest:
        raise IntegrityError("time-stamp token is for another digest")
    _verify_cms_signature(signed_data, tsa_certificate_pem)
    return TimestampToken(time=gen_time, token=token, policy=policy, serial=serial)


def request_timestamp(
    url: str, digest: bytes, tsa_certificate_pem: bytes, *, timeout: float = 10.0
) -> TimestampToken:
    """Ask the TSA at ``url`` to time-stamp ``digest`` (SHA-256) and verify its answer."""
    import httpx
    from asn1crypto import tsp

    nonce = secrets.randbits(63)
    try:
        response = httpx.post(
            url,
            content=build_request(digest, nonce),
            headers={"Content-Type": TSA_REQUEST_TYPE},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(
            f"time-stamp authority unreachable: {type(exc).__name__}"
        ) from None
    if response.status_code != 200:
        raise ServiceUnavailableError(f"time-stamp authority answered HTTP {response.status_code}")
    try:
        answer = tsp.TimeStampResp.load(response.content)
        status = answer["status"]["status"].native
        token_info = answer["time_stamp_token"]
        tst = token_info["content"]["encap_content_info"]["content"].parsed
        answered_nonce = tst["nonce"].native
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        _log.debug("malformed TSA response: %r", exc)
        raise IntegrityError("malformed time-stamp response") from None
    if status not in ("granted", "granted_with_mods"):
        raise ServiceUnavailableError(f"time-stamp authority refused: {status}")
    if answered_nonce != nonce:
        raise IntegrityError("time-stamp response does not answer our request (nonce)")
    return verify_token(token_info.dump(), digest, tsa_certificate_pem)


def tsa_timestamper(url: str, tsa_certificate_pem: bytes) -> Any:
    """A ``timestamper`` for :func:`create_certificate` that asks the TSA at ``url``."""
    import base64

    def stamp(digest: bytes) -> dict[str, str]:
        token = request_timestamp(url, digest, tsa_certificate_pem)
        return {
            "tsa": url,
            "time": token.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "token": base64.b64encode(token.token).decode(),
        }

    return stamp
