"""Model obfuscation: function-preserving transforms with a proof of equivalence (experimental).

:func:`obfuscate` rewrites an ONNX model (or a torch.export archive, exported to ONNX) into one
that computes the same outputs but hides names, metadata, layer widths, layer count and the weight
values a reverse engineer would match against public checkpoints. Every transform is checked
against the original outputs, and a model that fails the check is never returned.

What it is worth: it raises the cost of reverse engineering; it is not cryptographic protection
(see ``docs/obfuscation.md``). It also removes white-box weight watermarks.

Stability: experimental. The names below may change in a minor release.
"""

from __future__ import annotations

from modelshield.obfuscate._api import (
    LEVELS,
    Change,
    ObfuscationReport,
    ObfuscationResult,
    obfuscate,
)
from modelshield.obfuscate._inspect import (
    RECOGNITION_THRESHOLD,
    ModelView,
    WeightMatch,
    inspect_model,
    weight_matrices,
    weight_similarity,
)
from modelshield.obfuscate._verify import EquivalenceError

__all__ = [
    "LEVELS",
    "RECOGNITION_THRESHOLD",
    "Change",
    "EquivalenceError",
    "ModelView",
    "ObfuscationReport",
    "ObfuscationResult",
    "WeightMatch",
    "inspect_model",
    "obfuscate",
    "weight_matrices",
    "weight_similarity",
]
