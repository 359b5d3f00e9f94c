"""Each transform on its own, checked with ONNX Runtime directly (not the library's verifier)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelshield.obfuscate import _level1, _transforms
from modelshield.obfuscate._api import _clean
from modelshield.obfuscate._inspect import weight_matrices

MODELS = ("demo_mlp", "cnn", "batchnorm", "mixed")
ROWS = 200


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, {sess.get_inputs()[0].name: x})]


def _rows(model: onnx.ModelProto, seed: int = 0) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).uniform(0.0, 1.0, (ROWS, *dims)).astype(np.float32)


def _assert_equivalent(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    x = _rows(before)
    ref, out = _run(before, x), _run(after, x)
    assert len(ref) == len(out)
    for r, o in zip(ref, out, strict=True):
        assert r.shape == o.shape
        if np.issubdtype(r.dtype, np.floating):
            assert float(np.max(np.abs(r - o))) <= 1e-5
            if r.ndim == 2:
                assert np.array_equal(r.argmax(axis=1), o.argmax(axis=1))
        else:
            assert np.array_equal(r, o)


def _prepared(models: dict[str, bytes], name: str) -> onnx.ModelProto:
    model = onnx.load_model_from_string(models[name])
    _clean(model)
    return model


def _weights_changed(before: onnx.ModelProto, after: onnx.ModelProto) -> bool:
    a, b = weight_matrices(before), weight_matrices(after)
    if [m.shape for m in a] != [m.shape for m in b]:
        return True
    return any(not np.allclose(x, y) for x, y in zip(a, b, strict=True))


Transform = Callable[[onnx.ModelProto, np.random.Generator], Any]

LINK_TRANSFORMS: dict[str, Transform] = {
    "permute": lambda m, rng: _transforms.permute_units(m, 0, rng),
    "rescale": lambda m, rng: _transforms.rescale_units(m, 0, rng),
    "cancelling_units": lambda m, rng: _transforms.add_cancelling_units(m, 0, rng, 0.5),
    "split": lambda m, rng: _transforms.split_layer(m, 0, rng, 1.0),
    "split_low_rank": lambda m, rng: _transforms.split_layer(m, 0, rng, 1.0, rank_fraction=0.25),
    "split_last_low_rank": lambda m, rng: _transforms.split_layer(
        m, len(_transforms.linear_nodes(m)) - 1, rng, 1.0, rank_fraction=0.5
    ),
    "pad_first": lambda m, rng: _transforms.pad_identity_layer(m, 0, rng),
    "pad_last": lambda m, rng: _transforms.pad_identity_layer(
        m, len(_transforms.linear_nodes(m)) - 1, rng
    ),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("transform", sorted(LINK_TRANSFORMS))
def test_weight_transform_preserves_outputs(
    models: dict[str, bytes], name: str, transform: str
) -> None:
    before = _prepared(models, name)
    _transforms.fold_batchnorm(before)  # rescaling needs the BN folded into its layer first
    after = onnx.ModelProto()
    after.CopyFrom(before)
    detail = LINK_TRANSFORMS[transform](after, np.random.default_rng(1))
    assert detail is not None, f"{transform} did not apply to {name}"
    onnx.checker.check_model(after)
    assert _weights_changed(before, after)
    _assert_equivalent(before, after)


@pytest.mark.parametrize("name", MODELS)
def test_every_link_of_every_model_survives_all_link_transforms(
    models: dict[str, bytes], name: str
) -> None:
    before = _prepared(models, name)
    while _transforms.fold_batchnorm(before):
        pass
    after = onnx.ModelProto()
    after.CopyFrom(before)
    rng = np.random.default_rng(2)
    n = _transforms.count_links(after)
    assert n >= 1
    for index in range(n):
        assert _transforms.add_cancelling_units(after, index, rng, 0.25)
        assert _transforms.permute_units(after, index, rng)
        _transforms.rescale_units(after, index, rng)  # None across a Sigmoid: allowed
    _assert_equivalent(before, after)


def test_rescaling_is_refused_across_a_non_homogeneous_activation(
    models: dict[str, bytes],
) -> None:
    model = _prepared(models, "mixed")
    rng = np.random.default_rng(0)
    _transforms.merge_linear(model)
    links = _transforms.count_links(model)
    applied = [_transforms.rescale_units(model, i, rng) is not None for i in range(links)]
    assert applied == [True, False]  # LeakyRelu is homogeneous, Sigmoid is not


def test_batchnorm_folding(models: dict[str, bytes]) -> None:
    before = _prepared(models, "batchnorm")
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert _transforms.fold_batchnorm(after)
    assert _transforms.fold_batchnorm(after)
    assert _transforms.fold_batchnorm(after) is None
    assert not any(n.op_type == "BatchNormalization" for n in after.graph.node)
    _assert_equivalent(before, after)


def test_merging_consecutive_linear_layers(models: dict[str, bytes]) -> None:
    before = onnx.load_model_from_string(models["mixed"])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    _clean(after)  # folds Gemm's alpha and beta so that the Gemm is a plain linear layer
    n_before = len(_transforms.linear_nodes(after))
    assert _transforms.merge_linear(after)
    assert len(_transforms.linear_nodes(after)) == n_before - 1
    _assert_equivalent(before, after)


@pytest.mark.parametrize("name", MODELS)
def test_level1_clean_up_and_renaming(models: dict[str, bytes], name: str) -> None:
    before = onnx.load_model_from_string(models[name])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    _clean(after)
    _level1.strip_and_rename(after, np.random.default_rng(0))
    _assert_equivalent(before, after)
    old_names = {t.name for t in before.graph.initializer} | {
        o for n in before.graph.node for o in n.output
    }
    io = {before.graph.input[0].name} | {o.name for o in before.graph.output}
    new_names = {t.name for t in after.graph.initializer} | {
        o for n in after.graph.node for o in n.output
    }
    assert not (old_names - io) & new_names
    assert after.producer_name == ""
    assert after.doc_string == ""
    assert after.graph.doc_string == ""
    assert [p.key for p in after.metadata_props] == ["modelshield"]


def test_constant_folding_and_noop_removal(models: dict[str, bytes]) -> None:
    before = onnx.load_model_from_string(models["mixed"])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert _level1.constants_to_initializers(after) == 1
    assert _level1.fold_constants(after) == 1  # the Mul of two constants
    assert not any(n.op_type in ("Constant", "Mul") for n in after.graph.node)
    _assert_equivalent(before, after)
    demo = onnx.load_model_from_string(models["demo_mlp"])
    cleaned = onnx.ModelProto()
    cleaned.CopyFrom(demo)
    assert _level1.remove_noops(cleaned) == 2  # Cast float->float and Identity
    _assert_equivalent(demo, cleaned)


def test_a_split_dense_layer_adds_its_share_inside_one_gemm(models: dict[str, bytes]) -> None:
    """``Gemm(x, W - A, C = share)``: no ``Add`` of the two shares, which costs two operators."""
    before = _prepared(models, "demo_mlp")
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert _transforms.split_layer(after, 0, np.random.default_rng(0), 1.0, rank_fraction=0.0625)
    _assert_equivalent(before, after)
    consts = {t.name for t in after.graph.initializer}
    summing = [
        n
        for n in after.graph.node
        if n.op_type == "Gemm" and n.input[2:] and n.input[2] not in consts
    ]
    assert len(summing) == 1
    adds = [n for n in after.graph.node if n.op_type == "Add"]
    assert all(any(i in consts for i in n.input) for n in adds)  # bias additions only
    # the readers still see the main share as a layer, and an analyst still sums the shares
    assert len(weight_matrices(after)) == len(weight_matrices(before)) + 2
    summed = weight_matrices(after, undo_splits=True)
    assert any(np.allclose(m, weight_matrices(before)[0], atol=1e-5) for m in summed)


def test_a_split_dense_layer_on_a_batch_of_matrices_keeps_matmul() -> None:
    """Gemm takes matrices only: a layer applied to ``[N, 3, 12]`` is split with MatMul and Add."""
    rng = np.random.default_rng(0)
    inits = [
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (12, 8)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        onnx.helper.make_node("MatMul", ["input", "w1"], ["m"]),
        onnx.helper.make_node("Add", ["m", "b1"], ["h"]),
        onnx.helper.make_node("Relu", ["h"], ["r"]),
        onnx.helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "sequence",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 12])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 4])],
        inits,
    )
    before = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert _transforms.split_layer(after, 0, np.random.default_rng(0), 1.0, rank_fraction=0.25)
    onnx.checker.check_model(after)
    assert "Gemm" not in {n.op_type for n in after.graph.node}
    _assert_equivalent(before, after)
