"""Level 1: exact graph clean-up (constants, no-op nodes) and stripping of names and metadata."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from modelshield.models._base import METADATA_KEY
from modelshield.obfuscate._graph import Graph, attribute, graph_inputs

_log = logging.getLogger(__name__)

_NONDETERMINISTIC = ("Random", "Bernoulli", "Multinomial")
_FOLD_GROWTH = 1024  # a folded constant may exceed its inputs by this many elements


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn ``Constant`` nodes holding a tensor into initializers; return how many."""
    g = Graph(model)
    doomed = []
    for node in g.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        tensor = _constant_value(node)
        if tensor is None or node.output[0] in g.outputs:
            continue
        tensor.name = node.output[0]
        g.graph.initializer.append(tensor)
        doomed.append(node)
    g.remove_nodes(doomed)
    return len(doomed)


_LIST_ATTRIBUTES = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node holds, in whichever attribute (not sparse or strings)."""
    value = attribute(node, "value")
    if isinstance(value, onnx.TensorProto):
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        return tensor
    for name, dtype in _LIST_ATTRIBUTES.items():
        raw = attribute(node, name)
        if raw is not None:
            return numpy_helper.from_array(np.asarray(raw, dtype=dtype))
    return None


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes none of whose outputs is read (ONNX operators have no side effects)."""
    removed = 0
    while True:
        g = Graph(model)
        dead = [n for n in g.graph.node if not any(o and g.n_uses(o) for o in n.output)]
        if not dead:
            g.drop_unused_initializers()
            return removed
        g.remove_nodes(dead)
        removed += len(dead)


def freeze_batch_reshapes(model: onnx.ModelProto, rows: np.ndarray[Any, Any]) -> int:
    """Replace shape tensors computed from the batch size (``x.view(x.size(0), -1)``) by constants.

    Exporters compute the target shape of such a ``Reshape`` from ``Shape(input)`` at run time.
    The shape tensors are read by running the model on batches of two sizes; when the first
    element is the batch size and the rest does not change, the shape becomes the constant
    ``[-1, *rest]``. The equivalence check that follows confirms it.
    """
    from modelshield.obfuscate._verify import run_extra_outputs

    g = Graph(model)
    targets = [
        n
        for n in g.graph.node
        if n.op_type == "Reshape" and len(n.input) > 1 and not g.is_const(n.input[1])
    ]
    if not targets or len(rows) < 3:
        return 0
    names = sorted({n.input[1] for n in targets})
    try:
        small = run_extra_outputs(model, rows[:2], names)
        large = run_extra_outputs(model, rows[:3], names)
    except Exception as exc:  # cannot read them: leave the graph as it is
        _log.debug("cannot evaluate reshape targets: %r", exc)
        return 0
    frozen = 0
    for name in names:
        a, b = small[name].reshape(-1), large[name].reshape(-1)
        if a.shape != b.shape or len(a) < 2 or a[0] != 2 or b[0] != 3:
            continue
        if not np.array_equal(a[1:], b[1:]) or np.any(a[1:] < 0):
            continue
        const = g.fresh("shape")
        g.set_array(const, np.concatenate([[-1], a[1:]]).astype(np.int64))
        for node in targets:
            if node.input[1] == name:
                node.input[1] = const
        frozen += 1
    return frozen  # the nodes that computed the shapes are left for remove_dead_nodes


def fold_constants(model: onnx.ModelProto) -> int:
    """Evaluate every node whose inputs are all constants and store its outputs as initializers.

    Uses ONNX's reference evaluator node by node; nodes it cannot run, random operators, outputs of
    the graph and results much larger than their inputs (``ConstantOfShape`` and the like) are left
    alone. The equivalence check that follows makes sure the folded values are exact enough.
    """
    from onnx.reference import ReferenceEvaluator

    g = Graph(model)
    folded = 0
    doomed = []
    for node in list(g.graph.node):
        inputs = [name for name in node.input if name]
        if not inputs or any(not g.is_const(name) for name in inputs):
            continue
        if node.op_type.startswith(_NONDETERMINISTIC) or any(o in g.outputs for o in node.output):
            continue
        values = {name: g.array(name) for name in inputs}
        try:
            results = ReferenceEvaluator(node).run(None, values)
        except Exception as exc:  # an operator the reference cannot run: keep the node
            _log.debug("cannot fold %s: %r", node.op_type, exc)
            continue
        budget = sum(v.size for v in values.values()) + _FOLD_GROWTH
        if sum(np.asarray(r).size for r in results) > budget:
            continue
        for name, value in zip(node.output, results, strict=True):
            g.set_array(name, np.asarray(value))
        doomed.append(node)
        folded += 1
    g.remove_nodes(doomed)
    Graph(model).drop_unused_initializers()
    return folded


