"""A deterministic cost model: multiply-accumulates per input row of the linear operators.

Used for the level-3 budget, because wall-clock timing on a shared machine is too noisy to decide
what to build; the benchmark measures the real latency.
"""

from __future__ import annotations

import logging
import math

import onnx

from modelshield.obfuscate._graph import clone, graph_inputs

_log = logging.getLogger(__name__)


def macs_per_row(model: onnx.ModelProto, row_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of ``MatMul``, ``Gemm`` and ``Conv`` for one input row.

    Shapes come from ONNX shape inference with a batch of one; an operator whose shapes cannot be
    inferred counts its weight size once (exact for a dense layer on a vector).
    """
    fixed = clone(model)
    dims = graph_inputs(fixed)[0].type.tensor_type.shape.dim
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
            total += math.prod(out) * math.prod(weight[1:])
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            total += math.prod(out) * (weight[1] if trans_b else weight[0])
        else:
            total += math.prod(out) * weight[0]
    return total
