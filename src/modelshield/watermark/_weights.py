"""White-box weight watermark (Uchida et al., "Embedding Watermarks into Deep Neural Networks",
ICMR 2017) for torch models.

``T`` keyed bits are embedded into one layer's weights by a regulariser added to the task loss
during (fine-)training: with ``w`` the layer's weights averaged over its output units and ``X`` a
keyed Gaussian projection matrix, the regulariser is the binary cross-entropy between
``sigmoid(X w)`` and the bits. The bits are read back as ``X w >= 0``; verification counts the
matching bits with an exact binomial test (chance 1/2 for independent weights, or the suspect's
own bit balance when that is higher) and reports the bit error rate.

Averaging over output units makes the mark invariant to permuting those units, but not to the
other function-preserving transform of ReLU networks, per-unit positive rescaling: measured in
``docs/watermark.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield.errors import InvalidInputError, UnsupportedModelError
from modelshield.watermark._keys import check_key, keyed_integers, keyed_normal, set_mode
from modelshield.watermark._stats import (
    DEFAULT_THRESHOLD,
    Verification,
    binomial_verification,
    label_chance_rate,
)

SCHEME = "weights"


@dataclass(frozen=True, eq=False)
class WeightWatermark:
    """The secret of a weight watermark: which parameter, which bits, which projection.

    ``layer`` names a weight parameter of the module (``"0.weight"``: its
    ``named_parameters()`` name); its weights averaged over the first axis (output units) have
    ``projection.shape[1]`` elements. Build it from a key with :meth:`from_key`.
    """

    layer: str
    bits: npt.NDArray[np.int64]
    projection: npt.NDArray[np.float64]

    @classmethod
    def from_key(
        cls, key: bytes, *, layer: str, n_inputs: int, n_bits: int = 32
    ) -> WeightWatermark:
        """Derive the bits and the projection for ``layer`` (with ``n_inputs`` averaged weights)."""
        check_key(key)
        if n_bits < 1 or n_inputs < 1:
            raise InvalidInputError("need n_bits >= 1 and n_inputs >= 1")
        # the layer's name is not part of the derivation: re-exporting a model renames parameters
        bits = keyed_integers(key, f"weights/bits/{n_bits}", n_bits, 2)
        projection = keyed_normal(key, f"weights/projection/{n_inputs}", (n_bits, n_inputs))
        return cls(layer=layer, bits=bits, projection=projection)

    def __repr__(self) -> str:
        return f"WeightWatermark(layer={self.layer!r}, n_bits={self.bits.shape[0]})"


def _parameter(module: Any, name: str) -> Any:
    params = dict(module.named_parameters())
    if name not in params:
        raise UnsupportedModelError(f"the model has no parameter {name!r}")
    return params[name]


def _averaged(weight: Any) -> Any:
    return weight.reshape(weight.shape[0], -1).mean(dim=0)


def extract_bits(module: Any, watermark: WeightWatermark) -> npt.NDArray[np.int64]:
    """Read the bits out of ``module``'s weights: ``X w >= 0`` (white-box)."""
    import torch

    with torch.no_grad():
        w = _averaged(_parameter(module, watermark.layer)).double().cpu().numpy()
    if w.shape[0] != watermark.projection.shape[1]:
        raise UnsupportedModelError(
            f"layer {watermark.layer!r} has {w.shape[0]} averaged weights, "
            f"the watermark expects {watermark.projection.shape[1]}"
        )
    out: npt.NDArray[np.int64] = (watermark.projection @ w >= 0).astype(np.int64)
    return out


def bit_error_rate(extracted: npt.ArrayLike, bits: npt.ArrayLike) -> float:
    """Share of bits that differ."""
    a, b = np.asarray(extracted).reshape(-1), np.asarray(bits).reshape(-1)
    if a.shape != b.shape:
        raise InvalidInputError("bit strings differ in length")
    return float(np.mean(a != b))


def verify_weights(
    module: Any, watermark: WeightWatermark, *, threshold: float = DEFAULT_THRESHOLD
) -> Verification:
    """Extract the bits from ``module`` and test them against the watermark's bits."""
    extracted = extract_bits(module, watermark)
    keyed = [str(int(b)) for b in watermark.bits]
    found = [str(int(b)) for b in extracted]
    matches = sum(f == k for f, k in zip(found, keyed, strict=True))
    return binomial_verification(
        scheme=SCHEME,
        matches=matches,
        trials=len(keyed),
        chance_rate=max(0.5, label_chance_rate(found, keyed)),
        threshold=threshold,
    )


def embed_weights(
    module: Any,
    watermark: WeightWatermark,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    max_epochs: int = 60,
    min_epochs: int = 5,
    strength: float = 1.0,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    random_state: int = 0,
) -> Any:
    """Return a copy of ``module`` fine-tuned on ``(x, y)`` (class indices) with the Uchida
    regulariser ``strength * BCE(sigmoid(X w), bits)`` added to the cross-entropy.

    Stops once at least ``min_epochs`` have run and every bit reads back right; raises
    :class:`UnsupportedModelError` if some bit is still wrong after ``max_epochs``.
    """
    import torch

    torch.manual_seed(random_state)
    rng = np.random.default_rng(random_state)
    model = copy.deepcopy(module)
    weight = _parameter(model, watermark.layer)
    projection = torch.from_numpy(watermark.projection.astype(np.float32))
    target = torch.from_numpy(watermark.bits.astype(np.float32))
    x_arr = np.asarray(x, dtype=np.float32)
    y_arr = np.asarray(y, dtype=np.int64)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    task_loss = torch.nn.CrossEntropyLoss()
    mark_loss = torch.nn.BCEWithLogitsLoss()
    for epoch in range(1, max_epochs + 1):
        set_mode(model, training=True)
        order = rng.permutation(x_arr.shape[0])
        for start in range(0, order.shape[0], batch_size):
            idx = order[start : start + batch_size]
            xb, yb = torch.from_numpy(x_arr[idx]), torch.from_numpy(y_arr[idx])
            optimizer.zero_grad()
            logits = projection @ _averaged(weight)
            loss = task_loss(model(xb), yb) + strength * mark_loss(logits, target)
            loss.backward()
            optimizer.step()
        set_mode(model, training=False)
        done = bit_error_rate(extract_bits(model, watermark), watermark.bits) == 0.0
        if epoch >= min_epochs and done:
            return model
    raise UnsupportedModelError(f"the bits did not embed within {max_epochs} epochs")
