"""Key derivation: deterministic, separated by purpose and key, refusing short keys."""

from __future__ import annotations

import numpy as np
import pytest

from modelshield.errors import KeyMissingError
from modelshield.watermark import KEY_BYTES, generate_key
from modelshield.watermark._keys import derive_key, keyed_bytes, keyed_normal, keyed_uniform


def test_generated_keys_are_fresh_32_bytes() -> None:
    a, b = generate_key(), generate_key()
    assert len(a) == KEY_BYTES == 32
    assert a != b


def test_derivation_is_deterministic_and_separated() -> None:
    key = bytes(range(32))
    assert derive_key(key, "a") == derive_key(key, "a")
    assert derive_key(key, "a") != derive_key(key, "b")
    assert derive_key(key, "a") != derive_key(bytes(range(1, 33)), "a")
    assert keyed_bytes(key, "a", 70) == keyed_bytes(key, "a", 100)[:70]


def test_keyed_uniform_and_normal_look_right() -> None:
    key = bytes(32)
    u = keyed_uniform(key, "u", (4000,))
    assert u.min() >= 0.0
    assert u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.02
    z = keyed_normal(key, "z", (4001,))
    assert z.shape == (4001,)
    assert abs(z.mean()) < 0.06
    assert abs(z.std() - 1.0) < 0.05
    np.testing.assert_array_equal(z, keyed_normal(key, "z", (4001,)))


@pytest.mark.parametrize("bad", [b"short", b"", "a string of more than sixteen chars", None])
def test_short_or_non_bytes_keys_are_refused(bad: object) -> None:
    with pytest.raises(KeyMissingError) as info:
        derive_key(bad, "a")  # type: ignore[arg-type]
    assert "short" not in str(info.value)
