"""Loading a model into an ONNX ``ModelProto`` and small graph utilities shared by the transforms.

Everything here works on an in-memory ``onnx.ModelProto``: no file is read or written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from modelshield.errors import UnsupportedModelError

_log = logging.getLogger(__name__)

#: Operator domains the obfuscator understands (the standard ONNX and ONNX-ML operator sets).
SUPPORTED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

_FLOAT_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
}


def to_onnx_model(data: bytes, *, opset: int = 18) -> tuple[onnx.ModelProto, str]:
    """Parse ``data`` as ONNX, or export a torch.export archive to ONNX; return it and the format.

    scikit-learn (skops) files are refused with a pointer to skl2onnx: their estimators are not
    graphs of tensor operations until converted.
    """
    from modelshield.models import detect_format

    fmt = detect_format(data)
    if fmt == "onnx":
        return onnx.load_model_from_string(data), fmt
    if fmt == "torch":
        return _torch_to_onnx(data, opset=opset), fmt
    raise UnsupportedModelError(
        "obfuscation works on ONNX graphs: convert the scikit-learn model to ONNX first "
        "(skl2onnx), or pass a torch.export archive"
    )


def _torch_to_onnx(data: bytes, *, opset: int) -> onnx.ModelProto:
    """Export a torch.export archive with the dynamo ONNX exporter, keeping modelshield metadata."""
    from modelshield.models import load_torch
    from modelshield.models._base import METADATA_KEY, encode_metadata

    predictor = load_torch(data)  # validates the archive and reads the modelshield metadata
    try:
        import torch
    except ImportError:  # pragma: no cover - load_torch already needs torch
        raise UnsupportedModelError("torch models need the optional extra 'torch'") from None
    try:
        program = torch.export.load(io.BytesIO(data))
        torch_logger = logging.getLogger("torch.onnx")
        level = torch_logger.level
        torch_logger.setLevel(logging.ERROR)
        try:
            # The exporter prints progress and emits deprecation warnings from torch internals.
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                exported = torch.onnx.export(
                    program, dynamo=True, optimize=False, opset_version=opset, verbose=False
                )
        finally:
            torch_logger.setLevel(level)
        if exported is None:
            raise UnsupportedModelError("the torch model could not be exported to ONNX")
        model: onnx.ModelProto = exported.model_proto
    except UnsupportedModelError:
        raise
    except ImportError as exc:
        raise UnsupportedModelError(
            f"exporting a torch model to ONNX needs onnxscript (extra 'torch'): {exc}"
        ) from None
    except Exception as exc:
        _log.debug("torch.onnx.export failed: %r", exc)
        raise UnsupportedModelError(
            f"the torch model could not be exported to ONNX: {type(exc).__name__}"
        ) from None
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = encode_metadata(predictor.input_spec, predictor.classes)
    return model


def check_supported(model: onnx.ModelProto) -> None:
    """Refuse graphs the transforms cannot rewrite safely, naming the reason.

    Refused: control flow (operators with subgraphs), model-local functions, sparse initializers,
    weights in external files, operators outside the standard ONNX and ONNX-ML domains, and
    anything other than exactly one float32/float64 tensor input.
    """
    graph = model.graph
    if len(graph.node) == 0:
        raise UnsupportedModelError("the ONNX graph has no operators")
    if len(model.functions) > 0:
        raise UnsupportedModelError("ONNX models with local functions are not supported")
    if len(graph.sparse_initializer) > 0:
        raise UnsupportedModelError("ONNX models with sparse initializers are not supported")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise UnsupportedModelError("ONNX models with external weight files are not supported")
    for node in graph.node:
        if node.domain not in SUPPORTED_DOMAINS:
            raise UnsupportedModelError(
                f"operator {node.op_type!r} of domain {node.domain!r} is not supported"
            )
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise UnsupportedModelError(
                    f"control-flow operator {node.op_type!r} (with a subgraph) is not supported"
                )
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise UnsupportedModelError(f"the model must have exactly one input, has {len(inputs)}")
    elem = inputs[0].type.tensor_type.elem_type
    if elem not in _FLOAT_TYPES:
        raise UnsupportedModelError(
            f"the model input must be a float32 or float64 tensor, got type {elem}"
        )


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the graph (older files also list initializers as inputs)."""
    names = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in names]


