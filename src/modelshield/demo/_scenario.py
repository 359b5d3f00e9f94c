"""The demo story, screen by screen. Each capability adds its chapter here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from modelshield._files import write_atomic
from modelshield.demo._model import DEMO_MODEL_NAME, DemoData, load_demo_data, train_demo_model
from modelshield.models import Predictor, load_model


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured, for tests and scripts."""

    test_accuracy: float
    onnx_accuracy: float
    files: tuple[Path, ...]
    seconds: float
    sealed_accuracy: float = 0.0
    gateway_statuses: dict[str, int] = field(default_factory=dict)
    audit_ok: bool = False
    backup_restored: bool = False
    fidelity_undefended: float = 0.0
    fidelity_defended: float = 0.0
    insider_traced: bool = False
    independent_traced: bool = False
    evidence_report: Path | None = None


def _chapter(console: Console, title: str) -> None:
    console.print()
    console.rule(f"[bold cyan]{title}")


def _predictions_table(predictor: Predictor, data: DemoData) -> Table:
    table = Table(title="a few predictions (model opened from the seal, in memory)")
    table.add_column("image #", justify="right")
    table.add_column("true", justify="center")
    table.add_column("predicted", justify="center")
    table.add_column("confidence", justify="right")
    proba = predictor.predict_proba(data.x_test[:6])
    for i, row in enumerate(proba):
        top = int(np.argmax(row))
        ok = "green" if predictor.classes[top] == data.y_test[i] else "red"
        table.add_row(
            str(i), str(data.y_test[i]), f"[{ok}]{predictor.classes[top]}[/{ok}]", f"{row[top]:.3f}"
        )
    return table


def _gateway_chapter(
    console: Console, workdir: Path, onnx_path: Path, data: DemoData
) -> tuple[dict[str, int], bool, Path, str, str]:
    import httpx

    from modelshield import access, audit
    from modelshield.config import load_config
    from modelshield.gateway import ServerThread, build_app, init_deployment, open_gateway
    from modelshield.stores import open_audit_store

    deployment = workdir / "deployment"
    report = init_deployment(deployment, onnx_path)
    config = load_config(report.config)
    console.print(
        f"`modelshield init` wrote {deployment.name}/: keys, the sealed model, shield.toml "
        "(SQLite registry and audit log, limits in memory)"
    )
    with access.open_registry(config.registry.url) as registry:
        _, alice_key = registry.add("alice", models=[report.model_name], tier="standard")
        _, trial_key = registry.add("trial-user", models=[report.model_name], tier="trial")
    statuses: dict[str, int] = {}
    gateway = open_gateway(config, random_state=0)
    with ServerThread(build_app(gateway)) as server:
        url = f"{server.url}/v1/models/{report.model_name}/predict"

        def call(key: str, rows: np.ndarray) -> httpx.Response:
            return httpx.post(
                url,
                json={"inputs": rows.tolist()},
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )

        r = call(alice_key.reveal(), data.x_test[:3])
        statuses["alice"] = r.status_code
        body = r.json()
        console.print(
            f"alice (standard tier) asks for 3 images -> [green]{r.status_code}[/green] "
            f"labels {body['labels']} (exact), scores hardened "
            "(reverse sigmoid, top 3, 2 decimals): "
            f"{[round(max(p), 2) for p in body['probabilities']]}"
        )
        r = call("msk_stolen0000_" + "x" * 49, data.x_test[:1])
        statuses["bad_key"] = r.status_code
        console.print(f"a made-up key -> [red]{r.status_code}[/red] {r.json()['error']['message']}")
        r = call(trial_key.reveal(), data.x_test[:50])
        r = call(trial_key.reveal(), data.x_test[50:100])
        r = call(trial_key.reveal(), data.x_test[100:101])
        statuses["over_budget"] = r.status_code
        console.print(
            f"trial-user sends 100 rows, then one more -> [red]{r.status_code}[/red] "
            f"{r.json()['error']['message']} (Retry-After {r.headers.get('Retry-After')} s): "
            "budgets count rows, not requests"
        )
    store = open_audit_store(config.audit.url)
    try:
        verdict = audit.verify(store, audit.audit_key_from_config(config))
    finally:
        store.close()
    console.print(
        f"audit log: {verdict.records_checked} chained records, "
        + ("[green]intact[/green]" if verdict.ok else f"[red]TAMPERED at {verdict.first_bad}[/red]")
        + " - every request above, accepted or refused, has its record"
    )
    return statuses, verdict.ok, report.config, report.model_name, alice_key.reveal()


