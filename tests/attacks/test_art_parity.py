"""Parity with ART (test-only dependency): our Copycat and Knockoff within 2 points of ART's."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from modelshield.attacks import Copycat, KnockoffNets, PredictorTarget


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_fidelity_matches_art(digits: Any, demo_data: Any, labels: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("art")
    from art.attacks.extraction import CopycatCNN
    from art.attacks.extraction import KnockoffNets as ArtKnockoff
    from art.estimators.classification import PyTorchClassifier, SklearnClassifier

    budget = 400
    torch.manual_seed(0)
    np.random.seed(0)  # ART shuffles with numpy's global generator
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    thief = PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
        input_shape=(64,),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    victim = SklearnClassifier(model=digits.estimator, clip_values=(0.0, 1.0))
    common: dict[str, Any] = {
        "classifier": victim,
        "batch_size_fit": 64,
        "batch_size_query": 100,
        "nb_epochs": 50,
        "nb_stolen": budget,
        "use_probability": labels == "soft",
    }
    if labels == "soft":
        attack: Any = ArtKnockoff(**common, sampling_strategy="random")
        pool = demo_data.x_train  # Knockoff's random strategy samples the budget itself
    else:
        attack = CopycatCNN(**common)
        pool = demo_data.x_train[np.random.default_rng(0).choice(len(demo_data.x_train), budget)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: more threads only thrash on a shared machine
    try:
        with warnings.catch_warnings():
            # ART's own deprecation notices are not under test here
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            stolen = attack.extract(pool, thieved_classifier=thief)
    finally:
        torch.set_num_threads(threads)
    art_fidelity = float(
        np.mean(
            np.argmax(stolen.predict(demo_data.x_test), axis=1) == digits.evaluation.victim_labels
        )
    )
    cls = KnockoffNets if labels == "soft" else Copycat
    ours = cls(budget=budget, pool=digits.pool, random_state=0).run(
        PredictorTarget(digits.predictor), evaluation=digits.evaluation
    )
    assert ours.rows == budget
    assert ours.fidelity is not None
    assert art_fidelity > 0.8  # the peer really ran
    assert ours.fidelity >= art_fidelity - 0.02
