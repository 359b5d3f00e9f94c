"""The watermark package's public surface is exactly its __all__."""

from __future__ import annotations

from types import ModuleType

import modelshield.watermark as wm

EXPECTED = {
    "DEFAULT_THRESHOLD",
    "KEY_BYTES",
    "Marks",
    "ResponseRecord",
    "ResponseWatermark",
    "TriggerSet",
    "Verification",
    "WeightWatermark",
    "binomial_verification",
    "bit_error_rate",
    "embed_trigger_set",
    "embed_trigger_set_torch",
    "embed_weights",
    "extract_bits",
    "fourier_embedding",
    "generate_key",
    "label_chance_rate",
    "make_trigger_set",
    "response_cost",
    "trace",
    "verify_trigger_set",
    "verify_weights",
}


def test_all_is_exactly_the_public_names() -> None:
    assert set(wm.__all__) == EXPECTED
    public = {
        n for n, v in vars(wm).items() if not n.startswith("_") and not isinstance(v, ModuleType)
    }
    assert public == EXPECTED


def test_docstring_states_stability_and_cites_papers() -> None:
    doc = wm.__doc__ or ""
    assert "experimental" in doc
    for paper in ("Adi et al.", "Uchida et al.", "Szyller et al."):
        assert paper in doc
