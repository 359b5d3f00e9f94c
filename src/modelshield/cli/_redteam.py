"""``modelshield attack matrix``: every attack against every defence, with an HTML report."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelshield._files import write_atomic
from modelshield.cli._app import console, debug_enabled


def matrix(
    config: Annotated[
        Path | None, typer.Option("--config", help="redteam.toml (default: the digits demo).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for results.json and report.html.")
    ] = Path("redteam-report"),
) -> None:
    """Run attacks x defences x budgets; write results.json and an HTML report."""
    from modelshield.attacks._redteam import (
        detection_factory_for,
        load_redteam_config,
        run_redteam,
    )
    from modelshield.attacks._report import render_matrix_html
    from modelshield.gateway._detection import watermark_factory

    settings = load_redteam_config(config)
    total = len(settings.attacks) * len(settings.defences) * len(settings.budgets)
    # the attacks are meant to set off the detectors: their alerts are in the report, and would
    # only interleave with the progress bar here (--debug shows them)
    alerts = logging.getLogger("modelshield.alerts")
    with contextlib.ExitStack() as stack:
        if not debug_enabled():
            stack.callback(alerts.setLevel, alerts.level)
            alerts.setLevel(logging.ERROR)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        progress = stack.enter_context(Progress(*columns, TimeElapsedColumn(), console=console))
        task = progress.add_task("red team", total=total)
        wanted = set(settings.defences)
        result = run_redteam(
            settings,
            detection=detection_factory_for(settings) if "detection" in wanted else None,
            watermark=watermark_factory(random_state=settings.seed)
            if "watermark" in wanted
            else None,
            progress=lambda label: progress.update(task, advance=1, description=label),
        )
    out.mkdir(parents=True, exist_ok=True)
    results = json.dumps(result.to_dict(), indent=2).encode("utf-8")
    report = render_matrix_html(result).encode("utf-8")
    write_atomic(out / "results.json", results, mode=0o644, overwrite=True)
    write_atomic(out / "report.html", report, mode=0o644, overwrite=True)
    table = Table(title="fidelity of the stolen copy (lower is better)")
    table.add_column("attack")
    table.add_column("defence")
    for budget in settings.budgets:
        table.add_column(f"@{budget}", justify="right")
    for attack in settings.attacks:
        for defence in settings.defences:
            cells = []
            for budget in settings.budgets:
                run = next(
                    (r for r in result.runs
                     if (r.attack, r.defence, r.budget) == (attack, defence, budget)),
                    None,
                )  # fmt: skip
                cells.append("-" if run is None or run.fidelity is None else f"{run.fidelity:.2f}")
            table.add_row(attack, defence, *cells)
    console.print(table)
    benign = Table(title="benign cost")
    for column in ("defence", "honest accuracy", "top-1 kept"):
        benign.add_column(column)
    for b in result.benign:
        benign.add_row(b.defence, f"{b.accuracy:.3f}", f"{b.top1_kept:.4f}")
    console.print(benign)
    console.print(f"results: {out / 'results.json'}; report: {out / 'report.html'}")


def register(app: typer.Typer) -> None:
    from modelshield.cli._attack import attack_app

    attack_app.command("matrix")(matrix)