def _backup_chapter(
    console: Console, workdir: Path, config: Path, model: str, api_key: str, data: DemoData
) -> bool:
    from modelshield.backup import backup_drill

    drill = backup_drill(
        config,
        workdir / "backups",
        workdir / "restored",
        api_key=api_key,
        model=model,
        rows=data.x_test[:3],
    )
    console.print(
        f"snapshot {drill.snapshot_id[:8]} ({drill.files} files; what was not sealed is sealed "
        "to the backup key; the manifest is signed), re-read and verified"
    )
    console.print(
        f"deleted {', '.join(p.name for p in drill.deleted)}; restored into restored/: audit log "
        f"{'[green]intact[/green]' if drill.audit_ok else '[red]TAMPERED[/red]'}, "
        f"the restored gateway answers {drill.served_status}"
    )
    return bool(drill.audit_ok and drill.served_status == 200)


def _steal(config_path: Path, client: str, data: DemoData, victim: Predictor, budget: int) -> Any:
    """A soft-label Knockoff thief with moved natural data, through the deployment's gateway."""
    from modelshield import access
    from modelshield.attacks import Evaluation, HttpTarget, KnockoffNets, moved_pool
    from modelshield.config import load_config
    from modelshield.gateway import ServerThread, build_app, open_gateway

    config = load_config(config_path)
    with access.open_registry(config.registry.url) as registry:
        _, key = registry.add(client, models=["digits"], tier="standard")
    pool = moved_pool(data.x_train, image_shape=(8, 8), random_state=1)
    evaluation = Evaluation.from_predictor(victim, inputs=data.x_test, true_labels=data.y_test)
    with (
        ServerThread(build_app(open_gateway(config, random_state=0))) as server,
        HttpTarget(server.url, api_key=key.reveal(), model="digits") as target,
    ):
        attack = KnockoffNets(budget=budget, pool=pool, labels="soft", random_state=0)
        return attack.run(target, evaluation=evaluation)


def _redteam_chapter(
    console: Console, workdir: Path, onnx_path: Path, defended: Path, data: DemoData
) -> tuple[float, float]:
    from modelshield.assess import assess
    from modelshield.config import load_config
    from modelshield.gateway import init_deployment
    from modelshield.gateway._init import strip_defences

    victim = load_model(onnx_path.read_bytes())
    undefended = init_deployment(workdir / "undefended", onnx_path).config
    strip_defences(undefended)
    table = Table(title="Knockoff thief, 1,000-query budget, through HTTP")
    for column in ("deployment", "rows obtained", "outcome", "fidelity of the copy", "risk"):
        table.add_column(column)
    fidelities = []
    for label, config_path in (("defences off", undefended), ("defences on", defended)):
        result = _steal(config_path, "thief", data, victim, budget=1000)
        risk = assess(load_config(config_path))
        fidelities.append(float(result.fidelity or 0.0))
        outcome = (
            f"blocked at row {result.stopped_at_row}"
            if result.outcome == "blocked"
            else result.outcome.replace("_", " ")
        )
        table.add_row(
            label,
            str(result.rows),
            outcome,
            f"{result.fidelity:.1%}",
            f"{risk.rating} ({risk.overall}/5)",
        )
    console.print(table)
    console.print(
        "with defences on, the thief's soft labels are deceptive (reverse sigmoid) and extraction "
        "detection blocks it when it sees it; `modelshield assess` scores the risk in OWASP terms"
    )
    return fidelities[0], fidelities[1]


