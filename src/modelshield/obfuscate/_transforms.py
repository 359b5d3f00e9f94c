"""Function-preserving weight and architecture transforms on ONNX graphs.

Each function changes ``model`` in place and returns a one-line description of what it did, or
``None`` when it did not apply. None of them is trusted: the pipeline checks the outputs after each
one (see ``_verify``). The arithmetic is done in float64 and stored in the model's own dtype.

The ideas: hidden units of a ReLU network can be permuted and positively rescaled without changing
the function (Neyshabur et al. 2015; "weight-space symmetries", Hecht-Nielsen 1990); units can be
duplicated or added in cancelling pairs (Net2Net, Chen et al. 2016); a ReLU layer can carry a vector
unchanged, since ``relu(z) - relu(-z) = z``; a matrix can be split into two random-looking additive
shares.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx

from modelshield.obfuscate._graph import Graph, attribute, set_attribute
from modelshield.obfuscate._layers import (
    Linear,
    columns,
    ensure_bias,
    find_linears,
    find_links,
    get_bias,
    get_weight,
    refresh_reshapes,
    set_bias,
    set_weight,
    uncolumns,
)

Array = np.ndarray[Any, Any]

_MAX_SCALE = 4.0  # positive rescaling factors are drawn log-uniformly from [1/4, 4]


def normalize_gemm(model: onnx.ModelProto) -> str | None:
    """Fold ``alpha`` and ``beta`` of ``Gemm`` nodes into their constant operands."""
    g = Graph(model)
    changed = 0
    for node in g.graph.node:
        if node.op_type != "Gemm" or attribute(node, "transA", 0):
            continue
        alpha = float(attribute(node, "alpha", 1.0))
        beta = float(attribute(node, "beta", 1.0))
        has_c = len(node.input) > 2 and bool(node.input[2])
        if alpha != 1.0 and g.is_const(node.input[1]) and g.n_uses(node.input[1]) == 1:
            g.set_array(node.input[1], g.array(node.input[1]).astype(np.float64) * alpha)
            set_attribute(node, "alpha", 1.0)
            changed += 1
        if beta != 1.0 and has_c and g.is_const(node.input[2]) and g.n_uses(node.input[2]) == 1:
            g.set_array(node.input[2], g.array(node.input[2]).astype(np.float64) * beta)
            set_attribute(node, "beta", 1.0)
            changed += 1
    return f"folded alpha/beta of {changed} Gemm operands" if changed else None


def fold_batchnorm(model: onnx.ModelProto) -> str | None:
    """Fold one inference ``BatchNormalization`` into the Conv or dense layer that feeds it."""
    g = Graph(model)
    for layer in find_linears(g):
        bn = g.single_consumer(layer.output)
        if bn is None or bn.op_type != "BatchNormalization" or bn.input[0] != layer.output:
            continue
        if attribute(bn, "training_mode", 0) or len([o for o in bn.output if o]) != 1:
            continue
        if not all(g.is_const(name) for name in bn.input[1:5]):
            continue
        scale, shift, mean, var = (g.array(n).astype(np.float64) for n in bn.input[1:5])
        eps = float(attribute(bn, "epsilon", 1e-5))
        factor = scale / np.sqrt(var + eps)
        w = get_weight(g, layer)
        b = get_bias(g, layer)
        set_weight(g, layer, w * factor.reshape(-1, *([1] * (w.ndim - 1))))
        ensure_bias(g, layer)
        set_bias(g, layer, (b - mean) * factor + shift)
        out = bn.output[0]
        g.remove_nodes([bn])
        g.rename_tensor(layer.output, out)
        g.drop_unused_initializers()
        return f"folded a BatchNormalization into a {layer.node.op_type}"
    return None


def merge_linear(model: onnx.ModelProto) -> str | None:
    """Merge two dense layers with nothing in between into one (``W2 @ W1``, ``W2 @ b1 + b2``)."""
    g = Graph(model)
    layers = find_linears(g)
    by_node = {id(layer.node): layer for layer in layers}
    for first in layers:
        nxt = g.single_consumer(first.output)
        second = by_node.get(id(nxt)) if nxt is not None else None
        if second is None or first.kind != "dense" or second.kind != "dense":
            continue
        if second.node.input[0] != first.output or second.n_in != first.n_out:
            continue
        w1, w2 = get_weight(g, first), get_weight(g, second)
        bias = w2 @ get_bias(g, first) + get_bias(g, second)
        doomed = [n for n in (second.node, second.add) if n is not None]
        set_weight(g, first, w2 @ w1)
        set_bias(g, first, bias)
        out = second.output
        g.remove_nodes(doomed)
        g.rename_tensor(first.output, out)
        g.drop_unused_initializers()
        return f"merged two consecutive linear layers into one of width {w2.shape[0]}"
    return None


def _link(model: onnx.ModelProto, index: int) -> tuple[Graph, Any]:
    g = Graph(model)
    links = find_links(g, find_linears(g))
    return g, (links[index] if index < len(links) else None)


def count_links(model: onnx.ModelProto) -> int:
    g = Graph(model)
    return len(find_links(g, find_linears(g)))


def permute_units(model: onnx.ModelProto, index: int, rng: np.random.Generator) -> str | None:
    """Shuffle the hidden units (channels) between the two layers of link ``index``."""
    g, link = _link(model, index)
    if link is None:
        return None
    first, second = link.first, link.second
    order = rng.permutation(first.n_out)
    while first.n_out > 1 and np.array_equal(order, np.arange(first.n_out)):
        order = rng.permutation(first.n_out)  # the identity would hide nothing
    w1, b1, w2 = get_weight(g, first), get_bias(g, first), get_weight(g, second)
    cols = columns(w2, first.n_out, link.block)
    set_weight(g, first, w1[order])
    set_bias(g, first, b1[order])
    set_weight(g, second, uncolumns(cols[:, order], w2))
    return f"permuted {first.n_out} hidden units of link {index}"


def rescale_units(model: onnx.ModelProto, index: int, rng: np.random.Generator) -> str | None:
    """Multiply each unit's incoming weights by ``s > 0`` and divide its outgoing weights by ``s``.

    Only across positively homogeneous operators (ReLU family, pooling).
    """
    g, link = _link(model, index)
    if link is None or not link.homogeneous:
        return None
    first, second = link.first, link.second
    s = np.exp(rng.uniform(-math.log(_MAX_SCALE), math.log(_MAX_SCALE), size=first.n_out))
    w1, b1, w2 = get_weight(g, first), get_bias(g, first), get_weight(g, second)
    cols = columns(w2, first.n_out, link.block)
    set_weight(g, first, w1 * s.reshape(-1, *([1] * (w1.ndim - 1))))
    set_bias(g, first, b1 * s)
    set_weight(g, second, uncolumns(cols / s.reshape(1, -1, 1), w2))
    return f"rescaled {first.n_out} hidden units of link {index} by factors in [1/4, 4]"


def link_widths(model: onnx.ModelProto) -> list[int]:
    """The number of hidden units (channels) of each link, in link order."""
    g = Graph(model)
    return [link.first.n_out for link in find_links(g, find_linears(g))]


def add_cancelling_units(
    model: onnx.ModelProto,
    index: int,
    rng: np.random.Generator,
    fraction: float = 0.0,
    *,
    units: int | None = None,
) -> str | None:
    """Widen link ``index`` by ``units`` units (or ``fraction`` of its width) that change nothing.

    Half of the new units split an existing unit ``j`` into two (``t * h_j`` in a copy, outgoing
    weights ``a * c_j`` and ``(1 - a) / t * c_j``); the rest come in random pairs ``(h, t * h)``
    whose outgoing weights ``v`` and ``-v / t`` cancel. ``t = 1`` across non-homogeneous
    activations.
    """
    g, link = _link(model, index)
    if link is None:
        return None
    first, second = link.first, link.second
    n = first.n_out
    extra = max(1, round(n * fraction) if units is None else units)
    n_pairs = extra // 4
    n_split = extra - 2 * n_pairs
    w1, b1, w2 = get_weight(g, first), get_bias(g, first), get_weight(g, second)
    cols = columns(w2, n, link.block)
    w_std = float(np.std(w1)) or 1.0
    b_std = float(np.std(b1)) or w_std
    c_std = float(np.std(cols)) or 1.0

    def factor(size: int) -> Array:
        if not link.homogeneous:
            return np.ones(size)
        return np.exp(rng.uniform(-math.log(2.0), math.log(2.0), size=size))

    rows, biases, new_cols = [], [], []
    split_units = rng.integers(0, n, size=n_split)
    t = factor(n_split)
    a = rng.uniform(-0.5, 1.5, size=n_split)
    for j, tj, aj in zip(split_units, t, a, strict=True):
        rows.append(w1[j] * tj)
        biases.append(b1[j] * tj)
        new_cols.append(cols[:, j] * (1.0 - aj) / tj)
        cols[:, j] = cols[:, j] * aj
    t = factor(n_pairs)
    for tj in t:
        r = rng.normal(0.0, w_std, size=w1.shape[1:])
        c = rng.normal(0.0, b_std)
        v = rng.normal(0.0, c_std, size=cols.shape[::2])
        rows += [r, r * tj]
        biases += [c, c * tj]
        new_cols += [v, -v / tj]
    set_weight(g, first, np.concatenate([w1, np.stack(rows)], axis=0))
    set_bias(g, first, np.concatenate([b1, np.asarray(biases)]))
    wide = np.concatenate([cols, np.stack(new_cols, axis=1)], axis=1)
    set_weight(g, second, uncolumns(wide, w2))
    refresh_reshapes(g, link)
    return f"added {extra} cancelling units to link {index} ({n} -> {n + extra})"


def split_layer(
    model: onnx.ModelProto,
    layer_index: int,
    rng: np.random.Generator,
    share_scale: float,
    rank_fraction: float | None = None,
) -> str | None:
    """Replace ``x @ W`` by ``x @ (W - A) + x @ A`` with a random share ``A``.

    ``A`` has ``share_scale`` times the spread of ``W``, so that ``W - A`` does not resemble ``W``.
    With ``rank_fraction``, ``A = V U`` is a random matrix of that fraction of the full rank,
    computed as two thin layers ``(x @ U) @ V`` (cheap); without, ``A`` is a full random matrix
    in a twin of the layer.
    Works on MatMul, Gemm and Conv; the bias stays with ``W - A``.
    """
    g = Graph(model)
    layers = find_linears(g)
    if layer_index >= len(layers):
        return None
    layer = layers[layer_index]
    w = get_weight(g, layer)  # [out, in, *kernel]
    n_out, n_in = w.shape[0], int(np.prod(w.shape[1:]))
    dtype = g.array(layer.weight).dtype
    std = float(np.std(w)) or 1.0
    source = layer.node.input[0]
    out = layer.node.output[0]
    left, right = g.fresh("part"), g.fresh("part")
    nodes: list[onnx.NodeProto] = []
    rank = n_in if rank_fraction is None else math.ceil(rank_fraction * min(n_out, n_in))
    if rank >= min(n_out, n_in):
        share: Array = np.asarray(rng.normal(0.0, share_scale * std, size=w.shape))
        twin = onnx.NodeProto()
        twin.CopyFrom(layer.node)
        twin.name = ""
        del twin.input[2:]
        share_name = g.fresh("share")
        g.set_array(share_name, (share.T if layer.transposed else share).astype(dtype))
        twin.input[1] = share_name
        twin.output[0] = right
        nodes.append(twin)
        what = "two additive shares"
    else:
        u = rng.normal(size=(rank, n_in))
        v = rng.normal(size=(n_out, rank))
        factor = share_scale * std / (float(np.std(v @ u)) or 1.0)
        u, v = u * math.sqrt(factor), v * math.sqrt(factor)
        share = (v @ u).reshape(w.shape)
        u_name, v_name, hidden = g.fresh("share_u"), g.fresh("share_v"), g.fresh("part")
        if layer.kind == "conv":
            g.set_array(u_name, u.reshape(rank, *w.shape[1:]).astype(dtype))
            g.set_array(v_name, v.reshape(n_out, rank, *([1] * (w.ndim - 2))).astype(dtype))
            first = onnx.NodeProto()
            first.CopyFrom(layer.node)
            first.name = ""
            del first.input[2:]
            first.input[1] = u_name
            first.output[0] = hidden
            nodes += [first, onnx.helper.make_node("Conv", [hidden, v_name], [right])]
        else:
            g.set_array(u_name, u.T.astype(dtype))
            g.set_array(v_name, v.T.astype(dtype))
            nodes += [
                onnx.helper.make_node("MatMul", [source, u_name], [hidden]),
                onnx.helper.make_node("MatMul", [hidden, v_name], [right]),
            ]
        what = f"a share and a rank-{rank} share"
    if layer.kind == "dense":
        return _split_dense(g, layer, w - share, nodes, right, what)
    set_weight(g, layer, w - share)
    layer.node.output[0] = left
    nodes.append(onnx.helper.make_node("Add", [left, right], [out]))
    g.insert_after(layer.node, nodes)
    return f"split the weights of a {layer.node.op_type} into {what}"


def _split_dense(
    g: Graph, layer: Linear, rest: Array, branch: list[onnx.NodeProto], branch_out: str, what: str
) -> str:
    """Lay a split dense layer out as ``Gemm(x, W - A, C = share branch + bias)``.

    The share branch comes first, with the bias (a MatMul and an Add of a constant, which ONNX
    Runtime fuses into one Gemm); the main share is one Gemm that adds the branch as its ``C``,
    which ONNX Runtime fuses with a following ReLU. Summing the two shares with an ``Add`` instead
    costs two more operators per call (ONNX Runtime fuses into a Gemm only the ``Add`` of a
    constant bias), 3-5% of the latency of a small MLP.
    """
    dtype = g.array(layer.weight).dtype
    source = layer.node.input[0]
    main_w = g.fresh("w")
    g.set_array(main_w, rest.T.astype(dtype))
    nodes = list(branch)
    right = branch_out
    if layer.bias is not None:
        bias_name, right = g.fresh("b"), g.fresh("part")
        g.set_array(bias_name, get_bias(g, layer).astype(dtype))
        nodes.append(onnx.helper.make_node("Add", [branch_out, bias_name], [right]))
    if _is_matrix(g, source):
        nodes.append(onnx.helper.make_node("Gemm", [source, main_w, right], [layer.output]))
    else:  # Gemm takes matrices only; a MatMul also takes batches of them
        left = g.fresh("part")
        nodes.append(onnx.helper.make_node("MatMul", [source, main_w], [left]))
        nodes.append(onnx.helper.make_node("Add", [left, right], [layer.output]))
    index = g.index_of(layer.node)
    g.remove_nodes([n for n in (layer.node, layer.add) if n is not None])
    existing = list(g.graph.node)
    del g.graph.node[:]
    g.graph.node.extend([*existing[:index], *nodes, *existing[index:]])
    g.drop_unused_initializers()
    return f"split the weights of a {layer.node.op_type} into {what}"


def _is_matrix(g: Graph, name: str) -> bool:
    """True when shape inference says that tensor ``name`` has two dimensions."""
    try:
        inferred = onnx.shape_inference.infer_shapes(g.model)
    except Exception:  # unknown shapes: the caller keeps the layout that works for any rank
        return False
    graph = inferred.graph
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim) == 2
    return False


def _orthogonal(n: int, rng: np.random.Generator) -> Array:
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    result: Array = q * np.sign(np.diag(r))
    return result


def pad_identity_layer(
    model: onnx.ModelProto, layer_index: int, rng: np.random.Generator
) -> str | None:
    """Insert a ReLU layer that changes nothing in front of linear layer ``layer_index``.

    For the input ``h`` of width ``n`` and a random orthogonal ``Q``: ``u = relu([Q; -Q] h + [c;
    -c])`` then ``h = Q^T (u[:n] - u[n:] - c)``, which the following layer absorbs into its weights
    and bias. Before a convolution the new layer is a 1x1 convolution and ``c = 0`` (zero padding
    must stay zero).
    """
    g = Graph(model)
    layers = find_linears(g)
    if layer_index >= len(layers):
        return None
    second = layers[layer_index]
    n = second.n_in
    w2 = get_weight(g, second)
    dtype = g.array(second.weight).dtype
    q = _orthogonal(n, rng)
    conv = second.kind == "conv"
    c = np.zeros(n) if conv else rng.normal(0.0, float(np.std(w2)) or 1.0, size=n)
    mix = np.concatenate([q, -q], axis=0)  # [2n, n]
    mixed = np.einsum("oi...,ji->oj...", w2, q)  # W2 Q^T over the input axis
    b2 = get_bias(g, second) - mixed.reshape(mixed.shape[0], n, -1).sum(axis=2) @ c
    weight_name, bias_name, pre, post = (g.fresh(h) for h in ("pad_w", "pad_b", "pad", "pad"))
    g.set_array(bias_name, np.concatenate([c, -c]).astype(dtype))
    source = second.node.input[0]
    if conv:
        g.set_array(weight_name, mix.reshape(2 * n, n, *([1] * (w2.ndim - 2))).astype(dtype))
        nodes = [onnx.helper.make_node("Conv", [source, weight_name, bias_name], [pre])]
    else:
        g.set_array(weight_name, mix.T.astype(dtype))
        matmul_out = g.fresh("pad")
        nodes = [
            onnx.helper.make_node("MatMul", [source, weight_name], [matmul_out]),
            onnx.helper.make_node("Add", [matmul_out, bias_name], [pre]),
        ]
    nodes.append(onnx.helper.make_node("Relu", [pre], [post]))
    second.node.input[0] = post
    index = g.index_of(second.node)
    existing = list(g.graph.node)
    del g.graph.node[:]
    g.graph.node.extend([*existing[:index], *nodes, *existing[index:]])
    g = Graph(model)
    second = next(layer for layer in find_linears(g) if layer.node.input[0] == post)
    set_weight(g, second, np.concatenate([mixed, -mixed], axis=1))
    set_bias(g, second, b2)
    return f"inserted an identity-equivalent ReLU layer of width {2 * n}"


def linear_nodes(model: onnx.ModelProto) -> list[Linear]:
    return find_linears(Graph(model))
