"""Copycat / Knockoff parity with ART on the digits demo model (issue 6).

Same victim (the demo MLP), same natural query pool (the digits training split), same budget, same
label type, same thief architecture (64 hidden ReLU units): ART's ``CopycatCNN`` (hard labels)
and ``KnockoffNets`` (random strategy, probabilities) with a ``PyTorchClassifier`` thief against
modelshield's ``Copycat`` and ``KnockoffNets`` with the default numpy MLP thief. Fidelity is
top-1 agreement with the victim on the held-out split, averaged over seeds. Goal: ours within 2
points of ART's, or better.

    python benchmarks/attack_parity.py [--quick]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import numpy as np


def art_fidelity(
    data: Any, model: Any, *, budget: int, soft: bool, seed: int, epochs: int
) -> float:
    import torch
    from art.attacks.extraction import CopycatCNN, KnockoffNets
    from art.estimators.classification import PyTorchClassifier, SklearnClassifier

    torch.manual_seed(seed)
    victim = SklearnClassifier(model=model.estimator, clip_values=(0.0, 1.0))
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    thief = PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
        input_shape=(64,),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    common = {
        "classifier": victim,
        "batch_size_fit": 64,
        "batch_size_query": 100,
        "nb_epochs": epochs,
        "nb_stolen": budget,
        "use_probability": soft,
    }
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # ART shuffles and samples with the global numpy generator
    if soft:
        # Knockoff's random strategy draws the budget from the whole pool itself
        attack: Any = KnockoffNets(**common, sampling_strategy="random")
        pool = data.x_train
    else:
        attack = CopycatCNN(**common)
        pool = data.x_train[rng.choice(len(data.x_train), size=budget, replace=False)]
    stolen = attack.extract(pool, thieved_classifier=thief)
    victim_labels = model.estimator.predict(data.x_test)
    return float(np.mean(np.argmax(stolen.predict(data.x_test), axis=1) == victim_labels))


def our_fidelity(data: Any, model: Any, *, budget: int, soft: bool, seed: int) -> float:
    from modelshield.attacks import Copycat, Evaluation, KnockoffNets, PredictorTarget
    from modelshield.models import load_model

    predictor = load_model(model.onnx_bytes)
    evaluation = Evaluation.from_predictor(predictor, inputs=data.x_test)
    cls = KnockoffNets if soft else Copycat
    attack = cls(budget=budget, pool=data.x_train, random_state=seed)
    result = attack.run(PredictorTarget(predictor), evaluation=evaluation)
    assert result.rows == budget
    assert result.fidelity is not None
    return result.fidelity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one budget, two seeds")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # a fair, quiet comparison on a shared 2-core machine
    warnings.filterwarnings("ignore")  # ART's own deprecation chatter
    from modelshield.demo import load_demo_data, train_demo_model

    data = load_demo_data(0)
    model = train_demo_model(0, data)
    budgets = (500,) if args.quick else (250, 500, 1000)
    seeds = (0, 1) if args.quick else (0, 1, 2, 3, 4)
    figures: dict[str, Any] = {}
    for label in ("hard", "soft"):
        for budget in budgets:
            ours, art = [], []
            started = time.perf_counter()
            for seed in seeds:
                soft = label == "soft"
                ours.append(our_fidelity(data, model, budget=budget, soft=soft, seed=seed))
                art.append(
                    art_fidelity(data, model, budget=budget, soft=soft, seed=seed, epochs=50)
                )
            o, a = float(np.mean(ours)), float(np.mean(art))
            print(
                f"{label:4s} labels  budget {budget:5d}: ours {o:.4f}  ART {a:.4f}  "
                f"diff {o - a:+.4f}  ({time.perf_counter() - started:.1f} s)"
            )
            figures[f"{label}_{budget}"] = {"ours": o, "art": a}
    key = "hard_500"
    ours_cc, art_cc = figures[key]["ours"], figures[key]["art"]
    ours_ko, art_ko = figures["soft_500"]["ours"], figures["soft_500"]["art"]
    print(
        json.dumps(
            {
                "ours_name": "modelshield Copycat (numpy MLP thief)",
                "peer_name": "ART 1.20 CopycatCNN / KnockoffNets (PyTorchClassifier thief)",
                "budget": 500,
                "seeds": len(seeds),
                "ours": round(ours_cc, 4),
                "peer": round(art_cc, 4),
                "ratio": round(ours_cc / art_cc, 4),
                "art_copycat_fidelity": round(art_cc, 4),
                "our_copycat_fidelity": round(ours_cc, 4),
                "art_knockoff_fidelity": round(art_ko, 4),
                "our_knockoff_fidelity": round(ours_ko, 4),
                "within_2_points": all(f["ours"] >= f["art"] - 0.02 for f in figures.values()),
                "all": figures,
            }
        )
    )


if __name__ == "__main__":
    main()