def _proof_chapter(
    console: Console, workdir: Path, onnx_path: Path, config_path: Path, data: DemoData
) -> tuple[bool, bool, Path]:
    """Certify the model, let an insider collect answers, and trace the insider's copy."""
    from modelshield import access, evidence, vault
    from modelshield.config import load_config
    from modelshield.evidence._trace import audit_check, response_trace
    from modelshield.gateway import ServerThread, build_app, open_gateway

    # a partner tier whose detection only alerts (a customer the owner will not cut off), so that
    # the insider below is served to the end of the story and only the watermark can name them
    text = config_path.read_text(encoding="utf-8")
    if "[tiers.partner]" not in text:
        partner_alerts = 'action = "block"\nactions = { partner = "alert" }'
        text = text.replace('action = "block"', partner_alerts, 1)
        text += (
            "\n# A partner: a large budget, and detection that only alerts (added by the demo).\n"
            "[tiers.partner]\nrequests_per_second = 1000.0\nburst = 1000\nbudget_rows = 100000\n"
            'budget_period = "24h"\nmax_batch_rows = 100\noutput = ["top_k:3", "round:2"]\n'
        )
        config_path.write_text(text, encoding="utf-8")
    config = load_config(config_path)
    keys = config_path.parent / "keys"
    signing = vault.load_signing_key(keys / "owner.signing.key")
    wm_key = bytes.fromhex((keys / "response-watermark.key").read_text().strip())
    cert, openings = evidence.create_certificate(
        model=onnx_path,
        owner="Example Labs Ltd",
        signing_key=signing,
        sealed=config.models["digits"].path,
        secrets_to_commit={"response-watermark": wm_key},
        licence="Evaluation use only; no training of other models on the outputs.",
    )
    cert_path = workdir / "certificate.json"
    cert_path.write_bytes(evidence.dump_certificate(cert))
    console.print(f"certificate {cert_path.name}: signed by the owner key, model digest bound")
    # an insider with a partner's key stretches a small pool of natural digits the usual way
    # (each digit also shifted by one pixel, four times) and trains a copy on the answers
    import httpx
    from sklearn.neural_network import MLPClassifier

    from modelshield.attacks._knockoff import shift_images

    with access.open_registry(config.registry.url) as registry:
        _, key = registry.add("insider", models=["digits"], tier="partner")
    pool = data.x_test[len(data.x_test) // 2 :]  # natural, held-out digits
    shifted = [
        np.clip(shift_images(pool, image_shape=(8, 8), max_shift=1, random_state=i), 0.0, 1.0)
        for i in range(4)
    ]
    rows = np.concatenate([pool, *shifted])
    answers: list[Any] = []
    with ServerThread(build_app(open_gateway(config, random_state=0))) as server:
        for start in range(0, len(rows), 100):
            r = httpx.post(
                f"{server.url}/v1/models/digits/predict",
                json={"inputs": rows[start : start + 100].tolist()},
                headers={"Authorization": f"Bearer {key.reveal()}"},
                timeout=30,
            )
            if r.status_code != 200:
                break
            answers.extend(r.json()["labels"])
    n = len(answers)
    console.print(
        f"an insider with a partner's key sent {len(pool)} natural digits and 4 one-pixel shifts "
        f"of each ({n} answers) and trained a copy on them"
    )
    copy = MLPClassifier(hidden_layer_sizes=(128,), max_iter=2000, random_state=0)
    copy.fit(rows[:n], answers)  # trained to convergence on what the insider received
    independent = MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=7)
    independent.fit(data.x_train, data.y_train)
    victim = load_model(onnx_path.read_bytes())
    trace = response_trace(config, victim=victim)
    verdicts = {}
    for name, suspect in (("insider's copy", copy), ("independent model", independent)):
        # a model file exposes its probabilities: the trace reads them (as `watermark trace` does)
        results = trace(suspect.predict, suspect.predict_proba, suspect.classes_)
        top = results[0] if results else None
        verdicts[name] = bool(top is not None and top.verified)
        if top is None:
            console.print(f"{name}: no marked answers to test")
            continue
        console.print(
            f"{name}: best match client '{top.client_id}', its marked answers followed in "
            f"{top.matches}/{top.trials} marked cells, p = {top.p_value:.1e} -> "
            + ("[green]carries the watermark[/green]" if top.verified else "not shown to be ours")
        )
    console.print(
        "[dim](shifted digits are answers the model is unsure about, which carry the mark far more"
        " often; a copy trained on a few hundred natural digits alone carries too few marks to"
        " name anyone: docs/watermark.md)[/dim]"
    )
    report = evidence.gather_evidence(
        suspect="the insider's copy (a scikit-learn MLP file)",
        suspect_predict=copy.predict,
        certificate=cert,
        trusted_key=signing.verifying_key,
        openings=openings,
        classes=victim.classes,
        input_shape=victim.input_spec.shape,
        response_trace=lambda predict: trace(predict, copy.predict_proba, copy.classes_),
        audit_check=audit_check(config),
        commands=(
            f"modelshield certify --verify {cert_path} --trust keys/owner.signing.pub",
            f"modelshield watermark trace COPY --config {config_path}",
            f"modelshield audit verify --config {config_path}",
        ),
    )
    out = workdir / "evidence-report.html"
    out.write_text(evidence.render_evidence_html(report), encoding="utf-8")
    console.print(f"evidence report for a lawyer: {out}")
    return verdicts["insider's copy"], verdicts["independent model"], out


