"""Property test: random small networks, random levels and seeds, outputs always unchanged."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from modelshield.obfuscate import obfuscate

ACTIVATIONS = ("Relu", "LeakyRelu", "Tanh", "Sigmoid")
FORMS = ("matmul_add", "matmul", "gemm", "gemm_t")


@st.composite
def networks(draw: st.DrawFn) -> bytes:
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    widths = [draw(st.integers(2, 12)) for _ in range(draw(st.integers(2, 4)))]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "input"
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        w = rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
        b = rng.normal(0, 0.1, n_out).astype(np.float32)
        form = draw(st.sampled_from(FORMS))
        out = f"z{i}"
        if form.startswith("gemm"):
            trans = form == "gemm_t"
            inits += [
                numpy_helper.from_array(w.T.copy() if trans else w, f"w{i}"),
                numpy_helper.from_array(b, f"b{i}"),
            ]
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], transB=int(trans)))
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            if form == "matmul_add":
                inits.append(numpy_helper.from_array(b, f"b{i}"))
                nodes += [
                    helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                    helper.make_node("Add", [f"m{i}", f"b{i}"], [out]),
                ]
            else:
                nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [out]))
        if i < len(widths) - 2:
            act = draw(st.sampled_from(ACTIVATIONS))
            nodes.append(helper.make_node(act, [out], [f"a{i}"]))
            x = f"a{i}"
        else:
            nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        nodes,
        "random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def _logits(data: bytes, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, options, ["CPUExecutionProvider"])
    return np.asarray(sess.run(["logits"], {"input": x})[0])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=networks(), level=st.sampled_from([1, 2, 3]), seed=st.integers(0, 1000))
def test_random_networks_keep_their_function(net: bytes, level: int, seed: int) -> None:
    result = obfuscate(net, level=level, seed=seed, n_random=64)
    width = onnx.load_model_from_string(net).graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = np.random.default_rng(seed + 1).normal(size=(100, width)).astype(np.float32)
    before, after = _logits(net, x), _logits(result.model_bytes, x)
    assert float(np.max(np.abs(before - after))) <= 1e-4  # fresh rows: not the checked ones
    assert result.report.max_abs_diff <= 1e-5
    if before.shape[1] > 1:
        margin = np.sort(before, axis=1)[:, -1] - np.sort(before, axis=1)[:, -2]
        clear = margin > 1e-4
        assert np.array_equal(before[clear].argmax(axis=1), after[clear].argmax(axis=1))
