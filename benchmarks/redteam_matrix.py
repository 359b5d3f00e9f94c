"""The red team through HTTP: how much a Knockoff thief gets with and without the default profile.

Two deployments of the demo model, each created by ``modelshield init`` and served by the real
gateway on loopback: **undefended** (full probabilities, no budget, no detection, no watermark)
and **defended** (the profile ``init`` writes). A soft-label Knockoff thief (Orekondy et al. 2019)
with natural data moved to a related distribution (shifted, rescaled, noisy digits) and a budget
of 5,000 queries attacks each through ``HttpTarget``; fidelity is top-1 agreement with the victim
on the held-out split. An honest client then queries the defended deployment to measure what it
keeps: ``benign_top1_kept`` is over the answers the response watermark did not change on purpose,
``watermark_cost`` is the share it did change. The ART parity figures come from
``attack_parity.py`` (same run).

    python benchmarks/redteam_matrix.py [--quick]

Last line: JSON with fidelity_undefended, fidelity_defended, art_copycat_fidelity,
our_copycat_fidelity, benign_top1_kept, watermark_cost.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent


def attack_deployment(
    config_path: Path,
    budget: int,
    data: Any,
    victim: Any,
    labels: str = "soft",
    client: str = "thief",
) -> dict[str, Any]:
    from modelshield import access
    from modelshield.attacks import Evaluation, HttpTarget, KnockoffNets, moved_pool
    from modelshield.config import load_config
    from modelshield.gateway import ServerThread, build_app, open_gateway

    config = load_config(config_path)
    with access.open_registry(config.registry.url) as registry:
        _, key = registry.add(client, models=["digits"], tier="standard")
    gateway = open_gateway(config, random_state=0)
    pool = moved_pool(data.x_train, image_shape=(8, 8), random_state=0)
    evaluation = Evaluation.from_predictor(victim, inputs=data.x_test, true_labels=data.y_test)
    started = time.perf_counter()
    with (
        ServerThread(build_app(gateway)) as server,
        HttpTarget(server.url, api_key=key.reveal(), model="digits") as target,
    ):
        attack = KnockoffNets(budget=budget, pool=pool, labels=labels, random_state=0)  # type: ignore[arg-type]
        result = attack.run(target, evaluation=evaluation)
    return {
        "fidelity": result.fidelity,
        "rows": result.rows,
        "outcome": result.outcome,
        "stopped_at_row": result.stopped_at_row,
        "degraded_at_query": result.degraded_at_query,
        "seconds": round(time.perf_counter() - started, 1),
    }


def honest_client(config_path: Path, data: Any, victim: Any) -> tuple[float, float]:
    """(top-1 kept on unmarked answers, share of answers marked by the watermark)."""
    import httpx

    from modelshield import access
    from modelshield.config import load_config
    from modelshield.gateway import ServerThread, build_app, open_gateway

    config = load_config(config_path)
    with access.open_registry(config.registry.url) as registry:
        _, key = registry.add("honest", models=["digits"], tier="standard")
    gateway = open_gateway(config, random_state=0)
    marker = gateway.markers.get("digits")
    x = data.x_test[len(data.x_test) // 2 :]  # init calibrated detection on the first half
    labels: list[Any] = []
    with ServerThread(build_app(gateway)) as server:
        for start in range(0, len(x), 50):
            r = httpx.post(
                f"{server.url}/v1/models/digits/predict",
                json={"inputs": x[start : start + 50].tolist()},
                headers={"Authorization": f"Bearer {key.reveal()}"},
                timeout=30,
            )
            r.raise_for_status()
            labels.extend(r.json()["labels"])
    got = np.asarray(labels)
    truth = victim.predict(x)
    marked = np.zeros(len(x), dtype=bool)
    if marker is not None:
        rows, _ = marker.mark("honest", x, victim.predict_proba(x))
        marked[rows] = True
    kept = float(np.mean(got[~marked] == truth[~marked]))
    return kept, float(marked.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller budget (under a minute)")
    args = parser.parse_args()
    from modelshield.demo import load_demo_data, train_demo_model
    from modelshield.gateway import init_deployment
    from modelshield.gateway._init import strip_defences
    from modelshield.models import load_model

    budget = 1000 if args.quick else 5000
    data = load_demo_data()
    model = train_demo_model(0, data)
    victim = load_model(model.onnx_bytes)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ms-redteam-") as tmp:
        onnx = Path(tmp) / "digits.onnx"
        onnx.write_bytes(model.onnx_bytes)
        undefended = init_deployment(Path(tmp) / "undefended", onnx)
        strip_defences(undefended.config)
        # the defended deployment is exactly what `modelshield init` writes for the demo model
        defended = init_deployment(Path(tmp) / "defended")
        off = attack_deployment(undefended.config, budget, data, victim)
        on = attack_deployment(defended.config, budget, data, victim)
        hard = attack_deployment(defended.config, budget, data, victim, "hard", "thief2")
        print(f"undefended: {off}")
        print(f"defended:   {on}")
        print(f"defended, hard labels: {hard}")
        kept, cost = honest_client(defended.config, data, victim)
    figures["fidelity_undefended"] = off["fidelity"]
    figures["fidelity_defended"] = on["fidelity"]
    figures["defended_outcome"] = on["outcome"]
    figures["defended_stopped_at_row"] = on["stopped_at_row"]
    # the `labels` field is always exact, so a hard-label thief is held back by detection only
    figures["fidelity_defended_hard_labels"] = hard["fidelity"]
    figures["benign_top1_kept"] = round(kept, 4)
    figures["watermark_cost"] = round(cost, 4)
    parity = subprocess.run(
        [sys.executable, str(ROOT / "attack_parity.py"), "--quick"],
        capture_output=True, text=True, check=True, timeout=900,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    p = json.loads(parity)
    figures["art_copycat_fidelity"] = p["art_copycat_fidelity"]
    figures["our_copycat_fidelity"] = p["our_copycat_fidelity"]
    figures["budget"] = budget
    figures["ours_name"] = "Knockoff fidelity against the default profile"
    figures["peer_name"] = "Knockoff fidelity against the undefended deployment"
    figures["ours"] = figures["fidelity_defended"]
    figures["peer"] = figures["fidelity_undefended"]
    figures["ratio"] = round(float(on["fidelity"] or 0) / float(off["fidelity"] or 1), 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
