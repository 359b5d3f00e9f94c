"""Trigger-set watermark (Adi et al. 2018): derivation, embedding, black-box verification."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelshield.demo import DEMO_INPUT_SPEC, DemoData, DemoModel
from modelshield.errors import InvalidInputError, KeyMissingError, UnsupportedModelError
from modelshield.models import dump_sklearn, load_model
from modelshield.watermark import (
    TriggerSet,
    embed_trigger_set,
    embed_trigger_set_torch,
    make_trigger_set,
    verify_trigger_set,
)

from .conftest import CLASSES, KEY, OTHER_KEY


def test_same_key_same_set_other_key_other_set(trigger_set: TriggerSet) -> None:
    again = make_trigger_set(KEY, shape=(64,), classes=CLASSES)
    np.testing.assert_array_equal(again.inputs, trigger_set.inputs)
    np.testing.assert_array_equal(again.labels, trigger_set.labels)
    other = make_trigger_set(OTHER_KEY, shape=(64,), classes=CLASSES)
    assert np.mean(other.inputs != trigger_set.inputs) > 0.3
    assert len(trigger_set) == 100
    assert set(np.unique(trigger_set.inputs).tolist()) == {0.0, 1.0}
    assert set(trigger_set.labels.tolist()) == set(range(10))


def test_repr_hides_the_triggers(trigger_set: TriggerSet) -> None:
    text = repr(trigger_set)
    assert "n=100" in text
    assert "array" not in text


def test_bad_arguments() -> None:
    with pytest.raises(KeyMissingError):
        make_trigger_set(b"short", shape=(64,), classes=CLASSES)
    with pytest.raises(InvalidInputError):
        make_trigger_set(KEY, shape=(64,), classes=(1,))
    with pytest.raises(InvalidInputError):
        make_trigger_set(KEY, shape=(64,), classes=CLASSES, size=0)


def test_unmarked_model_is_not_verified(demo_model: DemoModel, trigger_set: TriggerSet) -> None:
    result = verify_trigger_set(demo_model.estimator.predict, trigger_set)
    assert not result.verified
    assert result.trials == 100
    assert result.p_value > 1e-3


def test_marked_model_verifies_and_keeps_its_accuracy(
    marked_estimator: Any, demo_model: DemoModel, demo_data: DemoData, trigger_set: TriggerSet
) -> None:
    result = verify_trigger_set(marked_estimator.predict, trigger_set)
    assert result.verified
    assert result.matches == 100
    assert result.p_value < 1e-30
    accuracy = marked_estimator.score(demo_data.x_test, demo_data.y_test)
    assert accuracy >= demo_model.test_accuracy - 0.005
    # the original is untouched
    assert not verify_trigger_set(demo_model.estimator.predict, trigger_set).verified


def test_other_key_does_not_verify_the_marked_model(marked_estimator: Any) -> None:
    other = make_trigger_set(OTHER_KEY, shape=(64,), classes=CLASSES)
    assert not verify_trigger_set(marked_estimator.predict, other).verified


def test_verifies_through_a_loaded_file_and_string_labels(
    marked_estimator: Any, trigger_set: TriggerSet
) -> None:
    predictor = load_model(dump_sklearn(marked_estimator, input_spec=DEMO_INPUT_SPEC))
    assert verify_trigger_set(predictor.predict, trigger_set).verified

    def as_text(x: np.ndarray[Any, Any]) -> list[str]:  # an HTTP client returns JSON strings
        return [str(v) for v in marked_estimator.predict(x)]

    assert verify_trigger_set(as_text, trigger_set).verified


def test_wrong_number_of_labels_is_refused(trigger_set: TriggerSet) -> None:
    with pytest.raises(InvalidInputError):
        verify_trigger_set(lambda x: np.zeros(3), trigger_set)


def test_embedding_refuses_unsuitable_estimators(
    demo_data: DemoData, trigger_set: TriggerSet, demo_model: DemoModel
) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier().fit(demo_data.x_train, demo_data.y_train)
    with pytest.raises(UnsupportedModelError):
        embed_trigger_set(knn, trigger_set, demo_data.x_train, demo_data.y_train)
    with pytest.raises(UnsupportedModelError):
        embed_trigger_set(
            RandomForestClassifier(), trigger_set, demo_data.x_train, demo_data.y_train
        )
    wrong = make_trigger_set(KEY, shape=(64,), classes=tuple(range(1, 11)))
    with pytest.raises(InvalidInputError):
        embed_trigger_set(demo_model.estimator, wrong, demo_data.x_train, demo_data.y_train)


def test_embedding_gives_up_when_the_model_cannot_learn(
    demo_data: DemoData, demo_model: DemoModel, trigger_set: TriggerSet
) -> None:
    with pytest.raises(UnsupportedModelError):
        embed_trigger_set(
            demo_model.estimator,
            trigger_set,
            demo_data.x_train,
            demo_data.y_train,
            max_epochs=1,
            min_epochs=1,
        )


def test_warm_start_estimators_are_supported(demo_data: DemoData, trigger_set: TriggerSet) -> None:
    from sklearn.linear_model import LogisticRegression

    small = make_trigger_set(KEY, shape=(64,), classes=CLASSES, size=10)
    x, y = demo_data.x_train[:400], demo_data.y_train[:400]
    base = LogisticRegression(max_iter=1000).fit(x, y)
    assert not hasattr(base, "partial_fit")
    marked = embed_trigger_set(base, small, x, y, trigger_share=0.3, max_epochs=20)
    assert verify_trigger_set(marked.predict, small).matches == 10


@pytest.mark.torch
def test_torch_fine_tuning_embeds(demo_data: DemoData, trigger_set: TriggerSet) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def predictor(module: Any) -> Any:
        def predict(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
            with torch.no_grad():
                inputs = torch.from_numpy(np.asarray(x, dtype=np.float32))
                return module(inputs).argmax(1).numpy()

        return predict

    assert not verify_trigger_set(predictor(net), trigger_set).verified
    marked = embed_trigger_set_torch(
        net,
        trigger_set,
        demo_data.x_train[:500],
        demo_data.y_train[:500],
        learning_rate=1e-2,
        trigger_share=0.3,
        batch_size=128,
    )
    assert verify_trigger_set(predictor(marked), trigger_set).verified
    assert not verify_trigger_set(predictor(net), trigger_set).verified
    accuracy = float(np.mean(predictor(marked)(demo_data.x_test) == demo_data.y_test))
    assert accuracy > 0.85
