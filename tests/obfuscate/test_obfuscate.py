"""The obfuscate() pipeline: equivalence at every level, what it hides, and what it refuses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelshield.obfuscate
from modelshield.demo import DemoData, DemoModel
from modelshield.errors import InvalidInputError, ShieldError, UnsupportedModelError
from modelshield.models import InputSpec, load_model
from modelshield.obfuscate import (
    EquivalenceError,
    _api,
    _transforms,
    inspect_model,
    obfuscate,
    weight_similarity,
)
from modelshield.obfuscate._verify import Verifier, compare

MODELS = ("demo_mlp", "cnn", "batchnorm", "mixed", "cnn_dynamic_reshape")


def test_public_names() -> None:
    assert set(modelshield.obfuscate.__all__) == {
        "LEVELS",
        "RECOGNITION_THRESHOLD",
        "Change",
        "EquivalenceError",
        "ModelView",
        "ObfuscationReport",
        "ObfuscationResult",
        "WeightMatch",
        "inspect_model",
        "obfuscate",
        "weight_matrices",
        "weight_similarity",
    }
    for name in modelshield.obfuscate.__all__:
        assert hasattr(modelshield.obfuscate, name)
    assert issubclass(EquivalenceError, UnsupportedModelError)


def test_import_writes_nothing_and_configures_no_logging() -> None:
    probe = (
        "import logging, sys\n"
        "events = []\n"
        "def hook(event, args):\n"
        "    if event != 'open' or args[1] is None:\n"
        "        return\n"
        "    if any(c in str(args[1]) for c in 'wax+'):\n"
        "        events.append(str(args[0]))\n"
        "sys.addaudithook(hook)\n"
        "import modelshield.obfuscate, modelshield.cli._obfuscate\n"
        "print(len(events), len(logging.getLogger().handlers))\n"
    )
    out = subprocess.run(
        [sys.executable, "-B", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["0", "0"]


def _random_rows(spec: InputSpec, n: int = 300, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, *spec.shape)).astype(np.float32)


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_every_level_keeps_the_function(models: dict[str, bytes], name: str, level: int) -> None:
    result = obfuscate(models[name], level=level, seed=11)
    report = result.report
    assert report.max_abs_diff <= 1e-5
    assert report.top1_equal
    assert report.changes[-1].step == "strip and rename"
    # checked again here, independently, through the public model loader on fresh rows
    original, obfuscated = load_model(models[name]), load_model(result.model_bytes)
    rows = _random_rows(original.input_spec)
    p0, p1 = original.predict_proba(rows), obfuscated.predict_proba(rows)
    assert float(np.max(np.abs(p0 - p1))) <= 1e-5
    assert np.array_equal(original.predict(rows), obfuscated.predict(rows))
    assert obfuscated.input_spec == original.input_spec
    assert obfuscated.classes == original.classes
    if level >= 2:
        assert report.after.widths != report.before.widths
        assert not report.weights.recognised
        expected = {2: "split layer", 3: "pad with an identity layer"}[level]
        assert {c.step for c in report.changes} >= {"permute units", expected}


def test_demo_mlp_on_real_digits(demo_model: DemoModel, demo_data: DemoData) -> None:
    result = obfuscate(demo_model.onnx_bytes, level=3, seed=0, inputs=demo_data.x_test)
    assert result.report.n_verification_rows == 256 + len(demo_data.x_test)
    obfuscated = load_model(result.model_bytes)
    accuracy = float(np.mean(obfuscated.predict(demo_data.x_test) == demo_data.y_test))
    assert accuracy == pytest.approx(demo_model.test_accuracy)
    assert result.report.cost_ratio <= 4.0
    assert result.report.after.n_linear_layers > result.report.before.n_linear_layers


def test_level1_hides_names_producer_and_metadata(models: dict[str, bytes]) -> None:
    data = models["cnn"]
    out = obfuscate(data, level=1, seed=0).model_bytes
    for secret in (b"secret-trainer", b"Jane Owner", b"owner's data", b"conv1.weight", b"fc.bias"):
        assert secret in data
        assert secret not in out
    model = onnx.load_model_from_string(out)
    assert [p.key for p in model.metadata_props] == ["modelshield"]
    assert model.graph.input[0].name == "input"  # the interface keeps its names
    assert model.graph.output[0].name == "logits"
    view = inspect_model(out)
    assert view.producer == ""
    assert inspect_model(data).producer == "secret-trainer 9.9"


def test_rename_io_renames_the_interface_too(models: dict[str, bytes]) -> None:
    result = obfuscate(models["cnn"], level=1, seed=0, rename_io=True)
    model = onnx.load_model_from_string(result.model_bytes)
    assert model.graph.input[0].name != "input"
    assert model.graph.output[0].name != "logits"


def test_a_reshape_computed_from_the_batch_size_is_frozen(models: dict[str, bytes]) -> None:
    """Torch's exporter flattens with a shape computed at run time; the link must survive it."""
    result = obfuscate(models["cnn_dynamic_reshape"], level=2, seed=0)
    clean_up = result.report.changes[0]
    assert "batch reshapes frozen: 1" in clean_up.detail
    assert "dead nodes removed: 3" in clean_up.detail
    widened = [c.detail for c in result.report.changes if c.step == "add cancelling units"]
    assert len(widened) == 2  # conv1 -> conv2 and conv2 -> (reshape) -> fc
    ops = dict(result.report.after.ops)
    assert "Shape" not in ops
    assert "Concat" not in ops


