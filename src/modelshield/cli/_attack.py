"""``modelshield attack run``: steal your own model with one extraction attack and measure it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelshield._files import check_output, load_npz, write_atomic
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

    if path is None:
        return None, None, None
    if str(path) == "digits":
        from modelshield.demo import load_demo_data

        data = load_demo_data()
        return data.x_train, data.x_test, data.y_test
    arrays = load_npz(path)
    if "x_test" not in arrays and "pool" not in arrays:
        raise ConfigError(f"{path}: expected arrays named 'pool' and/or 'x_test' (and 'y_test')")
    return arrays.get("pool"), arrays.get("x_test"), arrays.get("y_test")


def _open_model(path: Path, identity: Path | None) -> Any:
    from modelshield.models import load_model

    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model file ({exc.strerror})") from None
    if head == b"\x89MSEAL\r\n":
        from modelshield import vault

        if identity is None:
            raise ConfigError(f"{path} is sealed: give -i IDENTITY.key to open it")
        return vault.open_model(path, vault.load_identity(identity))
    return load_model(path.read_bytes())


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
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="MODELSHIELD_API_KEY", help="Client key for a URL target."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model name at a URL target (default: the only one)."),
    ] = None,
    victim: Annotated[
        Path | None,
        typer.Option("--victim", help="The model file behind a URL target, to measure fidelity."),
    ] = None,
    identity: Annotated[
        Path | None, typer.Option("-i", "--identity", help="Opens a sealed --target or --victim.")
    ] = None,
) -> None:
    """Run one extraction attack against a model file, a sealed model or a live gateway (URL)."""
    import orjson

    from modelshield.attacks import (
        ATTACKS,
        Evaluation,
        ObservedTarget,
        PredictorTarget,
        make_attack,
    )

    if json_out is not None:
        check_output(json_out)  # before the attack, not after it
    remote = target.startswith(("http://", "https://"))
    if remote and api_key is None:
        raise ConfigError("a URL target needs --api-key (or MODELSHIELD_API_KEY)")
    if labels not in (None, "soft", "hard"):
        raise ConfigError(f"--labels must be 'soft' or 'hard', not {labels!r}")
    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; choose one of: {', '.join(ATTACKS)}")
    http_target = None
    if remote:
        from modelshield.attacks import HttpTarget

        http_target = HttpTarget(target, api_key=str(api_key), model=model)
    local = victim if remote else Path(target)
    predictor = None if local is None else _open_model(local, identity)
    pool, x_test, y_test = _load_data(data)
    if predictor is None:
        assert http_target is not None
        if x_test is None:
            raise ConfigError("a URL target without --victim needs --data with x_test")
        from modelshield.attacks import RemoteVictim

        # the deployment's own labels on x_test, fetched once before the attack (costs rows)
        predictor = RemoteVictim(http_target, x_test)
    evaluation = (
        Evaluation.uniform(predictor, random_state=seed)
        if x_test is None
        else Evaluation.from_predictor(predictor, inputs=x_test, true_labels=y_test)
    )
    kind: LabelKind | None = None if labels is None else ("soft" if labels == "soft" else "hard")
    chosen = make_attack(attack, budget=budget, pool=pool, labels=kind, random_state=seed)
    inner = (
        http_target
        if http_target is not None
        else PredictorTarget(predictor, return_probabilities=not labels_only)
    )
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
        try:
            result = chosen.run(observed, evaluation=evaluation)
        finally:
            if http_target is not None:
                http_target.close()
    summary = result.to_dict()
    summary["target"] = target
    summary["evaluated_on"] = "uniform random rows" if x_test is None else "x_test"
    table = Table(title=f"{attack} against {target if remote else Path(target).name}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("outcome", "rows", "queries", "fidelity", "accuracy", "stopped_at_query"):
        value = summary[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table.add_row("seconds", f"{result.seconds:.2f}")
    console.print(table)
    console.print(f"[dim]{result.message}[/dim]")
    if json_out is not None:
        summary_bytes = orjson.dumps(summary, option=orjson.OPT_INDENT_2)
        write_atomic(json_out, summary_bytes, mode=0o644, overwrite=True)
        console.print(f"wrote {json_out}")


@attack_app.command("list")
def list_attacks() -> None:
    """List the attacks by name."""
    from modelshield.attacks import ATTACKS

    for name in ATTACKS:
        console.print(name)


def register(app: typer.Typer) -> None:
    app.add_typer(attack_app, name="attack")
