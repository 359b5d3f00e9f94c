"""Recognising linear layers (Gemm, MatMul + Add, Conv) and the hidden units that join two of them.

A *linear layer* is a ``MatMul`` (optionally followed by an ``Add`` of a bias), a ``Gemm`` or a
``Conv`` with ``group=1`` whose weights are initializers. A *link* is a pair of linear layers joined
by a chain of operators that act on each hidden unit (channel) separately: activations, pooling,
``Flatten``. Across a link, hidden units can be permuted, duplicated or added; across a link made
only of positively homogeneous operators (``f(s*x) = s*f(x)`` for ``s > 0``: ReLU, LeakyReLU,
max/average pooling), they can also be rescaled (Neyshabur et al. 2015, "Path-SGD").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from modelshield.obfuscate._graph import Graph, attribute

Array = np.ndarray[Any, Any]

#: Per-unit operators with f(s*x) = s*f(x) for s > 0 (shape operators included).
HOMOGENEOUS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Identity",
        "Flatten",
        "Reshape",
    }
)
#: Per-unit operators that commute with a permutation of units but not with rescaling.
ELEMENTWISE = frozenset(
    {"Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Softsign", "HardSigmoid", "Gelu", "Erf"}
)
_SHAPE_OPS = frozenset({"Flatten", "Reshape"})
_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})


@dataclass
class Linear:
    """One linear layer: its main node, weight and bias initializers and final output tensor."""

    kind: str  # "dense" or "conv"
    node: onnx.NodeProto
    weight: str
    transposed: bool  # weight stored as [in, out] (MatMul, Gemm with transB=0)
    bias: str | None
    add: onnx.NodeProto | None  # the Add that applies the bias of a MatMul
    output: str
    n_out: int
    n_in: int
    #: The computed tensor a ``Gemm`` adds as its ``C`` (the other share of a split layer).
    addend: str | None = None


@dataclass
class Link:
    """Two linear layers joined by per-unit operators; ``block`` columns of ``second`` per unit."""

    first: Linear
    second: Linear
    path: list[onnx.NodeProto] = field(default_factory=list)
    homogeneous: bool = True
    block: int = 1


def find_linears(g: Graph, *, with_addends: bool = False) -> list[Linear]:
    """Every linear layer of the graph, in node order.

    With ``with_addends``, also each ``Gemm`` that adds a computed tensor (``C`` not a constant):
    the main share of a split dense layer. Only for reading a model: the transforms leave those
    alone, as their bias slot is taken.
    """
    layers: list[Linear] = []
    for node in g.graph.node:
        layer = _as_linear(g, node)
        if layer is None and with_addends:
            layer = _as_summing_gemm(g, node)
        if layer is not None:
            layers.append(layer)
    return layers


def _as_summing_gemm(g: Graph, node: onnx.NodeProto) -> Linear | None:
    if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.input) < 3:
        return None
    data, weight, addend = node.input[0], node.input[1], node.input[2]
    if g.is_const(data) or not addend or g.is_const(addend) or not _own_const(g, weight):
        return None
    shape = tuple(g.inits[weight].dims)
    if len(shape) != 2 or attribute(node, "transA", 0):
        return None
    if attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
        return None
    trans_b = bool(attribute(node, "transB", 0))
    n_out, n_in = (shape[0], shape[1]) if trans_b else (shape[1], shape[0])
    return Linear(
        "dense", node, weight, not trans_b, None, None, node.output[0], n_out, n_in, addend
    )


def _own_const(g: Graph, name: str) -> bool:
    return g.is_const(name) and g.n_uses(name) == 1


def _as_linear(g: Graph, node: onnx.NodeProto) -> Linear | None:
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    data, weight = node.input[0], node.input[1]
    if g.is_const(data) or not _own_const(g, weight):
        return None
    shape = tuple(g.inits[weight].dims)
    if node.op_type == "MatMul" and len(shape) == 2:
        layer = Linear("dense", node, weight, True, None, None, node.output[0], shape[1], shape[0])
        add = g.single_consumer(node.output[0])
        if add is not None and add.op_type == "Add" and add.domain in ("", "ai.onnx"):
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            if _own_const(g, other) and _is_bias_shape(g, other, shape[1]):
                layer.bias, layer.add, layer.output = other, add, add.output[0]
        return layer
    if node.op_type == "Gemm" and len(shape) == 2:
        if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0:
            return None
        if attribute(node, "beta", 1.0) != 1.0:
            return None
        trans_b = bool(attribute(node, "transB", 0))
        n_out, n_in = (shape[0], shape[1]) if trans_b else (shape[1], shape[0])
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and not (_own_const(g, bias) and _is_bias_shape(g, bias, n_out)):
            return None
        return Linear("dense", node, weight, not trans_b, bias, None, node.output[0], n_out, n_in)
    if node.op_type == "Conv" and len(shape) >= 3 and attribute(node, "group", 1) == 1:
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and not _own_const(g, bias):
            return None
        return Linear("conv", node, weight, False, bias, None, node.output[0], shape[0], shape[1])
    return None


def _is_bias_shape(g: Graph, name: str, n_out: int) -> bool:
    dims = tuple(g.inits[name].dims)
    return dims in ((n_out,), (1, n_out))


def get_weight(g: Graph, layer: Linear) -> Array:
    """The weights as ``[out, in, *kernel]`` in float64."""
    w = g.array(layer.weight).astype(np.float64)
    return w.T if layer.transposed else w


def set_weight(g: Graph, layer: Linear, w: Array) -> None:
    """Store ``[out, in, *kernel]`` weights back in the layer's own layout and dtype."""
    g.set_array(layer.weight, w.T if layer.transposed else w)
    layer.n_out, layer.n_in = int(w.shape[0]), int(w.shape[1])


