"""``modelshield attack run``: steal your own model with one extraction attack and measure it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelshield.cli._app import console
from modelshield.errors import ConfigError

if TYPE_CHECKING:
    from modelshield.attacks import LabelKind

attack_app = typer.Typer(
    name="attack",
    help="Extraction attacks against your own model (the red team).",
    no_args_is_help=True,
)


def _load_data(path: Path | None) -> tuple[Any, Any, Any]:
    """(pool, x_test, y_test) from ``digits`` (the demo split) or an .npz file."""
    import numpy as np

    if path is None:
        return None, None, None
    if str(path) == "digits":
        from modelshield.demo import load_demo_data

        data = load_demo_data()
        return data.x_train, data.x_test, data.y_test
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the data file ({exc})") from None
    if "x_test" not in arrays and "pool" not in arrays:
        raise ConfigError(f"{path}: expected arrays named 'pool' and/or 'x_test' (and 'y_test')")
    return arrays.get("pool"), arrays.get("x_test"), arrays.get("y_test")


@attack_app.command("run")
def run(
    target: Annotated[
        str, typer.Option("--target", help="Model file to attack (ONNX, skops or torch.export).")
    ],
    attack: Annotated[
        str, typer.Option("--attack", help="Attack name (see: modelshield attack list).")
    ] = "knockoff",
    budget: Annotated[int, typer.Option("--budget", min=1, help="Query budget in rows.")] = 1000,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="'digits', or an .npz with 'pool' (attacker's natural data), 'x_test', 'y_test'.",
        ),
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="'soft' or 'hard' (default: the attack's).")
    ] = None,
    labels_only: Annotated[
        bool, typer.Option("--labels-only", help="The target answers labels, no scores.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON here.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the attack.")] = 0,
) -> None:
    """Run one extraction attack against a model file and report the copy's fidelity."""
    import orjson

    from modelshield.attacks import (
        ATTACKS,
        Evaluation,
        ObservedTarget,
        PredictorTarget,
        make_attack,
    )
    from modelshield.models import load_model

    if target.startswith(("http://", "https://")):
        raise ConfigError("HTTP targets are not supported yet: pass a model file")
    if labels not in (None, "soft", "hard"):
        raise ConfigError(f"--labels must be 'soft' or 'hard', not {labels!r}")
    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; choose one of: {', '.join(ATTACKS)}")
    try:
        model_bytes = Path(target).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{target}: cannot read the model file ({exc.strerror})") from None
    predictor = load_model(model_bytes)
    pool, x_test, y_test = _load_data(data)
    evaluation = (
        Evaluation.uniform(predictor, random_state=seed)
        if x_test is None
        else Evaluation.from_predictor(predictor, inputs=x_test, true_labels=y_test)
    )
    kind: LabelKind | None = None if labels is None else ("soft" if labels == "soft" else "hard")
    chosen = make_attack(attack, budget=budget, pool=pool, labels=kind, random_state=seed)
    inner = PredictorTarget(predictor, return_probabilities=not labels_only)
    with Progress(
        TextColumn(f"[bold]{attack}[/bold] rows"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("attack", total=budget)
        observed = ObservedTarget(
            inner, observer=lambda x, answer: progress.advance(task, answer.n_rows)
        )
        result = chosen.run(observed, evaluation=evaluation)
    summary = result.to_dict()
    summary["target"] = target
    summary["evaluated_on"] = "uniform random rows" if x_test is None else "x_test"
    table = Table(title=f"{attack} against {Path(target).name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("outcome", "rows", "queries", "fidelity", "accuracy", "stopped_at_query"):
        value = summary[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("seconds", f"{result.seconds:.2f}")
    console.print(table)
    console.print(f"[dim]{result.message}[/dim]")
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        console.print(f"wrote {json_out}")


@attack_app.command("list")
def list_attacks() -> None:
    """List the attacks by name."""
    from modelshield.attacks import ATTACKS

    for name in ATTACKS:
        console.print(name)


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")