def test_level3_stays_within_the_compute_budget(models: dict[str, bytes]) -> None:
    roomy = obfuscate(models["demo_mlp"], level=3, seed=1, max_cost_ratio=4.0).report
    tight = obfuscate(models["demo_mlp"], level=3, seed=1, max_cost_ratio=1.0).report
    assert "pad with an identity layer" in {c.step for c in roomy.changes}
    assert 1.0 < roomy.cost_ratio <= 4.0
    assert "pad with an identity layer" not in {c.step for c in tight.changes}
    assert tight.cost_ratio <= 1.0


def _widened(report: object) -> list[str]:
    changes = report.changes  # type: ignore[attr-defined]
    return [c.detail for c in changes if c.step == "add cancelling units"]


def _conv_net(channels: int) -> bytes:
    """1x8x8 -> conv to ``channels`` -> ReLU -> conv to 16 -> ReLU -> global pool -> dense to 10."""
    rng = np.random.default_rng(0)
    pads = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    weights = {
        "w1": rng.normal(0, 0.5, (channels, 1, 3, 3)),
        "w2": rng.normal(0, 0.3, (16, channels, 3, 3)),
        "w3": rng.normal(0, 0.3, (10, 16)),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], **pads),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], **pads),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w.astype(np.float32), k) for k, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data: bytes = model.SerializeToString()
    return data


def test_level2_fills_the_last_block_of_channels_even_without_a_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Channels are computed in blocks of 16: filling the block between two convolutions (each
    reading at least 8 channels) costs nothing, so level 2 does it whatever the budget."""
    monkeypatch.setattr(_api, "_WIDEN_BUDGET", 0.0)
    report = obfuscate(_conv_net(8), level=2, seed=0).report
    assert report.max_abs_diff <= 1e-5
    assert _widened(report) == ["added 8 cancelling units to link 0 (8 -> 16)"]
    # a second convolution reading 4 channels reads them unblocked: 16 would cost 4x
    assert _widened(obfuscate(_conv_net(4), level=2, seed=0).report) == []


def test_level2_adds_a_block_of_units_only_within_its_budget(
    models: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo MLP's 64 units fill four blocks; a fifth would cost 25% of its arithmetic."""
    assert _widened(obfuscate(models["demo_mlp"], level=2, seed=0).report) == []
    # the batch-norm model: filling 8 channels and adding a block of 16 units cost 5% in all
    assert _widened(obfuscate(models["batchnorm"], level=2, seed=0).report) == [
        "added 8 cancelling units to link 0 (8 -> 16)",
        "added 16 cancelling units to link 1 (16 -> 32)",
    ]
    monkeypatch.setattr(_api, "_WIDEN_BUDGET", 0.0)
    assert _widened(obfuscate(models["batchnorm"], level=2, seed=0).report) == []
    monkeypatch.setattr(_api, "_WIDEN_BUDGET", 1.0)
    assert _widened(obfuscate(models["demo_mlp"], level=2, seed=0).report) == [
        "added 16 cancelling units to link 0 (64 -> 80)",
    ]


