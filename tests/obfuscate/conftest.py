"""Small models built with onnx.helper: a CNN, a batch-normalized network and odd layer forms."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelshield.models import InputSpec
from modelshield.models._base import METADATA_KEY, encode_metadata

Builder = Callable[..., bytes]


def _finish(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    in_shape: tuple[int, ...],
    out_width: int,
    *,
    out_name: str = "logits",
    spec: InputSpec | None = None,
    int_inits: dict[str, np.ndarray] | None = None,
) -> bytes:
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    tensors += [
        numpy_helper.from_array(v.astype(np.int64), k) for k, v in (int_inits or {}).items()
    ]
    graph = helper.make_graph(
        nodes,
        "test_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", out_width])],
        tensors,
        doc_string="a secret architecture description",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="secret-trainer",
        producer_version="9.9",
        doc_string="trained on the owner's data",
    )
    model.ir_version = 8
    for key, value in (
        ("author", "Jane Owner"),
        (METADATA_KEY, encode_metadata(spec or InputSpec(shape=in_shape), list(range(out_width)))),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def build_cnn(seed: int = 0, *, dynamic_reshape: bool = False) -> bytes:
    """Conv -> ReLU -> MaxPool -> Conv -> ReLU -> Flatten -> Gemm on 1x8x8 images.

    With ``dynamic_reshape`` the flattening is ``Reshape(x, Concat(Shape(x)[0:1], [96]))``, the
    way torch's exporter writes ``x.view(x.size(0), -1)``.
    """
    rng = np.random.default_rng(seed)
    inits = {
        "conv1.weight": rng.normal(0, 0.5, (4, 1, 3, 3)),
        "conv1.bias": rng.normal(0, 0.1, 4),
        "conv2.weight": rng.normal(0, 0.3, (6, 4, 3, 3)),
        "conv2.bias": rng.normal(0, 0.1, 6),
        "fc.weight": rng.normal(0, 0.2, (10, 6 * 4 * 4)),
        "fc.bias": rng.normal(0, 0.1, 10),
    }
    pads = {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    nodes = [
        helper.make_node("Conv", ["input", "conv1.weight", "conv1.bias"], ["c1"], **pads),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], **pads),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]
    if dynamic_reshape:
        nodes[5:6] = [
            helper.make_node("Shape", ["r2"], ["s"]),
            helper.make_node("Slice", ["s", "zero", "one"], ["batch"]),
            helper.make_node("Concat", ["batch", "features"], ["target"], axis=0),
            helper.make_node("Reshape", ["r2", "target"], ["f"]),
        ]
        extra = {"zero": np.asarray([0]), "one": np.asarray([1]), "features": np.asarray([96])}
        return _finish(nodes, inits, (1, 8, 8), 10, int_inits=extra)
    return _finish(nodes, inits, (1, 8, 8), 10)


def build_batchnorm(seed: int = 0) -> bytes:
    """Conv, BN, ReLU, GlobalAveragePool, Flatten, Gemm, BN, ReLU, Gemm, Softmax."""
    rng = np.random.default_rng(seed)

    def bn(prefix: str, n: int) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.scale": rng.uniform(0.5, 1.5, n),
            f"{prefix}.shift": rng.normal(0, 0.2, n),
            f"{prefix}.mean": rng.normal(0, 0.3, n),
            f"{prefix}.var": rng.uniform(0.5, 2.0, n),
        }

    inits = {
        "conv.weight": rng.normal(0, 0.4, (8, 3, 3, 3)),
        **bn("bn1", 8),
        "fc1.weight": rng.normal(0, 0.4, (8, 16)),
        **bn("bn2", 16),
        "fc2.weight": rng.normal(0, 0.3, (5, 16)),
        "fc2.bias": rng.normal(0, 0.1, 5),
    }

    def bn_inputs(x: str, p: str) -> list[str]:
        return [x, f"{p}.scale", f"{p}.shift", f"{p}.mean", f"{p}.var"]

    nodes = [
        helper.make_node("Conv", ["input", "conv.weight"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", bn_inputs("c", "bn1"), ["b1"], epsilon=1e-3),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc1.weight"], ["h"]),
        helper.make_node("BatchNormalization", bn_inputs("h", "bn2"), ["b2"]),
        helper.make_node("Relu", ["b2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "fc2.weight", "fc2.bias"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
    ]
    return _finish(nodes, inits, (3, 6, 6), 5, out_name="probabilities")


def build_mixed(seed: int = 0) -> bytes:
    """MatMul -> Gemm(alpha, beta) with no activation (merge) -> LeakyRelu -> Gemm -> Sigmoid
    -> MatMul + Add, with a Constant node and a foldable Mul of constants."""
    rng = np.random.default_rng(seed)
    inits = {
        "w0": rng.normal(0, 0.4, (12, 20)),
        "w1": rng.normal(0, 0.3, (20, 16)),
        "b1": rng.normal(0, 0.1, 16),
        "w2": rng.normal(0, 0.3, (16, 14)),
        "b2": rng.normal(0, 0.1, 14),
        "w3": rng.normal(0, 0.3, (14, 4)),
        "half": np.asarray([0.5]),
    }
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["b3_raw"],
            value=numpy_helper.from_array(rng.normal(0, 0.2, 4).astype(np.float32)),
        ),
        helper.make_node("Mul", ["b3_raw", "half"], ["b3"]),
        helper.make_node("MatMul", ["input", "w0"], ["m0"]),
        helper.make_node("Gemm", ["m0", "w1", "b1"], ["m1"], alpha=0.5, beta=2.0),
        helper.make_node("LeakyRelu", ["m1"], ["a1"], alpha=0.1),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["m2"]),
        helper.make_node("Sigmoid", ["m2"], ["a2"]),
        helper.make_node("MatMul", ["a2", "w3"], ["m3"]),
        helper.make_node("Add", ["m3", "b3"], ["logits"]),
    ]
    return _finish(nodes, inits, (12,), 4)


MODEL_BUILDERS: dict[str, Builder] = {
    "cnn": build_cnn,
    "batchnorm": build_batchnorm,
    "mixed": build_mixed,
}


@pytest.fixture(scope="session")
def models(demo_model: object) -> dict[str, bytes]:
    """Every test model by name, the demo MLP (skl2onnx) included."""
    built = {name: build() for name, build in MODEL_BUILDERS.items()}
    built["demo_mlp"] = demo_model.onnx_bytes  # type: ignore[attr-defined]
    built["cnn_dynamic_reshape"] = build_cnn(dynamic_reshape=True)
    return built


@pytest.fixture(scope="session")
def model_builders() -> dict[str, Builder]:
    """The builders themselves, to make unrelated models with another seed."""
    return dict(MODEL_BUILDERS)
