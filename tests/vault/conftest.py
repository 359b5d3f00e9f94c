"""Keys shared by the vault tests. Tests use a 64-byte segment size (8 plaintext bytes in the first
segment, 48 in each further one) so that many segments cost little, and scrypt's smallest work
factor so that passphrases cost milliseconds."""

from __future__ import annotations

import pytest

from modelshield import vault


@pytest.fixture(scope="session")
def identity() -> vault.Identity:
    return vault.generate_identity()


@pytest.fixture(scope="session")
def other_identity() -> vault.Identity:
    return vault.generate_identity()


@pytest.fixture(scope="session")
def signer() -> vault.SigningKey:
    return vault.generate_signing_key()