def input_dtype(model: onnx.ModelProto) -> str:
    """``float32`` or ``float64``: the element type of the single model input."""
    return _FLOAT_TYPES[graph_inputs(model)[0].type.tensor_type.elem_type]


def input_dims(model: onnx.ModelProto) -> list[int | None]:
    """The input's dimensions, ``None`` where symbolic or unknown."""
    shape = graph_inputs(model)[0].type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


def serialize(model: onnx.ModelProto) -> bytes:
    data: bytes = model.SerializeToString()
    return data


def clone(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


class Graph:
    """Index of one graph: initializers by name, producers and consumers of every tensor.

    Build a new index after changing the graph's structure; :meth:`set_array` keeps it current.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in self.graph.output}
        self._counter = 0

    def array(self, name: str) -> np.ndarray[Any, Any]:
        """The initializer ``name`` as a numpy array (a copy)."""
        return np.array(numpy_helper.to_array(self.inits[name]))

    def is_const(self, name: str) -> bool:
        return name in self.inits

    def set_array(self, name: str, value: np.ndarray[Any, Any]) -> None:
        """Replace (or add) the initializer ``name``; keeps the element type of an existing one."""
        if name in self.inits:
            old = self.inits[name]
            dtype = numpy_helper.to_array(old).dtype
            new = numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name)
            old.CopyFrom(new)
        else:
            tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
            self.graph.initializer.append(tensor)
            self.inits[name] = self.graph.initializer[-1]

    def n_uses(self, name: str) -> int:
        return len(self.consumers.get(name, [])) + (1 if name in self.outputs else 0)

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name``; ``None`` when it has several readers or is an output."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]

    def fresh(self, hint: str) -> str:
        """A tensor or node name not used in the graph yet."""
        taken = set(self.inits) | set(self.producer) | set(self.consumers)
        taken |= {vi.name for vi in self.graph.input} | {n.name for n in self.graph.node}
        while True:
            self._counter += 1
            name = f"_ms_{hint}_{self._counter}"
            if name not in taken:
                return name

    # Nodes are matched by their outputs (unique in a valid graph), not by identity: rebuilding the
    # repeated field copies the messages, so earlier references no longer point into the graph.
    def remove_nodes(self, doomed: list[onnx.NodeProto]) -> None:
        gone = {tuple(d.output) for d in doomed}
        keep = [n for n in self.graph.node if tuple(n.output) not in gone]
        del self.graph.node[:]
        self.graph.node.extend(keep)

    def index_of(self, node: onnx.NodeProto) -> int:
        key = tuple(node.output)
        return next(i for i, n in enumerate(self.graph.node) if tuple(n.output) == key)

    def insert_after(self, anchor: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
        """Insert ``new_nodes`` right after ``anchor`` (keeps a topological order)."""
        nodes = list(self.graph.node)
        index = self.index_of(anchor)
        copies = [*nodes[: index + 1], *new_nodes, *nodes[index + 1 :]]
        del self.graph.node[:]
        self.graph.node.extend(copies)

    def rename_tensor(self, old: str, new: str) -> None:
        """Rename tensor ``old`` to ``new`` in every node and graph output (not initializers)."""
        for node in self.graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new
        for out in self.graph.output:
            if out.name == old:
                out.name = new

    def drop_unused_initializers(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        used |= self.outputs
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        graph_input_keep = [
            vi for vi in self.graph.input if vi.name in used or vi.name not in self.inits
        ]
        del self.graph.input[:]
        self.graph.input.extend(graph_input_keep)


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def set_attribute(node: onnx.NodeProto, name: str, value: Any) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))
