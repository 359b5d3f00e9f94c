from __future__ import annotations

import io
import operator
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from modelshield import UnsupportedModelError, load_model
from modelshield.models import SklearnPredictor, dump_sklearn, load_sklearn


@pytest.mark.parametrize(
    "estimator",
    [
        DecisionTreeClassifier(max_depth=4, random_state=0),
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
    ],
)
def test_other_estimators_round_trip(estimator: object) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    estimator.fit(x, y)  # type: ignore[attr-defined]
    predictor = load_model(dump_sklearn(estimator))
    assert predictor.classes == (0, 1)
    np.testing.assert_allclose(
        predictor.predict_proba(x[:20]),
        estimator.predict_proba(x[:20]),  # type: ignore[attr-defined]
    )


def test_untrusted_type_is_refused_before_loading() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    pipe = make_pipeline(
        FunctionTransformer(operator.neg), StandardScaler(), LogisticRegression()
    ).fit(x, y)
    data = dump_sklearn(pipe)
    with pytest.raises(UnsupportedModelError, match=r"untrusted types: _operator\.neg"):
        load_sklearn(data)


def test_explicitly_trusted_type_loads() -> None:
    import skops.io as sio

    x, y = load_breast_cancer(return_X_y=True)
    pipe = make_pipeline(
        FunctionTransformer(operator.neg), StandardScaler(), LogisticRegression()
    ).fit(x, y)
    data = dump_sklearn(pipe)
    extra = [t for t in sio.get_untrusted_types(data=data) if not t.startswith("sklearn.")]
    if not extra:
        pytest.fail("expected the pipeline to contain a non-sklearn type")
    assert isinstance(load_sklearn(data, trusted=extra), SklearnPredictor)


def test_metadata_entry_is_optional() -> None:
    import skops.io as sio

    x, y = load_breast_cancer(return_X_y=True)
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y)
    predictor = load_sklearn(sio.dumps(tree))
    assert predictor.input_spec.shape == (30,)
    assert predictor.input_spec.min_value is None


def test_not_a_classifier_is_unsupported() -> None:
    with pytest.raises(UnsupportedModelError):
        SklearnPredictor(StandardScaler().fit(np.eye(3)))


def test_corrupted_member_is_unsupported() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    data = dump_sklearn(DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y))
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, b"{not json" if name == "schema.json" else src.read(name))
    with pytest.raises(UnsupportedModelError):
        load_sklearn(buf.getvalue())
