"""Weight watermark (Uchida et al. 2017): embedding, extraction, and what transforms do to it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelshield.demo import DemoData
from modelshield.errors import InvalidInputError, KeyMissingError, UnsupportedModelError
from modelshield.watermark import (
    WeightWatermark,
    bit_error_rate,
    embed_weights,
    extract_bits,
    verify_weights,
)

from .conftest import KEY, OTHER_KEY

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def torch_net(demo_data: DemoData) -> Any:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(demo_data.x_train), torch.from_numpy(demo_data.y_train)
    for _ in range(15):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def watermark() -> WeightWatermark:
    return WeightWatermark.from_key(KEY, layer="0.weight", n_inputs=64)


@pytest.fixture(scope="module")
def marked(torch_net: Any, watermark: WeightWatermark, demo_data: DemoData) -> Any:
    return embed_weights(torch_net, watermark, demo_data.x_train, demo_data.y_train)


def accuracy(net: Any, data: DemoData) -> float:
    import torch

    with torch.no_grad():
        pred = net(torch.from_numpy(data.x_test)).argmax(1).numpy()
    return float(np.mean(pred == data.y_test))


def test_key_derivation(watermark: WeightWatermark) -> None:
    again = WeightWatermark.from_key(KEY, layer="0.weight", n_inputs=64)
    np.testing.assert_array_equal(again.bits, watermark.bits)
    other = WeightWatermark.from_key(OTHER_KEY, layer="0.weight", n_inputs=64)
    assert bit_error_rate(other.bits, watermark.bits) > 0.1
    assert watermark.bits.shape == (32,)
    assert "projection" not in repr(watermark)
    with pytest.raises(KeyMissingError):
        WeightWatermark.from_key(b"x", layer="0.weight", n_inputs=64)
    with pytest.raises(InvalidInputError):
        WeightWatermark.from_key(KEY, layer="0.weight", n_inputs=0)


def test_embedded_bits_verify_without_hurting_accuracy(
    torch_net: Any, marked: Any, watermark: WeightWatermark, demo_data: DemoData
) -> None:
    assert not verify_weights(torch_net, watermark).verified
    result = verify_weights(marked, watermark)
    assert result.verified
    assert result.matches == 32
    assert bit_error_rate(extract_bits(marked, watermark), watermark.bits) == 0.0
    assert accuracy(marked, demo_data) >= accuracy(torch_net, demo_data) - 0.02
    other = WeightWatermark.from_key(OTHER_KEY, layer="0.weight", n_inputs=64)
    assert not verify_weights(marked, other).verified


def test_wrong_layer_is_refused(marked: Any) -> None:
    with pytest.raises(UnsupportedModelError):
        verify_weights(marked, WeightWatermark.from_key(KEY, layer="nope", n_inputs=64))
    with pytest.raises(UnsupportedModelError):
        verify_weights(marked, WeightWatermark.from_key(KEY, layer="2.weight", n_inputs=10))
    with pytest.raises(InvalidInputError):
        bit_error_rate([0, 1], [0])


def _permuted(net: Any, seed: int) -> Any:
    import copy

    import torch

    out = copy.deepcopy(net)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(64))
    with torch.no_grad():
        out[0].weight.copy_(net[0].weight[perm])
        out[0].bias.copy_(net[0].bias[perm])
        out[2].weight.copy_(net[2].weight[:, perm])
    return out


def _rescaled(net: Any, seed: int) -> Any:
    import copy

    import torch

    out = copy.deepcopy(net)
    scale = torch.from_numpy(np.exp(np.random.default_rng(seed).uniform(-2, 2, 64))).float()
    with torch.no_grad():
        out[0].weight.mul_(scale[:, None])
        out[0].bias.mul_(scale)
        out[2].weight.div_(scale[None, :])
    return out


def test_function_preserving_transforms(
    marked: Any, watermark: WeightWatermark, demo_data: DemoData
) -> None:
    import torch

    x = torch.from_numpy(demo_data.x_test)
    for transform in (_permuted, _rescaled):
        changed = transform(marked, 0)
        with torch.no_grad():
            torch.testing.assert_close(changed(x), marked(x), atol=1e-4, rtol=1e-4)
    # averaging over output units makes the mark exactly invariant to permuting those units ...
    assert bit_error_rate(extract_bits(_permuted(marked, 0), watermark), watermark.bits) == 0.0
    assert verify_weights(_permuted(marked, 0), watermark).verified
    # ... while per-unit positive rescaling (ReLU is positively homogeneous) moves the average:
    # some bits flip, though most keep their sign because the regulariser pushed every unit the
    # same way (measured in benchmarks/watermark_eval.py)
    errors = [
        bit_error_rate(extract_bits(_rescaled(marked, s), watermark), watermark.bits)
        for s in range(5)
    ]
    assert 0.0 < float(np.mean(errors)) < 0.5