def test_level2_widens_with_fewer_units_when_many_miss_the_tolerance(
    models: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_add = _transforms.add_cancelling_units

    def add_but_not_many(model: onnx.ModelProto, **kwargs: Any) -> str | None:
        detail = real_add(model, **kwargs)
        if kwargs["units"] > 4:  # as if the rounding of many random units missed the tolerance
            g = _transforms.Graph(model)
            last = _transforms.find_linears(g)[-1]
            b = _transforms.get_bias(g, last)
            b[0] += 1e-4
            _transforms.set_bias(g, last, b)
        return detail

    monkeypatch.setattr(_transforms, "add_cancelling_units", add_but_not_many)
    monkeypatch.setattr(_api, "_WIDEN_BUDGET", 10.0)  # the tolerance decides here, not the cost
    report = obfuscate(models["cnn"], level=2, seed=11).report
    assert _widened(report) == [
        "added 3 cancelling units to link 0 (4 -> 7)",
        "added 2 cancelling units to link 1 (6 -> 8)",
    ]
    dropped = [c.step for c in report.dropped if c.step == "add cancelling units"]
    assert len(dropped) == 4  # 12 and 6 units, then 10 and 5
    assert report.max_abs_diff <= 1e-5


def test_seed_makes_the_output_reproducible(models: dict[str, bytes]) -> None:
    a = obfuscate(models["mixed"], level=2, seed=5).model_bytes
    b = obfuscate(models["mixed"], level=2, seed=5).model_bytes
    c = obfuscate(models["mixed"], level=2, seed=6).model_bytes
    assert a == b
    assert a != c


def test_level2_hides_the_weights_from_a_naive_match_but_not_from_an_analyst(
    models: dict[str, bytes],
) -> None:
    """Honest limits: summing the additive shares back gives the original rows up to scaling."""
    data = models["demo_mlp"]
    out = obfuscate(data, level=2, seed=3).model_bytes
    assert weight_similarity(data, data).max_cosine == pytest.approx(1.0)
    naive = weight_similarity(data, out)
    assert naive.max_cosine < 0.9
    analyst = weight_similarity(data, out, undo_splits=True)
    assert analyst.row_cosine > 0.99


def test_weight_similarity_of_unrelated_models_is_low(
    models: dict[str, bytes], model_builders: dict[str, Callable[..., bytes]]
) -> None:
    unrelated = model_builders["cnn"](seed=99)
    assert weight_similarity(models["cnn"], unrelated).max_cosine < 0.9


def test_inspect_model_reads_the_architecture(models: dict[str, bytes]) -> None:
    view = inspect_model(models["cnn"])
    assert view.widths == (4, 6, 10)
    assert view.n_linear_layers == 3
    assert dict(view.ops)["Conv"] == 2
    assert view.n_parameters == 4 * 9 + 4 + 6 * 36 + 6 + 10 * 96 + 10


# ---------------------------------------------------------------- refusals and failed proofs


def _graph_model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    *,
    in_type: int = TensorProto.FLOAT,
    domains: tuple[tuple[str, int], ...] = (("", 17),),
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", in_type, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def test_control_flow_is_refused() -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["b"])],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
    )
    cond = numpy_helper.from_array(np.asarray(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    with pytest.raises(UnsupportedModelError, match="control-flow operator 'If'"):
        obfuscate(_graph_model([node], [cond]), level=1)


def test_custom_domain_is_refused() -> None:
    node = helper.make_node("Secret", ["x"], ["y"], domain="com.example")
    data = _graph_model([node], [], domains=(("", 17), ("com.example", 1)))
    with pytest.raises(UnsupportedModelError, match=r"domain 'com\.example'"):
        obfuscate(data, level=1)


def test_external_weights_are_refused() -> None:
    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    with pytest.raises(UnsupportedModelError, match="external weight files"):
        obfuscate(_graph_model([node], [weight]), level=1)


def test_integer_input_is_refused() -> None:
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)
    with pytest.raises(UnsupportedModelError, match="float32 or float64"):
        obfuscate(_graph_model([node], [], in_type=TensorProto.INT64), level=1)


def test_level2_needs_a_linear_layer_but_level1_does_not() -> None:
    data = _graph_model([helper.make_node("Relu", ["x"], ["y"])], [])
    with pytest.raises(UnsupportedModelError, match="no linear layer"):
        obfuscate(data, level=2)
    assert obfuscate(data, level=1, seed=0).report.max_abs_diff == 0.0


def test_other_formats_and_garbage_are_refused(demo_model: DemoModel) -> None:
    with pytest.raises(UnsupportedModelError, match="skl2onnx"):
        obfuscate(demo_model.skops_bytes)
    with pytest.raises(UnsupportedModelError):
        obfuscate(b"\x00not a model at all")


@pytest.mark.parametrize(
    "kwargs",
    [{"level": 0}, {"level": 4}, {"tolerance": 0.0}, {"seed": -1}, {"max_cost_ratio": 0.5}],
)
def test_bad_arguments(models: dict[str, bytes], kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError):
        obfuscate(models["demo_mlp"], **kwargs)  # type: ignore[arg-type]


def test_real_inputs_of_the_wrong_shape_are_refused(models: dict[str, bytes]) -> None:
    with pytest.raises(InvalidInputError, match="do not fit"):
        obfuscate(models["demo_mlp"], inputs=np.zeros((3, 10), dtype=np.float32))


def _rescale_without_compensation(
    model: onnx.ModelProto, index: int, rng: np.random.Generator
) -> str | None:
    """A broken transform: scales the incoming weights but forgets the outgoing ones."""
    g, link = _transforms._link(model, index)
    if link is None:
        return None
    w = _transforms.get_weight(g, link.first)
    _transforms.set_weight(g, link.first, w * 3.0)
    return "broken rescale"


def test_a_broken_transform_is_caught(
    models: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transforms, "rescale_units", _rescale_without_compensation)
    with pytest.raises(EquivalenceError, match="after 'rescale units'") as info:
        obfuscate(models["demo_mlp"], level=2, seed=0)
    assert info.value.max_abs_diff > 1e-5
    assert isinstance(info.value, ShieldError)


def test_a_rounding_level_miss_is_dropped_but_a_real_error_raises(
    models: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def nudge(size: float) -> Callable[..., str | None]:
        def permute_and_nudge(model: onnx.ModelProto, index: int, rng: object) -> str | None:
            g, link = _transforms._link(model, index)
            if link is None or link.second.output not in g.outputs:
                return None  # only the last layer, whose bias is added to the logits as is
            b = _transforms.get_bias(g, link.second)
            b[0] += size
            _transforms.set_bias(g, link.second, b)
            return "nudged"

        return permute_and_nudge

    monkeypatch.setattr(_transforms, "permute_units", nudge(3e-5))  # rounding-sized: dropped
    result = obfuscate(models["mixed"], level=2, seed=0)
    assert "permute units" not in {c.step for c in result.report.changes}
    assert {c.step for c in result.report.dropped} == {"permute units"}
    assert result.report.max_abs_diff <= 1e-5
    monkeypatch.setattr(_transforms, "permute_units", nudge(1e-3))  # a real error: raises
    with pytest.raises(EquivalenceError, match="after 'permute units'"):
        obfuscate(models["mixed"], level=2, seed=0)


def test_a_broken_randomized_transform_is_dropped_not_kept(
    models: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_split = _transforms.split_layer

    def split_badly(model: onnx.ModelProto, **kwargs: object) -> str | None:
        detail = real_split(model, **kwargs)  # type: ignore[arg-type]
        w = model.graph.initializer[-1]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, w.name))
        return detail

    monkeypatch.setattr(_transforms, "split_layer", split_badly)
    result = obfuscate(models["demo_mlp"], level=2, seed=0)
    assert "split layer" not in {c.step for c in result.report.changes}
    assert [c.step for c in result.report.dropped] == ["split layer"] * 3  # three share sizes
    assert all(c.max_abs_diff > 1e-5 for c in result.report.dropped)
    assert result.report.max_abs_diff <= 1e-5


def test_a_tiny_error_above_tolerance_is_caught(models: dict[str, bytes]) -> None:
    original = onnx.load_model_from_string(models["mixed"])
    rows = np.random.default_rng(0).normal(size=(64, 12)).astype(np.float32)
    verifier = Verifier(original, rows, tolerance=1e-5)
    verifier.check(original, "identity")
    nudged = onnx.ModelProto()
    nudged.CopyFrom(original)
    w = numpy_helper.to_array(nudged.graph.initializer[0]).copy()
    w[0, 0] += 1e-3
    nudged.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w0"))
    with pytest.raises(EquivalenceError, match="max abs diff"):
        verifier.check(nudged, "nudge")


def test_compare_flags_a_changed_top1_and_changed_labels() -> None:
    ref = [np.asarray([[0.1, 0.9], [0.8, 0.2]]), np.asarray([1, 0])]
    swapped = [np.asarray([[0.9, 0.1], [0.8, 0.2]]), np.asarray([1, 0])]
    relabelled = [ref[0].copy(), np.asarray([0, 0])]
    assert compare(ref, [r.copy() for r in ref]).top1_equal
    assert not compare(ref, swapped).top1_equal
    assert not compare(ref, relabelled).top1_equal
    assert compare(ref, ref[:1]).max_abs_diff == float("inf")


# ---------------------------------------------------------------- torch models


@pytest.mark.torch
@pytest.mark.slow
def test_torch_model_with_batchnorm_through_onnx_export() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from modelshield.models import dump_torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 12),
        torch.nn.BatchNorm1d(12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 3),
    )
    with torch.no_grad():  # non-trivial running statistics, as after training
        for module in net:
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    spec = InputSpec(shape=(1, 8, 8), min_value=0.0, max_value=1.0)
    data = dump_torch(net, input_spec=spec, classes=["a", "b", "c"])
    result = obfuscate(data, level=2, seed=0)
    assert result.report.source_format == "torch"
    steps = [c.step for c in result.report.changes]
    assert steps.count("fold batch normalization") == 2
    original, obfuscated = load_model(data), load_model(result.model_bytes)
    assert obfuscated.classes == ("a", "b", "c")
    rows = _random_rows(spec)
    assert (
        float(np.max(np.abs(original.predict_proba(rows) - obfuscated.predict_proba(rows)))) < 1e-5
    )
    assert np.array_equal(original.predict(rows), obfuscated.predict(rows))
