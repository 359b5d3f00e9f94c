"""The cost model: multiply-accumulates as written, and as ONNX Runtime's kernels compute them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelshield.obfuscate._cost import SIMD_BLOCK, macs_per_row, padded_macs_per_row


def _model(
    nodes: list[onnx.NodeProto], weights: dict[str, tuple[int, ...]], in_shape: list[int]
) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.ones(s, dtype=np.float32), k) for k, s in weights.items()]
    graph = helper.make_graph(
        nodes,
        "cost",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mlp(hidden: int) -> onnx.ModelProto:
    """12 inputs -> ``hidden`` ReLU units -> 10 outputs."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
    ]
    return _model(nodes, {"w1": (12, hidden), "w2": (10, hidden)}, [12])


def _cnn(channels: int) -> onnx.ModelProto:
    """1x8x8 -> 3x3 conv to ``channels`` -> ReLU -> 3x3 conv to 16 channels (same padding)."""
    pads = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], **pads),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], **pads),
    ]
    return _model(nodes, {"w1": (channels, 1, 3, 3), "w2": (16, channels, 3, 3)}, [1, 8, 8])


def test_dense_units_are_counted_in_whole_blocks() -> None:
    assert SIMD_BLOCK == 16
    assert macs_per_row(_mlp(65), (12,)) == 12 * 65 + 65 * 10
    # 65 units cost a fifth block; the 10 outputs fill one block; input features are not padded
    assert padded_macs_per_row(_mlp(65), (12,)) == 12 * 80 + 65 * 16
    assert padded_macs_per_row(_mlp(64), (12,)) == 12 * 64 + 64 * 16
    assert padded_macs_per_row(_mlp(80), (12,)) == 12 * 80 + 80 * 16
    assert padded_macs_per_row(_mlp(65), (12,), block=1) == macs_per_row(_mlp(65), (12,))


def test_conv_channels_are_counted_in_whole_blocks() -> None:
    pixels = 8 * 8
    assert macs_per_row(_cnn(8), (1, 8, 8)) == pixels * (8 * 9 + 16 * 8 * 9)
    # the first convolution reads the raw input: its single input channel is not padded
    padded = pixels * (16 * 1 * 9 + 16 * 16 * 9)
    assert padded_macs_per_row(_cnn(8), (1, 8, 8)) == padded
    assert padded_macs_per_row(_cnn(16), (1, 8, 8)) == padded  # widening 8 -> 16 is free
    assert padded_macs_per_row(_cnn(17), (1, 8, 8)) == pixels * (32 * 9 + 16 * 32 * 9)
    # fewer than half a block of input channels are read unblocked: not padded
    assert padded_macs_per_row(_cnn(4), (1, 8, 8)) == pixels * (16 * 1 * 9 + 16 * 4 * 9)
    assert padded_macs_per_row(_cnn(7), (1, 8, 8)) == pixels * (16 * 1 * 9 + 16 * 7 * 9)
