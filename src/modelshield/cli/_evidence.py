"""``modelshield evidence`` and ``modelshield watermark trace``: is the suspect ours, who leaked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modelshield._files import write_atomic
from modelshield.cli._app import console
from modelshield.cli._watermark import is_url, open_suspect
from modelshield.errors import ConfigError, IntegrityError


def evidence(
    suspect: Annotated[str, typer.Argument(help="The suspect: a model file or a gateway URL.")],
    certificate: Annotated[Path, typer.Option("--certificate", help="The ownership certificate.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML report to write.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="shield.toml: trace the response watermark.")
    ] = None,
    trust: Annotated[
        Path | None,
        typer.Option("--trust", help="OWNER.signing.pub (default: the config's require_signer)."),
    ] = None,
    openings: Annotated[
        Path | None, typer.Option("--openings", help="The sealed commitment openings.")
    ] = None,
    identity: Annotated[
        Path | None, typer.Option("-i", "--identity", help="Opens --openings.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="MODELSHIELD_API_KEY", help="For a URL.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name at a URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the report as JSON.")] = False,
) -> None:
    """Verify the certificate, run every watermark test on the suspect, name the leaking client."""
    import sys

    from modelshield import evidence as ev
    from modelshield import vault
    from modelshield.config import load_config
    from modelshield.evidence._trace import audit_check, response_trace

    settings = None if config is None else load_config(config)
    if trust is None and settings is not None:
        trust = next((m.require_signer for m in settings.models.values() if m.require_signer), None)
    if trust is None:
        raise ConfigError("give --trust OWNER.signing.pub (or a --config with require_signer)")
    cert = ev.load_certificate(certificate)
    opened: list[Any] = []
    if openings is not None:
        if identity is None:
            raise ConfigError("--openings needs -i IDENTITY.key to open them")
        opened = ev.load_openings(vault.unseal_bytes(openings, vault.load_identity(identity)))
    predict, spec_holder, description = open_suspect(suspect, api_key, model)
    spec = spec_holder.input_spec
    digest = None if is_url(suspect) else ev.file_sha256(Path(suspect))
    certified = (cert.get("body") or {}).get("model") or {}
    # the form that also compares the file, when the suspect is the certified file
    checked = f" {suspect}" if digest is not None and digest == certified.get("sha256") else ""
    commands = [
        "modelshield " + " ".join(a if " " not in a else repr(a) for a in sys.argv[1:]),
        f"modelshield certify --verify {certificate} --trust {trust}{checked}",
    ]
    if settings is not None:
        commands.append(f"modelshield watermark trace {suspect} --config {config}")
        commands.append(f"modelshield audit verify --config {config}")
    with console.status("running the verifications..."):
        report = ev.gather_evidence(
            suspect=description,
            suspect_predict=predict,
            certificate=cert,
            trusted_key=vault.load_verifying_key(trust),
            openings=opened,
            classes=spec_holder.classes,
            input_shape=spec.shape,
            input_range=(
                0.0 if spec.min_value is None else spec.min_value,
                1.0 if spec.max_value is None else spec.max_value,
            ),
            response_trace=None
            if settings is None
            else _with_scores(response_trace(settings), suspect, spec_holder),
            audit_check=None if settings is None else audit_check(settings),
            commands=commands,
            suspect_sha256=digest,
        )
    write_atomic(
        output, ev.render_evidence_html(report).encode("utf-8"), mode=0o644, overwrite=True
    )
    console.print(ev.plain_summary(report))
    console.print(f"report: {output}")
    if as_json:
        console.print_json(json.dumps(report.to_dict(), default=str))
    if not report.certificate_ok:  # the report says so too; a script must not read success
        raise IntegrityError(f"the certificate does not verify ({report.certificate_detail})")


def suspect_scores(suspect: str, holder: Any) -> tuple[Any, Any]:
    """A model-file suspect's ``predict_proba`` and classes; ``(None, None)`` for a URL (a
    gateway's tier may round, truncate or withhold probabilities: its labels are traced)."""
    if is_url(suspect):
        return None, None
    return holder.predict_proba, holder.classes


def _with_scores(run: Any, suspect: str, holder: Any) -> Any:
    proba, proba_classes = suspect_scores(suspect, holder)

    def traced(predict: Any) -> Any:
        return run(predict, proba, proba_classes)

    return traced


def trace_command(
    suspect: Annotated[str, typer.Argument(help="The suspect: a model file or a gateway URL.")],
    config: Annotated[Path, typer.Option("--config", help="The deployment's shield.toml.")] = Path(
        "shield.toml"
    ),
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="MODELSHIELD_API_KEY", help="For a URL.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name at a URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which client's response watermark does the suspect carry?"""
    from modelshield.config import load_config
    from modelshield.evidence._trace import response_trace

    predict, holder, _ = open_suspect(suspect, api_key, model)
    proba, proba_classes = suspect_scores(suspect, holder)
    results = response_trace(load_config(config))(predict, proba, proba_classes)
    if as_json:
        console.print_json(json.dumps([r.to_dict() for r in results]))
        return
    table = Table(title="response watermark trace (most significant first)")
    for column in ("client", "matches / trials", "chance", "p-value", "verdict"):
        table.add_column(column)
    for r in results:
        table.add_row(
            str(r.client_id), f"{r.matches} / {r.trials}", f"{r.chance_rate:.3f}",
            f"{r.p_value:.2e}", "[green]carries it[/green]" if r.verified else "no",
        )  # fmt: skip
    console.print(table)


def register(app: typer.Typer) -> None:
    from modelshield.cli._watermark import watermark_app

    app.command("evidence")(evidence)
    watermark_app.command("trace")(trace_command)