def get_bias(g: Graph, layer: Linear) -> Array:
    if layer.bias is None:
        return np.zeros(layer.n_out)
    return g.array(layer.bias).astype(np.float64).reshape(-1)


def set_bias(g: Graph, layer: Linear, b: Array) -> None:
    """Store the bias, adding one to the layer first when it has none and ``b`` is not zero."""
    if layer.bias is None:
        if not np.any(b):
            return
        ensure_bias(g, layer)
    assert layer.bias is not None
    two_d = len(g.inits[layer.bias].dims) == 2
    g.set_array(layer.bias, b.reshape(1, -1) if two_d else b)


def ensure_bias(g: Graph, layer: Linear) -> None:
    """Give ``layer`` a zero bias (a new initializer, and an ``Add`` node for a MatMul)."""
    if layer.bias is not None:
        return
    name = g.fresh("bias")
    dtype = g.array(layer.weight).dtype
    g.set_array(name, np.zeros(layer.n_out, dtype=dtype))
    node = layer.node
    if node.op_type in ("Gemm", "Conv"):
        while len(node.input) < 2:
            node.input.append("")
        if len(node.input) == 2:
            node.input.append(name)
        else:
            node.input[2] = name
    else:
        hidden = g.fresh("mm")
        out = node.output[0]
        node.output[0] = hidden
        add = onnx.helper.make_node("Add", [hidden, name], [out])
        g.insert_after(node, [add])
        layer.add = add
    layer.bias = name


def find_links(g: Graph, layers: list[Linear]) -> list[Link]:
    """Every pair of linear layers joined by per-unit operators (see the module docstring)."""
    by_node = {id(layer.node): layer for layer in layers}
    links = []
    for first in layers:
        link = _follow(g, first, by_node)
        if link is not None:
            links.append(link)
    return links


def _follow(g: Graph, first: Linear, by_node: dict[int, Linear]) -> Link | None:
    tensor = first.output
    path: list[onnx.NodeProto] = []
    while True:
        node = g.single_consumer(tensor)
        if node is None or node.input[0] != tensor or node.domain not in ("", "ai.onnx"):
            return None
        second = by_node.get(id(node))
        if second is not None:
            break
        if node.op_type not in HOMOGENEOUS | ELEMENTWISE or not _per_unit(g, node):
            return None
        path.append(node)
        tensor = node.output[0]
    ops = {n.op_type for n in path}
    shaped = bool(ops & _SHAPE_OPS)
    if second.kind == "conv":
        if first.kind != "conv" or shaped or second.n_in != first.n_out:
            return None
        block = 1
    elif first.kind == "dense":
        if ops & _POOLS or second.n_in != first.n_out:
            return None
        block = 1
    else:
        if not shaped or second.n_in % first.n_out:
            return None
        block = second.n_in // first.n_out
    return Link(first, second, path, ops <= HOMOGENEOUS, block)


def _per_unit(g: Graph, node: onnx.NodeProto) -> bool:
    """True when ``node`` keeps units (channels) apart and only its first output is used."""
    if any(out and g.n_uses(out) for out in node.output[1:]):
        return False
    if node.op_type == "Flatten":
        return int(attribute(node, "axis", 1)) == 1
    if node.op_type == "Reshape":
        if len(node.input) < 2 or not g.is_const(node.input[1]):
            return False
        shape = g.array(node.input[1]).reshape(-1).tolist()
        return len(shape) == 2 and shape[0] in (-1, 0) and (shape[1] == -1 or shape[1] > 0)
    return len([i for i in node.input if i]) == 1


def columns(w2: Array, units: int, block: int) -> Array:
    """View ``[out, in, *kernel]`` weights of the second layer as ``[out, units, k]``."""
    return w2.reshape(w2.shape[0], units, -1) if w2.ndim > 2 else w2.reshape(-1, units, block)


def uncolumns(cols: Array, like: Array) -> Array:
    """Inverse of :func:`columns` for a (possibly different) number of units."""
    if like.ndim > 2:
        return cols.reshape(cols.shape[0], cols.shape[1], *like.shape[2:])
    return cols.reshape(cols.shape[0], -1)


def refresh_reshapes(g: Graph, link: Link) -> None:
    """After widening, fix explicit feature counts in the ``Reshape`` nodes of the link's path."""
    for node in link.path:
        if node.op_type != "Reshape":
            continue
        shape = g.array(node.input[1]).reshape(-1)
        if shape[1] <= 0:
            continue
        shape[1] = link.first.n_out * link.block
        if g.n_uses(node.input[1]) > 1:
            name = g.fresh("shape")
            g.set_array(name, shape)
            node.input[1] = name
        else:
            g.set_array(node.input[1], shape)
