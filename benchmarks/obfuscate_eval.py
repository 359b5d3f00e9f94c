"""Measured effect of model obfuscation (issue 10): what a reverse engineer sees, and the cost.

Models: the demo digits MLP (64 hidden units, skl2onnx), a deeper digits MLP (128-64 hidden units)
and, when torch is installed, a small digits CNN with batch normalization trained here and exported
through torch.export. Each is obfuscated at levels 1, 2 and 3 (fixed seed) and compared with the
original on the held-out digits:

- equivalence: largest absolute output difference and identical top-1 on real test rows;
- what the file shows: linear layers and their widths, parameters, producer, metadata keys;
- weight matching, three readers: ``naive`` (best cosine between the original's weight matrices
  and the obfuscated ones: same-shape matrices flattened, and rows matched one by one after
  normalising them, which undoes permutation and positive rescaling of units); ``analyst`` (the
  same after summing additive shares back, i.e. undoing the split layers); for scale, the same
  score between the original and an *unrelated* model of the same architecture trained with
  another seed;
- cost: latency ratio obfuscated / original (ONNX Runtime, one thread, batches of 1 and 256
  rows, alternating calls, medians; the worse of the two is reported) and size ratio.

    python benchmarks/obfuscate_eval.py [--quick]

The headline keys (``max_abs_diff``, ``top1_equal``, ``max_weight_cosine_before``,
``max_weight_cosine_after``, ``latency_ratio``, ``size_ratio``) are for the demo MLP at level 2;
``results`` holds every model and level. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from modelshield.demo import DEMO_INPUT_SPEC, load_demo_data, to_onnx
from modelshield.obfuscate import (
    RECOGNITION_THRESHOLD,
    inspect_model,
    obfuscate,
    weight_similarity,
)

SEED = 0
LEVELS = (1, 2, 3)


@dataclass
class Case:
    name: str
    model: bytes
    unrelated: bytes
    x_test: np.ndarray
    y_test: np.ndarray


def _sklearn_case(name: str, hidden: tuple[int, ...], data: Any, max_iter: int) -> Case:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    models = []
    for seed in (0, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter, random_state=seed)
            est.fit(data.x_train, data.y_train)
        models.append(to_onnx(est, DEMO_INPUT_SPEC))
    return Case(name, models[0], models[1], data.x_test, data.y_test)


def _torch_case(data: Any, epochs: int) -> Case | None:
    try:
        import torch
    except ImportError:
        return None
    from modelshield.models import InputSpec, dump_torch

    spec = InputSpec(shape=(1, 8, 8), dtype="float32", min_value=0.0, max_value=1.0)
    x_train = torch.from_numpy(data.x_train.reshape(-1, 1, 8, 8))
    y_train = torch.from_numpy(data.y_train)
    archives = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(16 * 4 * 4, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, 10),
        )
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(x_train))
            for start in range(0, len(order), 64):
                batch = order[start : start + 64]
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
        archives.append(dump_torch(net.eval(), input_spec=spec, classes=list(range(10))))
    x_test = data.x_test.reshape(-1, 1, 8, 8)
    return Case("digits_cnn_bn_torch", archives[0], archives[1], x_test, data.y_test)


def _session(model: bytes) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, ["CPUExecutionProvider"])


def _scores(sess: Any, x: np.ndarray) -> np.ndarray:
    outputs = sess.run(None, {sess.get_inputs()[0].name: x})
    floats = [o for o in outputs if np.issubdtype(np.asarray(o).dtype, np.floating)]
    return np.asarray(floats[-1], dtype=np.float64)


def _latency_ratio(ours: Any, peer: Any, x: np.ndarray, calls: int) -> tuple[float, float, float]:
    """Median seconds per call of ``ours`` and ``peer``, alternating call by call; their ratio.

    Alternating single calls and taking medians keeps the noise of a shared machine (other
    processes waking up) out of the ratio.
    """

    def once(sess: Any) -> float:
        start = time.perf_counter()
        sess.run(None, {sess.get_inputs()[0].name: x})
        return time.perf_counter() - start

    for _ in range(20):
        once(ours), once(peer)
    t_ours: list[float] = []
    t_peer: list[float] = []
    for i in range(calls):
        if i % 2:
            t_ours.append(once(ours))
            t_peer.append(once(peer))
        else:
            t_peer.append(once(peer))
            t_ours.append(once(ours))
    a, b = statistics.median(t_ours), statistics.median(t_peer)
    return a, b, a / b


def _evaluate(case: Case, level: int, reps: int) -> dict[str, Any]:
    result = obfuscate(case.model, level=level, seed=SEED, inputs=case.x_test)
    report = result.report
    # the 'before' of a torch archive is its plain ONNX export, as the obfuscator starts from it
    ref_model = case.model if case.model[:2] != b"PK" else _exported(case.model)
    unrelated = case.unrelated if case.unrelated[:2] != b"PK" else _exported(case.unrelated)
    sess_orig, sess_obf = _session(ref_model), _session(result.model_bytes)
    p0, p1 = _scores(sess_orig, case.x_test), _scores(sess_obf, case.x_test)
    naive = weight_similarity(ref_model, result.model_bytes)
    analyst = weight_similarity(ref_model, result.model_bytes, undo_splits=True)
    unrelated_match = weight_similarity(ref_model, unrelated)
    latencies = {}
    for batch in (1, 256):
        x = np.ascontiguousarray(case.x_test[:batch])
        ours, peer, ratio = _latency_ratio(sess_obf, sess_orig, x, reps)
        latencies[f"batch_{batch}"] = {"ours_s": ours, "peer_s": peer, "ratio": ratio}
    before, after = inspect_model(ref_model), inspect_model(result.model_bytes)
    return {
        "level": level,
        "max_abs_diff": float(np.max(np.abs(p0 - p1))),
        "top1_equal": bool(np.array_equal(p0.argmax(axis=1), p1.argmax(axis=1))),
        "accuracy_after": float(np.mean(p1.argmax(axis=1) == case.y_test)),
        "report_max_abs_diff": report.max_abs_diff,
        "verification_rows": report.n_verification_rows,
        "layers_before": before.n_linear_layers,
        "layers_after": after.n_linear_layers,
        "widths_before": list(before.widths),
        "widths_after": list(after.widths),
        "producer_before": before.producer,
        "producer_after": after.producer,
        "metadata_keys_after": list(after.metadata_keys),
        "max_weight_cosine_before": weight_similarity(ref_model, ref_model).max_cosine,
        "max_weight_cosine_after": naive.max_cosine,
        "comparable_layer_pairs": naive.comparable_pairs,
        "weight_cosine_after_undoing_splits": analyst.max_cosine,
        "weight_cosine_unrelated_model": unrelated_match.max_cosine,
        "recognised_naive": naive.recognised,
        "recognised_after_undoing_splits": analyst.recognised,
        "latency": latencies,
        "latency_ratio": max(v["ratio"] for v in latencies.values()),
        "compute_ratio": report.cost_ratio,
        "size_ratio": len(result.model_bytes) / len(ref_model),
        "steps": [c.step for c in report.changes],
    }


_EXPORTED: dict[int, bytes] = {}


def _exported(archive: bytes) -> bytes:
    """The plain ONNX export of a torch archive: the fair 'before' for a torch model."""
    from modelshield.obfuscate._graph import serialize, to_onnx_model

    key = hash(archive)
    if key not in _EXPORTED:
        _EXPORTED[key] = serialize(to_onnx_model(archive)[0])
    return _EXPORTED[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer models and repetitions")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load_demo_data()
    reps = 200 if args.quick else 2000  # alternating calls per batch size
    builders: list[Callable[[], Case | None]] = [
        lambda: _sklearn_case("digits_mlp_demo", (64,), data, 1000),
        lambda: _sklearn_case("digits_mlp_128_64", (128, 64), data, 100 if args.quick else 1000),
    ]
    if not args.quick:
        builders.append(lambda: _torch_case(data, epochs=8))
    results: dict[str, dict[str, Any]] = {}
    for build in builders:
        case = build()
        if case is None:
            print("torch is not installed: skipping the CNN")
            continue
        results[case.name] = {}
        for level in LEVELS:
            row = _evaluate(case, level, reps)
            results[case.name][f"level_{level}"] = row
            print(
                f"{case.name:22s} level {level}: diff {row['max_abs_diff']:.2e} "
                f"top1 {row['top1_equal']} layers {row['layers_before']}->{row['layers_after']} "
                f"widths {row['widths_before']}->{row['widths_after']} "
                f"cos {row['max_weight_cosine_after']:.3f} "
                f"({row['comparable_layer_pairs']} comparable layer pairs) "
                f"(undo splits {row['weight_cosine_after_undoing_splits']:.3f}, "
                f"unrelated {row['weight_cosine_unrelated_model']:.3f}) "
                f"latency x{row['latency_ratio']:.2f} size x{row['size_ratio']:.2f}",
                flush=True,
            )
    head = results["digits_mlp_demo"]["level_2"]
    worst_l2_latency = max(r["level_2"]["latency_ratio"] for r in results.values())
    summary = {
        "model": "digits_mlp_demo",
        "level": 2,
        "max_abs_diff": head["max_abs_diff"],
        "top1_equal": head["top1_equal"],
        "max_weight_cosine_before": head["max_weight_cosine_before"],
        "max_weight_cosine_after": head["max_weight_cosine_after"],
        "latency_ratio": head["latency_ratio"],
        "size_ratio": head["size_ratio"],
        "ours": head["latency"]["batch_1"]["ours_s"],
        "peer": head["latency"]["batch_1"]["peer_s"],
        "ratio": head["latency_ratio"],
        "ours_name": "obfuscated level 2 (ONNX Runtime, 1 thread)",
        "peer_name": "original (ONNX Runtime, 1 thread)",
        "latency_goal_level_2": 1.3,
        "worst_level_2_latency_ratio_all_models": worst_l2_latency,
        "all_equivalent": all(
            r["top1_equal"] and r["max_abs_diff"] <= 1e-5
            for levels in results.values()
            for r in levels.values()
        ),
        "recognition_threshold": RECOGNITION_THRESHOLD,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    print(json.dumps(summary, sort_keys=False))


if __name__ == "__main__":
    main()
