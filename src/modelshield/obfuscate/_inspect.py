"""What a reverse engineer reads from a model file, and how well its weights match an original."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from modelshield.obfuscate._graph import Graph, to_onnx_model
from modelshield.obfuscate._layers import find_linears, get_weight

Array = np.ndarray[Any, Any]

#: A weight-matching check "recognises" the original at or above this cosine similarity.
RECOGNITION_THRESHOLD = 0.95


@dataclass(frozen=True)
class ModelView:
    """The architecture as read from the file, without running it."""

    n_nodes: int
    ops: tuple[tuple[str, int], ...]
    n_linear_layers: int
    widths: tuple[int, ...]
    n_parameters: int
    producer: str
    metadata_keys: tuple[str, ...]
    named_tensors: tuple[str, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_nodes": self.n_nodes,
            "ops": dict(self.ops),
            "n_linear_layers": self.n_linear_layers,
            "widths": list(self.widths),
            "n_parameters": self.n_parameters,
            "producer": self.producer,
            "metadata_keys": list(self.metadata_keys),
        }


@dataclass(frozen=True)
class WeightMatch:
    """How closely the weights of one model match another's (absolute cosine similarities).

    ``matrix_cosine``: the best match between two weight tensors of the same shape, flattened.
    ``row_cosine``: for the best-matching pair of layers with the same input width, the mean over
    the original's units of the best match among the other model's units; invariant to permuting
    and positively rescaling units, which is what a matching attack normalises away.
    ``max_cosine`` is the larger of the two and ``recognised`` says whether it reaches
    :data:`RECOGNITION_THRESHOLD`. ``comparable_pairs`` counts the pairs of layers with the same
    input width; when it is 0 no row could be compared at all (the cosines are then 0), which is
    a statement about this check, not proof that no analyst could match the weights.
    """

    matrix_cosine: float
    row_cosine: float
    comparable_pairs: int = 0

    @property
    def max_cosine(self) -> float:
        return max(self.matrix_cosine, self.row_cosine)

    @property
    def recognised(self) -> bool:
        return self.max_cosine >= RECOGNITION_THRESHOLD


def _model(data: bytes | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(data, onnx.ModelProto):
        return data
    return to_onnx_model(data)[0]


def inspect_model(model: bytes | onnx.ModelProto) -> ModelView:
    """Count what the file shows: operators, linear layers and their widths, parameters, names."""
    proto = _model(model)
    g = Graph(proto)
    layers = find_linears(g, with_addends=True)
    n_params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    names = [t.name for t in proto.graph.initializer]
    return ModelView(
        n_nodes=len(proto.graph.node),
        ops=tuple(sorted(Counter(n.op_type for n in proto.graph.node).items())),
        n_linear_layers=len(layers),
        widths=tuple(layer.n_out for layer in layers),
        n_parameters=n_params,
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        metadata_keys=tuple(sorted(p.key for p in proto.metadata_props)),
        named_tensors=tuple(names),
    )


def weight_matrices(model: bytes | onnx.ModelProto, *, undo_splits: bool = False) -> list[Array]:
    """Each linear layer's weights as a ``[units, inputs]`` matrix (kernels flattened).

    With ``undo_splits``, branches that read the same tensor and are summed by one ``Add``, or
    by a ``Gemm`` that adds the other branch as its ``C`` (the additive shares of a split layer: a
    twin layer, or two thin layers in a row), are summed back first, as an analyst would.
    """
    proto = _model(model)
    g = Graph(proto)
    layers = find_linears(g, with_addends=True)
    by_output = {layer.node.output[0]: layer for layer in layers}
    by_output |= {layer.output: layer for layer in layers}
    merged: set[str] = set()
    matrices: list[Array] = []

    def branch(name: str) -> tuple[str, Array, list[str]] | None:
        """The input tensor, ``[out, in, *kernel]`` weights and nodes of one summed branch."""
        layer = by_output.get(name)
        if layer is None:
            return None
        w = get_weight(g, layer)
        inner = by_output.get(layer.node.input[0])
        own = layer.node.output[0]
        if inner is None or g.n_uses(inner.node.output[0]) != 1:
            return layer.node.input[0], w, [own]
        wu = get_weight(g, inner)
        if w.shape[1] != wu.shape[0] or int(np.prod(w.shape[2:])) != 1:
            return layer.node.input[0], w, [own]
        product = (w.reshape(w.shape[0], -1) @ wu.reshape(wu.shape[0], -1)).reshape(
            w.shape[0], *wu.shape[1:]
        )
        return inner.node.input[0], product, [own, inner.node.output[0]]

    if undo_splits:
        pairs = [
            (branch(node.input[0]), branch(node.input[1]))
            for node in g.graph.node
            if node.op_type == "Add" and len(node.input) == 2
        ]
        pairs += [
            ((layer.node.input[0], get_weight(g, layer), [layer.node.output[0]]), branch(addend))
            for layer in layers
            if (addend := layer.addend) is not None
        ]
        for a, b in pairs:
            if a is None or b is None or a[0] != b[0] or a[1].shape != b[1].shape:
                continue
            total = a[1] + b[1]
            matrices.append(total.reshape(total.shape[0], -1))
            merged |= {*a[2], *b[2]}
    for layer in layers:
        if layer.node.output[0] not in merged:
            w = get_weight(g, layer)
            matrices.append(w.reshape(w.shape[0], -1))
    return matrices


def _unit_rows(m: Array) -> Array:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    result: Array = m / np.where(norms > 0, norms, 1.0)
    return result


def weight_similarity(
    original: bytes | onnx.ModelProto,
    candidate: bytes | onnx.ModelProto,
    *,
    undo_splits: bool = False,
) -> WeightMatch:
    """Compare every weight matrix of ``candidate`` with every one of ``original``."""
    ours = weight_matrices(original)
    theirs = weight_matrices(candidate, undo_splits=undo_splits)
    matrix_best = 0.0
    row_best = 0.0
    pairs = 0
    for o in ours:
        o_flat = o.reshape(-1)
        o_rows = _unit_rows(o)
        for c in theirs:
            if c.shape == o.shape:
                denom = float(np.linalg.norm(o_flat) * np.linalg.norm(c)) or 1.0
                matrix_best = max(matrix_best, abs(float(o_flat @ c.reshape(-1))) / denom)
            if c.shape[1] == o.shape[1]:
                pairs += 1
                sims = np.abs(o_rows @ _unit_rows(c).T)
                row_best = max(row_best, float(sims.max(axis=1).mean()))
    return WeightMatch(
        matrix_cosine=min(matrix_best, 1.0),
        row_cosine=min(row_best, 1.0),
        comparable_pairs=pairs,
    )
