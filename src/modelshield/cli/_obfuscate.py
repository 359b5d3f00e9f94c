"""``modelshield obfuscate``: rewrite a model so that it hides its architecture and weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelshield._files import load_npy, write_atomic
from modelshield.cli._app import console
from modelshield.errors import InvalidInputError


def _load_inputs(path: Path) -> object:
    return load_npy(path)


def obfuscate(
    model: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="ONNX model or torch.export archive."
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the obfuscated ONNX model.")
    ],
    level: Annotated[
        int,
        typer.Option(
            "--level",
            min=1,
            max=3,
            help="1 names and metadata, 2 weight transforms, 3 architecture padding.",
        ),
    ] = 2,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="Random seed (reproducible output).")
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            exists=True,
            dir_okay=False,
            help="Real rows (.npy) to check equivalence on, besides random ones.",
        ),
    ] = None,
    max_cost_ratio: Annotated[
        float,
        typer.Option("--max-cost", min=1.0, help="Level 3 budget: compute per row, x original."),
    ] = 4.0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Rewrite MODEL into an equivalent ONNX model that hides names, widths and weights.

    Every transform is checked against the original outputs; a model that fails is not written.
    """
    from modelshield.obfuscate import obfuscate as run_obfuscate

    if output.exists() and not force:
        raise InvalidInputError(f"{output} exists; pass --force to overwrite it")
    rows = _load_inputs(inputs) if inputs is not None else None
    result = run_obfuscate(
        model.read_bytes(),
        level=level,
        seed=seed,
        inputs=rows,  # type: ignore[arg-type]
        max_cost_ratio=max_cost_ratio,
    )
    write_atomic(output, result.model_bytes, overwrite=True)  # --force was checked above
    report = result.report
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    table = Table(title=f"obfuscated at level {report.level}: {output}", show_header=True)
    table.add_column("")
    table.add_column("before")
    table.add_column("after")
    before, after = report.before, report.after
    table.add_row("operators", str(before.n_nodes), str(after.n_nodes))
    table.add_row("linear layers", str(before.n_linear_layers), str(after.n_linear_layers))
    table.add_row("widths", str(list(before.widths)), str(list(after.widths)))
    table.add_row("parameters", str(before.n_parameters), str(after.n_parameters))
    table.add_row("producer", before.producer or "-", after.producer or "-")
    console.print(table)
    weights = report.weights
    match = (
        f"best weight cosine {weights.max_cosine:.3f}"
        if weights.comparable_pairs
        else "no layer of the original's input width left to compare"
    )
    console.print(
        f"equivalence: max abs diff {report.max_abs_diff:.3g} "
        f"(tolerance {report.tolerance:.0e}) on {report.n_verification_rows} rows, "
        f"top-1 {'identical' if report.top1_equal else 'CHANGED'}; "
        f"{match}; compute x{report.cost_ratio:.2f}"
    )


def register(app: typer.Typer) -> None:
    app.command("obfuscate")(obfuscate)
