"""A deterministic cost model: multiply-accumulates per input row of the linear operators.

Used for the level-2 and level-3 budgets, because wall-clock timing on a shared machine is too
noisy to decide what to build (and would make the result depend on the machine's load, not on the
seed); the benchmark measures the real latency.

Two counts: :func:`macs_per_row`, the arithmetic as written, and :func:`padded_macs_per_row`, the
arithmetic ONNX Runtime's CPU kernels actually do. Those compute output units in blocks of
:data:`SIMD_BLOCK` (the column panels of the MLAS GEMM, the channel blocks of its NCHWc
convolutions with AVX-512), so a layer of 65 units costs as much as one of 80, and widening 8
channels to 16 costs nothing.
"""

from __future__ import annotations

import logging
import math

import onnx

from modelshield.obfuscate._graph import clone, graph_inputs

_log = logging.getLogger(__name__)

#: Output units (and convolution channels) are computed in blocks of this many.
SIMD_BLOCK = 16


def macs_per_row(model: onnx.ModelProto, row_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of ``MatMul``, ``Gemm`` and ``Conv`` for one input row.

    Shapes come from ONNX shape inference with a batch of one; an operator whose shapes cannot be
    inferred counts its weight size once (exact for a dense layer on a vector).
    """
    return _linear_macs(model, row_shape, block=1)


def padded_macs_per_row(
    model: onnx.ModelProto, row_shape: tuple[int, ...], *, block: int = SIMD_BLOCK
) -> int:
    """Like :func:`macs_per_row`, with unit and channel counts rounded up to ``block``.

    Rounded up: the output units of a dense layer, the output channels of a convolution and the
    input channels of a convolution that reads at least half a block of another operator's output
    channels (blocked layout). Not rounded: the input features of a dense layer, and fewer input
    channels, which a convolution reads unblocked (measured: a second convolution reading 4
    channels instead of 16 takes about half the time, reading 8 instead of 16 no less).
    """
    return _linear_macs(model, row_shape, block=block)


def _up(n: int, block: int) -> int:
    return -(-n // block) * block


def _linear_macs(model: onnx.ModelProto, row_shape: tuple[int, ...], *, block: int) -> int:
    fixed = clone(model)
    graph_input = graph_inputs(fixed)[0]
    dims = graph_input.type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, *row_shape), strict=False):
        dim.Clear()
        dim.dim_value = value
    del fixed.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed)
    except Exception as exc:
        _log.debug("shape inference failed: %r", exc)
        inferred = fixed
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims_known = [
            d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim
        ]
        shapes[vi.name] = dims_known
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        out = shapes.get(node.output[0], [])
        weight = shapes.get(node.input[1], [])
        known = bool(out) and all(d > 0 for d in out) and bool(weight)
        if not known:
            total += math.prod(weight) if weight else 0
            continue
        if node.op_type == "Conv":
            c_in = weight[1]
            if node.input[0] != graph_input.name and 2 * c_in >= block:
                c_in = _up(c_in, block)
            total += math.prod(out[2:]) * out[0] * _up(out[1], block) * c_in * math.prod(weight[2:])
            continue
        if node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            k = weight[1] if trans_b else weight[0]
        else:
            k = weight[0]
        total += math.prod(out[:-1]) * _up(out[-1], block) * k
    return total