def remove_noops(model: onnx.ModelProto) -> int:
    """Remove ``Identity``, inference ``Dropout`` and ``Cast`` to the type a tensor already has."""
    types = _known_types(model)
    removed = 0
    while True:
        g = Graph(model)
        victim = None
        for node in g.graph.node:
            if _is_noop(node, types, g):
                victim = node
                break
        if victim is None:
            return removed
        src, dst = victim.input[0], victim.output[0]
        g.remove_nodes([victim])
        if dst in g.outputs:  # _is_noop made sure that src is an intermediate tensor
            g.rename_tensor(src, dst)
        else:
            g.rename_tensor(dst, src)
        removed += 1


def _is_noop(node: onnx.NodeProto, types: dict[str, int], g: Graph) -> bool:
    if node.domain not in ("", "ai.onnx") or not node.input or not node.input[0]:
        return False
    dst = node.output[0]
    if dst in g.outputs:
        src = node.input[0]
        if src in g.outputs or src in g.inits or src not in g.producer:
            return False
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        used_mask = len(node.output) > 1 and bool(node.output[1]) and node.output[1] in g.consumers
        training = len(node.input) > 2 and bool(node.input[2])
        return not used_mask and not training
    if node.op_type == "Cast":
        return bool(types.get(node.input[0]) == attribute(node, "to"))
    return False


def _known_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # inference is a convenience here, never required
        _log.debug("shape inference failed: %r", exc)
        inferred = model
    types: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


def _reorder_topologically(model: onnx.ModelProto, rng: np.random.Generator | None = None) -> None:
    """Sort the nodes topologically (Kahn); with ``rng``, a random order among the valid ones."""
    graph = model.graph
    nodes = list(graph.node)
    available = {vi.name for vi in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in set(node.input):
            if name in available:
                continue
            if name not in producer:  # a dangling input: leave the order as it was
                return
            waiting[i] += 1
            readers.setdefault(producer[name], []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    order: list[int] = []
    while ready:
        pick = int(rng.integers(len(ready))) if rng is not None else 0
        ready[pick], ready[-1] = ready[-1], ready[pick]
        current = ready.pop()
        order.append(current)
        for reader in readers.get(current, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(order) != len(nodes):  # a cycle: leave the order as it was
        return
    copies = [onnx.NodeProto() for _ in order]
    for copy, index in zip(copies, order, strict=True):
        copy.CopyFrom(nodes[index])
    del graph.node[:]
    graph.node.extend(copies)


def strip_and_rename(
    model: onnx.ModelProto, rng: np.random.Generator, *, rename_io: bool = False
) -> dict[str, int]:
    """Remove names, documentation, producer information and metadata; randomize every name.

    Kept: the operator sets, the IR version, the ``modelshield`` metadata entry (the input
    specification and class labels that :func:`modelshield.load_model` needs) and, unless
    ``rename_io``, the names of the graph's inputs and outputs (callers feed and read them by name).
    Returns counts of what changed.
    """
    counts = {
        "metadata_entries_removed": sum(1 for p in model.metadata_props if p.key != METADATA_KEY),
        "value_info_removed": len(model.graph.value_info),
    }
    model.doc_string = ""
    model.producer_name = ""
    model.producer_version = ""
    model.domain = ""
    model.model_version = 0
    del model.training_info[:]
    kept = [p for p in model.metadata_props if p.key == METADATA_KEY]
    kept_copies = [onnx.StringStringEntryProto(key=p.key, value=p.value) for p in kept]
    del model.metadata_props[:]
    model.metadata_props.extend(kept_copies)
    graph = model.graph
    graph.doc_string = ""
    del graph.value_info[:]
    io_names = {vi.name for vi in graph_inputs(model)} | {o.name for o in graph.output}
    names: list[str] = []
    for tensor in graph.initializer:
        names.append(tensor.name)
    for node in graph.node:
        names.extend(n for n in (*node.input, *node.output) if n)
    if rename_io:
        names.extend(io_names)
    else:
        names = [n for n in names if n not in io_names]
    unique = list(dict.fromkeys(names))
    used: set[str] = set(io_names) if not rename_io else set()
    mapping: dict[str, str] = {}
    for old in unique:
        mapping[old] = _random_name(rng, used)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
        tensor.doc_string = ""
    for vi in [*graph.input, *graph.output]:
        vi.name = mapping.get(vi.name, vi.name)
        vi.doc_string = ""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                node.input[i] = mapping.get(name, name)
        for i, name in enumerate(node.output):
            if name:
                node.output[i] = mapping.get(name, name)
        node.name = _random_name(rng, used)
        node.doc_string = ""
        for attr in node.attribute:
            attr.doc_string = ""
    graph.name = _random_name(rng, used)
    order = rng.permutation(len(graph.initializer))
    shuffled = [_copy_tensor(graph.initializer[int(i)]) for i in order]
    del graph.initializer[:]
    graph.initializer.extend(shuffled)
    _reorder_topologically(model, rng)
    counts["names_randomized"] = len(mapping)
    return counts


def _copy_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    return copy


def _random_name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        name = "t" + "".join(f"{int(b):02x}" for b in rng.integers(0, 256, size=5))
        if name not in used:
            used.add(name)
            return name


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in values.items() if v)
