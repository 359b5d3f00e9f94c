"""Per-client response watermark (DAWN, Szyller et al. 2021): selection, stability, trace."""

from __future__ import annotations

import hashlib
import time
import warnings
from typing import Any

import numpy as np
import pytest

from modelshield.demo import DemoData, DemoModel
from modelshield.errors import InvalidInputError, KeyMissingError
from modelshield.watermark import (
    ResponseRecord,
    ResponseWatermark,
    response_cost,
    trace,
)

from .conftest import CLASSES, KEY, OTHER_KEY, shift


def all_digits() -> np.ndarray[Any, Any]:
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32)


@pytest.fixture(scope="module")
def digits() -> np.ndarray[Any, Any]:
    return all_digits()


def make(share: float = 0.01, key: bytes = KEY) -> ResponseWatermark:
    return ResponseWatermark(key, classes=CLASSES, share=share, image_shape=(8, 8))


def test_selection_is_deterministic_and_keyed(digits: Any, demo_model: DemoModel) -> None:
    proba = demo_model.estimator.predict_proba(digits)
    a = make(0.05).select("alice", digits, outputs=proba)
    b = make(0.05).select("alice", digits, outputs=proba)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.labels, b.labels)
    other_client = make(0.05).select("bob", digits, outputs=proba)
    other_key = make(0.05, OTHER_KEY).select("alice", digits, outputs=proba)
    assert set(a.rows.tolist()) != set(other_client.rows.tolist())
    assert set(a.rows.tolist()) != set(other_key.rows.tolist())


def test_choose_decides_what_select_decides(digits: Any, demo_model: DemoModel) -> None:
    """The gateway's lean path marks the same rows with the same labels, row by row too."""
    proba = demo_model.estimator.predict_proba(digits)
    wm = ResponseWatermark(
        KEY, classes=CLASSES, share=0.02, uncertain_share=0.3, image_shape=(8, 8)
    )
    marks = wm.select("alice", digits, outputs=proba)
    rows, labels = wm.choose("alice", digits, outputs=proba)
    assert len(rows) > 20
    assert rows.dtype == labels.dtype == np.int64
    np.testing.assert_array_equal(rows, marks.rows)
    np.testing.assert_array_equal(labels, marks.labels)
    one_by_one = [
        wm.choose("alice", digits[i : i + 1], outputs=proba[i : i + 1]) for i in range(300)
    ]
    assert [i for i, (r, _) in enumerate(one_by_one) if r.size] == [
        r for r in marks.rows.tolist() if r < 300
    ]
    with pytest.raises(InvalidInputError):
        wm.choose("alice", digits, outputs=proba[:5])


def test_share_is_about_what_was_asked(digits: Any, demo_model: DemoModel) -> None:
    proba = demo_model.estimator.predict_proba(digits)
    wm = make(0.05)
    marks = [wm.select(f"client{i}", digits, outputs=proba) for i in range(8)]
    cost = response_cost(marks, 8 * len(digits))
    assert 0.02 < cost < 0.09
    with pytest.raises(InvalidInputError):
        response_cost(marks, 0)


