"""Write the format-version-1 golden vectors in this folder (run once; never regenerate v1).

    python tests/vault/golden/generate.py

The vectors are committed; ``tests/vault/test_golden.py`` decrypts them and checks every field, so
a change that breaks reading existing artifacts fails there. A new format version gets a new
folder next to ``v1``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from modelshield import vault
from modelshield.hazmat import AesGcmHkdfStreaming

HERE = Path(__file__).parent / "v1"
PASSPHRASE = "modelshield golden vector v1"


def plaintext(size: int) -> bytes:
    """A deterministic plaintext: SHA-256 in counter mode over a fixed label."""
    out = b"".join(
        hashlib.sha256(b"modelshield golden %d" % i).digest() for i in range(size // 32 + 1)
    )
    return out[:size]


def main() -> int:
    if HERE.exists():
        print(f"{HERE} exists: golden vectors are never regenerated", file=sys.stderr)
        return 1
    HERE.mkdir()
    identity, signer = vault.generate_identity(), vault.generate_signing_key()
    identity.save(HERE / "identity.key")
    identity.recipient.save(HERE / "identity.pub")
    signer.verifying_key.save(HERE / "signer.signing.pub")
    provider = vault.LocalKeyProvider.generate(HERE / "local.kek")
    phrase = vault.Passphrase(PASSPHRASE, log_n=10)
    cases = {
        "x25519-signed": (300, [identity.recipient], signer, 64),
        "passphrase": (100, [phrase], None, 64),
        "provider-and-x25519-1mb": (1000, [provider, identity.recipient], signer, 1 << 20),
        "empty": (0, [identity.recipient], None, 64),
    }
    vectors = {}
    for name, (size, recipients, sign, segment) in cases.items():
        plain = plaintext(size)
        info = vault.seal_bytes(
            plain, HERE / f"{name}.sealed", recipients, sign, segment_size=segment
        )
        vectors[name] = {
            "file": f"{name}.sealed",
            "plaintext_size": size,
            "plaintext_sha256": hashlib.sha256(plain).hexdigest(),
            "inspect": info.to_dict(),
        }
    (HERE / "vectors.json").write_text(
        json.dumps({"passphrase": PASSPHRASE, "vectors": vectors}, indent=2) + "\n"
    )

    # Known-answer vector of the raw streaming AEAD, with the salt and nonce prefix fixed.
    ikm, salt, prefix = bytes(range(32)), bytes(range(100, 132)), bytes.fromhex("a0a1a2a3a4a5a6")
    ad, plain = b"modelshield kat", plaintext(200)
    encrypter = AesGcmHkdfStreaming(ikm, 64).new_encrypter(ad, salt=salt, nonce_prefix=prefix)
    layout = AesGcmHkdfStreaming(ikm, 64).layout
    parts, pos, count = [encrypter.header], 0, layout.segment_count(len(plain))
    for index in range(count):
        end = pos + layout.plaintext_segment_size(index)
        parts.append(encrypter.encrypt_segment(plain[pos:end], index, index == count - 1))
        pos = end
    kat = {
        "construction": "Tink AesGcmHkdfStreaming, AES-256, HKDF-SHA256, first segment offset 0",
        "ikm": ikm.hex(),
        "salt": salt.hex(),
        "nonce_prefix": prefix.hex(),
        "associated_data": ad.hex(),
        "ciphertext_segment_size": 64,
        "plaintext": plain.hex(),
        "ciphertext": b"".join(parts).hex(),
    }
    (HERE / "streaming-kat.json").write_text(json.dumps(kat, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
