"""``modelshield assess``: score a deployment in OWASP ML05's terms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from modelshield.cli._app import console
from modelshield.errors import InvalidInputError


def assess_command(
    config: Annotated[Path, typer.Option("--config", help="The deployment's shield.toml.")] = Path(
        "shield.toml"
    ),
    redteam: Annotated[
        Path | None,
        typer.Option("--redteam", help="results.json from `modelshield attack matrix`."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the HTML report here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the assessment as JSON.")] = False,
) -> None:
    """Score exploitability, detectability and impact (1-5) with reasons and fixes."""
    from modelshield.assess import assess, render_html
    from modelshield.config import load_config

    results = None
    if redteam is not None:
        try:
            results = json.loads(redteam.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{redteam}: not a red-team results file ({exc})") from None
    assessment = assess(load_config(config), results)
    if as_json:
        console.print_json(json.dumps(assessment.to_dict()))
    else:
        scores = Table(
            title=f"OWASP ML05 model theft risk: {assessment.rating} ({assessment.overall})"
        )
        scores.add_column("factor")
        scores.add_column("score (1-5)", justify="right")
        for name, value in (
            ("exploitability", assessment.exploitability),
            ("detectability", assessment.detectability),
            ("technical impact", assessment.impact),
        ):
            scores.add_row(name, str(value))
        console.print(scores)
        findings = Table(title="findings", show_lines=True)
        for column in ("factor", "weight", "finding", "what to change"):
            findings.add_column(column)
        for f in assessment.findings:
            findings.add_row(
                f.factor,
                f"{f.weight:+d}",
                f"{escape(f.title)}\n[dim]{escape(f.reason)}[/dim]",
                escape(f.fix),
            )
        console.print(findings)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(render_html(assessment), encoding="utf-8")
        tmp.replace(out)
        console.print(f"HTML report: {out}")


def register(app: typer.Typer) -> None:
    app.command("assess")(assess_command)