def test_marked_labels_are_wrong_and_applied(digits: Any, demo_model: DemoModel) -> None:
    proba = demo_model.estimator.predict_proba(digits)
    marks = make(0.05).select("alice", digits, outputs=proba)
    assert len(marks) > 20
    honest = proba.argmax(1)
    np.testing.assert_array_equal(marks.honest, honest[marks.rows])
    assert np.all(marks.labels != marks.honest)
    changed = marks.apply_to_probabilities(proba)
    np.testing.assert_allclose(changed.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(changed.argmax(1)[marks.rows], marks.labels)
    untouched = np.setdiff1d(np.arange(len(digits)), marks.rows)
    np.testing.assert_array_equal(changed[untouched], proba[untouched])
    labels = marks.apply_to_labels(honest)
    assert [labels[r] for r in marks.rows] == [CLASSES[w] for w in marks.labels]
    with pytest.raises(InvalidInputError):
        marks.apply_to_probabilities(proba[:, :3])


def test_outputs_may_be_labels_and_must_match_the_batch(digits: Any, demo_model: DemoModel) -> None:
    proba = demo_model.estimator.predict_proba(digits)
    wm = make(0.05)
    by_proba = wm.select("alice", digits, outputs=proba)
    by_label = wm.select("alice", digits, outputs=proba.argmax(1))
    np.testing.assert_array_equal(by_proba.labels, by_label.labels)
    with pytest.raises(InvalidInputError):
        wm.select("alice", digits, outputs=proba[:5])


def test_near_duplicates_are_marked_alike(digits: Any, demo_model: DemoModel) -> None:
    # horizontal shifts of the 8x8 digits keep every pixel (the side columns are background), so
    # the Fourier magnitudes barely move; vertical shifts crop a row and are NOT stable (measured
    # and documented in docs/watermark.md)
    wm = make(0.05)
    base_cells = wm.cells(digits)
    for variant in (shift(digits, 1, 0), shift(digits, -1, 0)):
        same = np.all(wm.cells(variant) == base_cells, axis=1).mean()
        assert same > 0.9
    # the raw-pixel representation is not shift-stable at all
    raw = ResponseWatermark(KEY, classes=CLASSES, cell_width=3.0)
    raw_same = np.all(raw.cells(shift(digits, 1, 0)) == raw.cells(digits), axis=1).mean()
    assert raw_same < 0.5


def test_features_replace_the_representation(digits: Any, demo_model: DemoModel) -> None:
    est = demo_model.estimator
    hidden = np.maximum(0, digits @ est.coefs_[0] + est.intercepts_[0])
    wm = ResponseWatermark(KEY, classes=CLASSES, share=0.05, cell_width=2.0)
    proba = est.predict_proba(digits)
    with_features = wm.select("alice", digits, outputs=proba, features=hidden)
    without = wm.select("alice", digits, outputs=proba)
    assert set(with_features.rows.tolist()) != set(without.rows.tolist())


def test_records_round_trip_and_hide_the_key(digits: Any, demo_model: DemoModel) -> None:
    proba = demo_model.estimator.predict_proba(digits[:300])
    wm = make(0.1)
    marks = wm.select("alice", digits[:300], outputs=proba)
    record = marks.records[0]
    assert record.client_id == "alice"
    assert ResponseRecord.from_dict(record.to_dict()) == record
    assert len(record.input) == 64
    assert KEY.hex() not in repr(wm)
    assert "key" not in repr(wm).lower()


def test_bad_parameters() -> None:
    with pytest.raises(KeyMissingError):
        ResponseWatermark(b"short", classes=CLASSES)
    for kwargs in ({"share": 0.0}, {"share": 1.0}, {"cell_width": 0.0}, {"n_projections": 0}):
        with pytest.raises(InvalidInputError):
            ResponseWatermark(KEY, classes=CLASSES, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        ResponseWatermark(KEY, classes=(1,))


def test_one_row_is_cheap(digits: Any, demo_model: DemoModel) -> None:
    wm = make()
    row = digits[:1]
    proba = demo_model.estimator.predict_proba(row)
    wm.select("alice", row, outputs=proba)
    timings = []
    for _ in range(200):
        start = time.perf_counter()
        wm.select("alice", row, outputs=proba)
        timings.append(time.perf_counter() - start)
    assert float(np.median(timings)) < 500e-6


def _steal(
    victim: Any, wm: ResponseWatermark, client: str, queries: Any, max_iter: int
) -> tuple[Any, list[ResponseRecord]]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    proba = victim.predict_proba(queries)
    marks = wm.select(client, queries, outputs=proba)
    answers = np.asarray(marks.apply_to_labels(proba.argmax(1)), dtype=np.int64)
    copy = MLPClassifier(
        hidden_layer_sizes=(64,),
        max_iter=max_iter,
        learning_rate_init=0.005,
        tol=0.0,
        random_state=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        copy.fit(queries, answers)
    return copy, list(marks.records)


def test_trace_names_the_client_whose_answers_trained_the_copy(
    digits: Any, demo_model: DemoModel, demo_data: DemoData
) -> None:
    victim = demo_model.estimator
    wm = make(0.05)
    records = {}
    for i in range(3):
        queries = digits[np.random.default_rng(i).permutation(len(digits))[:300]]
        records[f"honest{i}"] = list(
            wm.select(f"honest{i}", queries, outputs=victim.predict_proba(queries)).records
        )
    copy, records["thief"] = _steal(victim, wm, "thief", digits[:800], max_iter=1000)
    results = trace(copy.predict, records, classes=CLASSES, input_shape=(64,))
    assert results[0].client_id == "thief"
    assert results[0].verified
    assert results[0].chance_rate >= 1 / 9
    assert not any(r.verified for r in results[1:])
    # the victim itself carries no client's marks (it never disagrees with itself)
    assert not any(
        r.verified for r in trace(victim.predict, records, classes=CLASSES, input_shape=(64,))
    )


def test_duplicates_do_not_count_twice(digits: Any, demo_model: DemoModel) -> None:
    victim = demo_model.estimator
    wm = make(0.05)
    marks = wm.select("alice", digits, outputs=victim.predict_proba(digits))
    records = list(marks.records)

    def always_keyed(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        table = {r.input: r.label for r in records}
        return np.asarray([table[tuple(float(v) for v in row)] for row in x])

    once = trace(always_keyed, {"alice": records}, classes=CLASSES, input_shape=(64,))[0]
    thrice = trace(always_keyed, {"alice": records * 3}, classes=CLASSES, input_shape=(64,))[0]
    assert once.trials == thrice.trials == len({r.cell for r in records})
    assert once.matches == once.trials
    assert once.verified


def test_p_values_are_corrected_for_the_number_of_clients_tested(
    digits: Any, demo_model: DemoModel
) -> None:
    victim = demo_model.estimator
    wm = make(0.05)
    records = {
        name: list(wm.select(name, part, outputs=victim.predict_proba(part)).records)
        for name, part in (("alice", digits[:300]), ("bob", digits[300:600]))
    }
    rng = np.random.default_rng(0)
    answers = rng.integers(0, 10, len(digits))  # an unrelated suspect: a fixed answer per row
    table = {tuple(float(v) for v in row): a for row, a in zip(digits, answers, strict=True)}

    def suspect(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray([table.get(tuple(float(v) for v in row), 0) for row in x])

    alone = trace(suspect, {"alice": records["alice"]}, classes=CLASSES, input_shape=(64,))[0]
    both = {r.client_id: r for r in trace(suspect, records, classes=CLASSES, input_shape=(64,))}
    assert alone.trials > 0
    assert alone.p_value < 0.5  # so that doubling it is visible
    assert both["bob"].trials > 0  # two clients tested
    assert both["alice"].p_value == pytest.approx(min(1.0, 2 * alone.p_value))


def test_trace_refuses_a_wrong_number_of_labels(digits: Any, demo_model: DemoModel) -> None:
    victim = demo_model.estimator
    marks = make(0.05).select("alice", digits, outputs=victim.predict_proba(digits))
    with pytest.raises(InvalidInputError):
        trace(
            lambda x: np.zeros(1),
            {"alice": list(marks.records)},
            classes=CLASSES,
            input_shape=(64,),
        )
    assert trace(victim.predict, {}, classes=CLASSES, input_shape=(64,)) == []


def test_each_cell_and_honest_class_draws_its_own_label(digits: Any, demo_model: DemoModel) -> None:
    proba = demo_model.estimator.predict_proba(digits)
    wm = ResponseWatermark(KEY, classes=CLASSES, share=0.3, image_shape=(8, 8), cell_width=6.0)
    marks = wm.select("alice", digits, outputs=proba)
    coords = wm.cells(digits[marks.rows])
    by_id: dict[str, set[tuple[int, int]]] = {}
    ids_by_cell: dict[bytes, set[str]] = {}
    for record, cell in zip(marks.records, coords, strict=True):
        honest = CLASSES.index(record.honest_label)
        by_id.setdefault(record.cell, set()).add((honest, CLASSES.index(record.label)))
        ids_by_cell.setdefault(cell.tobytes(), set()).add(record.cell)
    # one honest class and one keyed wrong label per identifier
    assert all(len(pairs) == 1 for pairs in by_id.values())
    # a hash cell holding several honest classes gives several identifiers (independent trials)
    assert any(len(ids) > 1 for ids in ids_by_cell.values())
    offsets = {(w - h) % 10 for pairs in by_id.values() for h, w in pairs}
    assert len(offsets) > 3  # the keyed offsets are not one constant


def test_uncertain_answers_are_marked_more_often(digits: Any, demo_model: DemoModel) -> None:
    proba = demo_model.estimator.predict_proba(digits)
    rng = np.random.default_rng(0)
    flat = rng.dirichlet(np.ones(10), size=len(digits))  # every answer uncertain (top-1 < 0.9)
    assert float(flat.max(1).max()) < 0.9
    plain = make(0.01)
    boosted = ResponseWatermark(
        KEY, classes=CLASSES, share=0.01, image_shape=(8, 8), uncertain_share=0.2
    )
    # confident answers: the boost changes nothing
    confident = proba.max(1) >= 0.9
    a = plain.select("alice", digits[confident], outputs=proba[confident])
    b = boosted.select("alice", digits[confident], outputs=proba[confident])
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.labels, b.labels)
    # uncertain answers: marked at the higher rate (by a tag of their own, so which cells are
    # marked is independent of the confident answers' marks)
    few = plain.select("alice", digits, outputs=flat)
    many = boosted.select("alice", digits, outputs=flat)
    assert len(many) > 5 * max(len(few), 1)
    assert not set(many.rows.tolist()) >= set(few.rows.tolist())
    assert np.all(many.labels != many.honest)
    # labels only: no confidence, so the plain rate applies
    labels_only = boosted.select("alice", digits, outputs=flat.argmax(1))
    np.testing.assert_array_equal(labels_only.rows, few.rows)
    for kwargs in ({"uncertain_share": 0.005}, {"uncertain_share": 1.0}, {"uncertain_below": 0}):
        with pytest.raises(InvalidInputError):
            ResponseWatermark(KEY, classes=CLASSES, share=0.01, **kwargs)  # type: ignore[arg-type]


def test_probes_reveal_a_mark_learned_off_the_training_points(
    digits: Any, demo_model: DemoModel
) -> None:
    victim = demo_model.estimator
    wm = make(0.05)
    marks = wm.select("alice", digits, outputs=victim.predict_proba(digits))
    records = list(marks.records)
    inputs = np.asarray([r.input for r in records])
    honest = [r.honest_label for r in records]
    keyed = [r.label for r in records]

    def partial_copy(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Honest on the stored queries themselves, the keyed label on anything near them."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        nearest = ((x[:, None, :] - inputs[None, :, :]) ** 2).sum(-1).argmin(1)
        exact = np.all(np.isclose(x, inputs[nearest], atol=1e-6), axis=1)
        return np.asarray(
            [honest[i] if e else keyed[i] for i, e in zip(nearest, exact, strict=True)]
        )

    kwargs: dict[str, Any] = {"classes": CLASSES, "input_shape": (64,)}
    without = trace(partial_copy, {"alice": records}, **kwargs)[0]
    assert without.trials == 0
    assert not without.verified
    probed = trace(partial_copy, {"alice": records}, probes=8, **kwargs)[0]
    assert probed.verified
    assert probed.matches == probed.trials == len({r.cell for r in records})
    # deterministic (probes are seeded by the stored digests, not drawn afresh)
    assert trace(partial_copy, {"alice": records}, probes=8, **kwargs)[0] == probed
    # the victim itself still carries no marks with probes
    assert not trace(victim.predict, {"alice": records}, probes=8, **kwargs)[0].verified
    with pytest.raises(InvalidInputError):
        trace(partial_copy, {"alice": records}, probes=-1, **kwargs)


def test_scores_reveal_a_mark_the_copy_ranks_second(digits: Any, demo_model: DemoModel) -> None:
    victim = demo_model.estimator
    wm = make(0.05)
    marks = wm.select("alice", digits, outputs=victim.predict_proba(digits))
    records = list(marks.records)
    table = {r.input: (CLASSES.index(r.honest_label), CLASSES.index(r.label)) for r in records}

    def second_place(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Answers honestly, but the keyed label is its runner-up on every marked query."""
        out = np.full((len(x), 10), 0.1 / 8)
        for i, row in enumerate(x):
            honest, keyed = table[tuple(float(v) for v in row)]
            out[i, honest], out[i, keyed] = 0.7, 0.2
        return out

    kwargs: dict[str, Any] = {"classes": CLASSES, "input_shape": (64,)}
    labels = trace(lambda x: second_place(x).argmax(1), {"alice": records}, **kwargs)[0]
    assert labels.trials == 0
    assert not labels.verified
    by_scores = trace(second_place, {"alice": records}, scores=True, **kwargs)[0]
    assert by_scores.verified
    assert by_scores.matches == by_scores.trials == len({r.cell for r in records})
    assert by_scores.chance_rate == pytest.approx(1 / 9)
    # logits are read through a softmax: the same verdict and p-value
    as_logits = trace(lambda x: np.log(second_place(x)), {"alice": records}, scores=True, **kwargs)
    assert as_logits[0].p_value == pytest.approx(by_scores.p_value)
    # the victim's own probabilities carry no client's marks
    assert not trace(victim.predict_proba, {"alice": records}, scores=True, **kwargs)[0].verified
    with pytest.raises(InvalidInputError):
        trace(victim.predict, {"alice": records}, scores=True, **kwargs)


def test_a_partly_learned_mark_counts_by_its_share_of_wrong_answers(
    digits: Any, demo_model: DemoModel
) -> None:
    victim = demo_model.estimator
    marks = make(0.05).select("alice", digits, outputs=victim.predict_proba(digits))
    records = list(marks.records)
    kwargs: dict[str, Any] = {"classes": CLASSES, "input_shape": (64,), "probes": 8}

    def keyed_off_point(share_keyed: float) -> Any:
        """Honest on the stored queries; on probes the keyed label ``share_keyed`` of the time,
        else a fixed other wrong label (offset 1, or 2 where 1 is keyed)."""

        inputs = np.asarray([r.input for r in records])

        def predict(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
            nearest = ((x[:, None, :] - inputs[None, :, :]) ** 2).sum(-1).argmin(1)
            out = []
            for i, j in enumerate(nearest):
                r = records[j]
                h, keyed = CLASSES.index(r.honest_label), CLASSES.index(r.label)
                other = (h + (2 if (keyed - h) % 10 == 1 else 1)) % 10
                if np.allclose(x[i], inputs[j], atol=1e-6):
                    out.append(h)
                else:
                    out.append(keyed if (i * 0.618) % 1 < share_keyed else other)
            return np.asarray(out)

        return predict

    # keyed on about 40 % of the probes, another wrong label on 60 %: the keyed label never wins
    # a majority, yet it holds a share far above what chance gives it
    partly = trace(keyed_off_point(0.4), {"alice": records}, **kwargs)[0]
    assert partly.matches == 0
    assert partly.verified
    never = trace(keyed_off_point(0.0), {"alice": records}, **kwargs)[0]
    assert never.trials == partly.trials
    assert not never.verified


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (28, 28), (1, 5)])
def test_fourier_embedding_is_the_rfft2_magnitude_without_the_constant(
    shape: tuple[int, int],
) -> None:
    from modelshield.watermark._response import fourier_embedding

    rng = np.random.default_rng(0)
    images = rng.random((20, shape[0] * shape[1]))
    kept = np.where(images < 0.3, 0.0, images).reshape(20, *shape)  # the floor drops faint pixels
    expected = np.abs(np.fft.rfft2(kept)).reshape(20, -1)[:, 1:]
    np.testing.assert_allclose(fourier_embedding(images, shape), expected, rtol=0, atol=1e-9)


def uncertain_wm(key: bytes = KEY, rate: float = 0.3) -> ResponseWatermark:
    return ResponseWatermark(
        key, classes=CLASSES, share=0.001, image_shape=(8, 8),
        uncertain_share=rate, uncertain_below=0.95,
    )  # fmt: skip


def shifted_digits(digits: Any) -> np.ndarray[Any, Any]:
    """Natural digits and their one-pixel shifts: many answers the model is unsure about."""
    base = digits[:500]
    return np.concatenate([base, shift(base, 1, 0), shift(base, 0, 1), shift(base, -1, 0)])


def test_uncertain_marks_answer_the_runner_up_and_controls_are_kept(
    digits: Any, demo_model: DemoModel
) -> None:
    queries = shifted_digits(digits)
    proba = demo_model.estimator.predict_proba(queries)
    wm = uncertain_wm()
    marks = wm.select("alice", queries, outputs=proba)
    by_digest = {r.digest: r for r in marks.records}
    unsure = proba.max(1) < 0.95
    second = np.argsort(-proba, axis=1, kind="stable")[:, 1]
    kinds = {
        kind: [r for r in marks.records if r.kind == kind] for kind in ("runner-up", "control")
    }
    assert len(kinds["runner-up"]) > 30
    assert len(kinds["control"]) > 60
    for row in range(len(queries)):
        record = by_digest.get(
            hashlib.sha256(queries[row].astype(np.float32).tobytes()).hexdigest()
        )
        if not unsure[row]:
            assert record is None or record.kind == "keyed"
            continue
        # every uncertain answer is recorded: changed to its runner-up, or kept as a control
        assert record is not None
        assert record.kind in ("runner-up", "control")
        assert record.alternative == CLASSES[second[row]]
        assert record.rate == 0.3
        expected = second[row] if record.kind == "runner-up" else proba[row].argmax()
        assert record.label == CLASSES[expected]
    # the changed rows are the runner-up and keyed records, never the controls
    changed = {r.digest for r in marks.records if r.kind != "control"}
    assert len(marks) == len(changed)
    for row, label in zip(marks.rows.tolist(), marks.labels.tolist(), strict=True):
        if unsure[row]:
            assert label == second[row]
    # one marking per cell: all uncertain rows of a cell share it
    per_cell: dict[str, set[str]] = {}
    for r in kinds["runner-up"] + kinds["control"]:
        per_cell.setdefault(r.cell, set()).add(r.kind)
    assert all(len(k) == 1 for k in per_cell.values())
    marked_share = len({r.cell for r in kinds["runner-up"]}) / len(per_cell)
    assert 0.15 < marked_share < 0.45  # the key marks about 30 % of the cells
    # the gateway's path: the same decisions, controls answered with their own label
    rows, labels, kinds_kept = wm.decide("alice", queries, outputs=proba)
    assert len(rows) == len(marks.records)
    answered = dict(zip(marks.rows.tolist(), marks.labels.tolist(), strict=True))
    for row, label in zip(rows.tolist(), labels.tolist(), strict=True):
        assert label == answered.get(row, proba[row].argmax())
    assert set(kinds_kept) == {"keyed", "runner-up@0.3", "control@0.3"} - (
        set() if any(r.kind == "keyed" for r in marks.records) else {"keyed"}
    )
    # the trace's records, rebuilt from what the audit store keeps, are the same records
    rebuilt = wm.records(
        "alice", queries[rows], outputs=proba[rows],
        labels=[CLASSES[i] for i in labels], kinds=kinds_kept,
    )  # fmt: skip
    assert sorted(rebuilt, key=lambda r: r.digest) == sorted(marks.records, key=lambda r: r.digest)
    plain_rows, plain_labels = wm.choose("alice", queries, outputs=proba)
    np.testing.assert_array_equal(plain_rows, marks.rows)
    np.testing.assert_array_equal(plain_labels, marks.labels)


def _copy_of(records: list[ResponseRecord], fallback: Any) -> Any:
    """A suspect that answers every stored query as the client was answered, else as fallback."""
    table = {r.input: r.label for r in records}

    def predict(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        guess = fallback(x)
        return np.asarray(
            [table.get(tuple(float(v) for v in row), g) for row, g in zip(x, guess, strict=True)]
        )

    return predict


def test_selection_test_names_the_client_and_spares_a_runner_up_lover(
    digits: Any, demo_model: DemoModel
) -> None:
    victim = demo_model.estimator
    queries = shifted_digits(digits)
    wm = uncertain_wm()
    records = {
        name: list(wm.select(name, queries, outputs=victim.predict_proba(queries)).records)
        for name in ("alice", "bob", "carol")
    }
    kwargs: dict[str, Any] = {"classes": CLASSES, "input_shape": (64,)}
    copy = _copy_of(records["bob"], victim.predict)
    results = trace(copy, records, **kwargs)
    assert results[0].client_id == "bob"
    assert results[0].verified
    assert results[0].p_value < 1e-20
    assert not any(r.verified for r in results[1:])
    # a model that answers the runner-up on every uncertain query, marked or not, and one that
    # answers honestly, carry nobody's marks: the test compares marked cells with controls
    alternative = {r.input: r.alternative for r in records["bob"] if r.kind != "keyed"}

    def runner_up_lover(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        guess = victim.predict(x)
        return np.asarray(
            [
                alternative.get(tuple(float(v) for v in row), g)
                for row, g in zip(x, guess, strict=True)
            ]
        )

    for suspect in (runner_up_lover, victim.predict):
        assert not any(r.verified for r in trace(suspect, records, **kwargs))
        assert not any(r.verified for r in trace(suspect, records, probes=4, **kwargs))
    # from probabilities: a copy whose runner-up mass sits on the marked cells
    marked = {r.input for r in records["bob"] if r.kind == "runner-up"}

    def leaning(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        p = victim.predict_proba(x)
        for i, row in enumerate(x):
            if tuple(float(v) for v in row) in marked:
                top, second = np.argsort(-p[i], kind="stable")[:2]
                p[i, second] = p[i, top]  # a tie: the copy learned the mark halfway
        return p / p.sum(1, keepdims=True)

    by_scores = {r.client_id: r for r in trace(leaning, records, scores=True, **kwargs)}
    assert by_scores["bob"].verified
    assert not by_scores["alice"].verified
    assert not by_scores["carol"].verified


def test_selection_p_values_are_uniform_for_an_unrelated_suspect(
    digits: Any, demo_model: DemoModel
) -> None:
    """One fixed suspect traced against many clients' independent markings of the same queries:
    its p-values must not be small more often than they claim."""
    victim = demo_model.estimator
    queries = shifted_digits(digits)[::2]
    proba = victim.predict_proba(queries)
    rng = np.random.default_rng(3)
    noisy = rng.dirichlet(np.ones(10) * 0.5, size=len(queries))  # an arbitrary, fixed suspect
    table = {tuple(float(v) for v in row): p for row, p in zip(queries, noisy, strict=True)}

    def suspect(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray([table[tuple(float(v) for v in row)] for row in x])

    wm = uncertain_wm()
    p_values = []
    for i in range(60):
        records = list(wm.select(f"client{i}", queries, outputs=proba).records)
        selection = [r for r in records if r.kind != "keyed"]
        p_values.append(
            trace(suspect, {"c": selection}, classes=CLASSES, input_shape=(64,), scores=True)[
                0
            ].p_value
        )
    p = np.asarray(p_values)
    assert np.mean(p <= 0.1) <= 0.2  # at most twice the nominal rate, over 60 draws
    assert np.mean(p <= 0.5) <= 0.7
    assert p.min() > 1e-4


def test_inconsistent_selection_records_are_refused(digits: Any, demo_model: DemoModel) -> None:
    from dataclasses import replace

    queries = shifted_digits(digits)
    records = list(
        uncertain_wm()
        .select("alice", queries, outputs=demo_model.estimator.predict_proba(queries))
        .records
    )
    kwargs: dict[str, Any] = {"classes": CLASSES, "input_shape": (64,)}
    control = next(i for i, r in enumerate(records) if r.kind == "control")
    marked = next(r for r in records if r.kind == "runner-up")
    bad_unit = records.copy()
    bad_unit[control] = replace(records[control], cell=marked.cell)  # one cell, two markings
    no_rate = records.copy()
    no_rate[control] = replace(records[control], rate=None)
    bad_rate = records.copy()
    bad_rate[control] = replace(records[control], rate=1.5)
    bad_kind = records.copy()
    bad_kind[control] = replace(records[control], kind="runner_up")
    bad_label = records.copy()
    bad_label[control] = replace(records[control], alternative="eleven")
    for bad in (bad_unit, no_rate, bad_rate, bad_kind, bad_label):
        with pytest.raises(InvalidInputError):
            trace(demo_model.estimator.predict, {"alice": bad}, **kwargs)
    with pytest.raises(InvalidInputError):
        trace(demo_model.estimator.predict_proba, {"alice": bad_label}, scores=True, **kwargs)
    # records written before the selection test (no kind) read as keyed marks
    old = {
        k: v for k, v in records[0].to_dict().items() if k not in ("kind", "alternative", "rate")
    }
    assert ResponseRecord.from_dict(old).kind == "keyed"
    assert ResponseRecord.from_dict(marked.to_dict()) == marked


def test_rows_stored_before_kinds_are_traced_as_the_keyed_marks_they_were(
    digits: Any, demo_model: DemoModel
) -> None:
    """An audit trail written by a release that marked uncertain answers with keyed labels and
    kept no controls: its rows carry no kind, and must not enter the selection test (they are
    all marked cells, so they would accuse an independent model)."""
    victim = demo_model.estimator
    queries = shifted_digits(digits)[::2]
    proba = victim.predict_proba(queries)
    unsure = proba.max(1) < 0.9
    old = make(0.3)  # the old release: uncertain answers marked at 0.3 with keyed labels
    new = uncertain_wm()
    rng = np.random.default_rng(5)
    noisy = rng.dirichlet(np.ones(10) * 0.5, size=len(queries))  # an unrelated, fixed suspect
    table = {tuple(float(v) for v in row): p for row, p in zip(queries, noisy, strict=True)}

    def suspect(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.asarray([table[tuple(float(v) for v in row)] for row in x])

    p_values = []
    for i in range(30):
        client = f"partner{i}"
        marks = old.select(client, queries[unsure], outputs=proba[unsure])
        stored = queries[unsure][marks.rows]
        records = new.records(
            client, stored, outputs=victim.predict_proba(stored),
            labels=[r.label for r in marks.records], kinds=[""] * len(marks),
        )  # fmt: skip
        assert {r.kind for r in records} == {"keyed"}
        assert sorted(r.cell for r in records) == sorted(r.cell for r in marks.records)
        result = trace(suspect, {client: list(records)}, classes=CLASSES, input_shape=(64,),
                       scores=True)[0]  # fmt: skip
        p_values.append(result.p_value)
    p = np.asarray(p_values)
    assert np.mean(p <= 0.1) <= 0.25
    assert p.min() > 1e-4


def test_selection_units_do_not_depend_on_the_order_of_the_records(
    digits: Any, demo_model: DemoModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the cap, the units kept are chosen by their public identifiers: records handed in
    marked-first give the same test as records in query order."""
    import modelshield.watermark._response as response

    victim = demo_model.estimator
    queries = shifted_digits(digits)
    records = list(
        uncertain_wm().select("alice", queries, outputs=victim.predict_proba(queries)).records
    )
    monkeypatch.setattr(response, "_MAX_SELECTION_UNITS", 25)
    kwargs: dict[str, Any] = {"classes": CLASSES, "input_shape": (64,), "scores": True}
    marked_first = sorted(records, key=lambda r: r.kind != "runner-up")
    in_order = trace(victim.predict_proba, {"alice": records}, **kwargs)[0]
    reordered = trace(victim.predict_proba, {"alice": marked_first}, **kwargs)[0]
    assert in_order == reordered
    assert in_order.trials < 25  # about a third of the 25 units kept are marked


def test_a_client_with_no_marked_unit_has_no_evidence(digits: Any, demo_model: DemoModel) -> None:
    victim = demo_model.estimator
    queries = shifted_digits(digits)
    records = uncertain_wm().select("alice", queries, outputs=victim.predict_proba(queries)).records
    controls = [r for r in records if r.kind == "control"]

    def against_runner_ups(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return -victim.predict_proba(x)  # logits that rank the runner-ups high everywhere

    for scores in (False, True):
        suspect = against_runner_ups if scores else victim.predict
        result = trace(
            suspect, {"alice": controls}, classes=CLASSES, input_shape=(64,), scores=scores
        )[0]
        assert result.trials == 0
        assert result.p_value == 1.0
        assert not result.verified


def test_records_refuse_what_the_audit_store_cannot_have_kept(
    digits: Any, demo_model: DemoModel
) -> None:
    queries = digits[:4]
    proba = demo_model.estimator.predict_proba(queries)
    wm = uncertain_wm()
    ok = {"outputs": proba, "labels": [0, 1, 2, 3], "kinds": ["control@0.3"] * 4}
    assert len(wm.records("alice", queries, **ok)) == 4
    bad: list[dict[str, Any]] = [
        {**ok, "labels": [0, 1, 2]},  # one label short
        {**ok, "kinds": ["control@0.3"] * 5},  # one kind too many
        {**ok, "labels": [0, 1, 2, "eleven"]},  # not a class
        {**ok, "kinds": ["control@0.3"] * 3 + ["runner-up@1.5"]},  # no such rate
        {**ok, "kinds": ["control@0.3"] * 3 + ["runner_up@0.3"]},  # no such kind
        {**ok, "kinds": ["control@0.3"] * 3 + ["control@"]},
        {**ok, "outputs": proba.argmax(1)},  # labels only: no runner-up to rebuild
    ]
    for kwargs in bad:
        with pytest.raises(InvalidInputError):
            wm.records("alice", queries, **kwargs)
