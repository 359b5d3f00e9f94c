"""Watermarks that prove ownership of a model and name the client that leaked it (experimental:
names and defaults may change before 1.0).

Three schemes, each verified with an exact test under the null of an independent model
(:class:`Verification`):

* **Trigger set** (Adi et al., USENIX Security 2018): a keyed secret set of out-of-distribution
  patterns with keyed labels, taught to the model by continued training or fine-tuning and checked
  black-box through any ``predict(inputs) -> labels`` callable.
* **Weights** (Uchida et al., ICMR 2017): a keyed bit string embedded in one layer of a torch
  model through a regulariser and read back white-box (bit error rate + binomial p-value).
* **Per-client response watermark** (DAWN, Szyller et al., ACM MM 2021): the gateway answers a
  small keyed share of each client's queries with a keyed wrong label, chosen per neighbourhood of
  a locality-sensitive hash so that near-duplicates are marked alike; :func:`trace` tells which
  client's marks a suspect model carries, from its labels or, sharper, from its probabilities.

Keys are bytes passed in by the caller (:func:`generate_key` makes one); nothing in this package
reads or writes files. Measured robustness, including what breaks each scheme:
``docs/watermark.md``.
"""

from modelshield.watermark._keys import KEY_BYTES, generate_key
from modelshield.watermark._response import (
    Marks,
    ResponseRecord,
    ResponseWatermark,
    fourier_embedding,
    response_cost,
    trace,
)
from modelshield.watermark._stats import (
    DEFAULT_THRESHOLD,
    Verification,
    binomial_verification,
    label_chance_rate,
)
from modelshield.watermark._trigger import (
    TriggerSet,
    embed_trigger_set,
    embed_trigger_set_torch,
    make_trigger_set,
    verify_trigger_set,
)
from modelshield.watermark._weights import (
    WeightWatermark,
    bit_error_rate,
    embed_weights,
    extract_bits,
    verify_weights,
)

__all__ = [
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
]