def run_demo(workdir: Path, console: Console | None = None, random_state: int = 0) -> DemoReport:
    """Run the scenario, writing its files into ``workdir`` and telling the story on ``console``."""
    from modelshield import vault

    console = console or Console()
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)

    console.print(
        Panel.fit(
            "[bold]modelshield demo[/bold]\n"
            "A model worth stealing: an MLP that reads handwritten digits.",
            border_style="cyan",
        )
    )
    _chapter(console, "1. the model")
    with console.status("training the demo model (scikit-learn MLP on load_digits)..."):
        data = load_demo_data(random_state)
        model = train_demo_model(random_state, data)
    skops_path = workdir / f"{DEMO_MODEL_NAME}.skops"
    onnx_path = workdir / f"{DEMO_MODEL_NAME}.onnx"
    write_atomic(skops_path, model.skops_bytes, overwrite=True)
    write_atomic(onnx_path, model.onnx_bytes, overwrite=True)
    console.print(
        f"trained [bold]{DEMO_MODEL_NAME}[/bold]: test accuracy "
        f"[bold green]{model.test_accuracy:.2%}[/bold green] on {len(data.y_test)} held-out images"
    )
    onnx_accuracy = float(np.mean(load_model(model.onnx_bytes).predict(data.x_test) == data.y_test))
    console.print(f"exported to ONNX (accuracy {onnx_accuracy:.2%}) and skops (no pickle)")

    _chapter(console, "2. sealed at rest: nobody walks off with the file")
    keys = workdir / "keys"
    keys.mkdir(exist_ok=True)
    server = vault.keygen(keys / "server")
    owner = vault.keygen(keys / "owner", signing=True)
    sealed = workdir / f"{DEMO_MODEL_NAME}.sealed"
    info = vault.seal(
        onnx_path,
        sealed,
        vault.load_recipient(server.public),
        signer=vault.load_signing_key(owner.private),
    )
    console.print(
        f"sealed {onnx_path.name} for the server key {server.key_id} and signed it with the "
        f"owner key {owner.key_id}: {sealed.name} ({info.file_size} bytes, AES-GCM streaming)"
    )
    predictor = vault.open_model(
        sealed,
        vault.load_identity(server.private),
        require_signer=vault.load_verifying_key(owner.public),
    )
    sealed_accuracy = float(np.mean(predictor.predict(data.x_test) == data.y_test))
    console.print(
        f"opened in memory only (signature checked): accuracy {sealed_accuracy:.2%}; "
        "without the server key the file is noise"
    )
    console.print(_predictions_table(predictor, data))

    _chapter(console, "3. the guarded gateway: every caller known, limited and audited")
    statuses, audit_ok, config_path, model_name, alice_key = _gateway_chapter(
        console, workdir, onnx_path, data
    )

    _chapter(console, "4. the red team: steal it through its own API")
    fidelity_off, fidelity_on = _redteam_chapter(console, workdir, onnx_path, config_path, data)

    _chapter(console, "5. proof: is a copy ours, and who leaked it?")
    insider_traced, independent_traced, evidence_path = _proof_chapter(
        console, workdir, onnx_path, config_path, data
    )

    _chapter(console, "6. backups: lose the model, get it back")
    restored = _backup_chapter(console, workdir, config_path, model_name, alice_key, data)

    seconds = time.perf_counter() - started
    console.print(f"\n[dim]demo finished in {seconds:.1f} s; files in {workdir}[/dim]")
    return DemoReport(
        test_accuracy=model.test_accuracy,
        onnx_accuracy=onnx_accuracy,
        files=(skops_path, onnx_path, sealed),
        seconds=seconds,
        sealed_accuracy=sealed_accuracy,
        gateway_statuses=statuses,
        audit_ok=audit_ok,
        backup_restored=restored,
        fidelity_undefended=fidelity_off,
        fidelity_defended=fidelity_on,
        insider_traced=insider_traced,
        independent_traced=independent_traced,
        evidence_report=evidence_path,
    )
