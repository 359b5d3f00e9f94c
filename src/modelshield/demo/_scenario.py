"""The demo story, screen by screen. Each capability adds its chapter here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from modelshield.demo._model import DEMO_MODEL_NAME, load_demo_data, train_demo_model
from modelshield.models import load_model


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured, for tests and scripts."""

    test_accuracy: float
    onnx_accuracy: float
    files: tuple[Path, ...]
    seconds: float


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = tmp.open("wb")
    try:
        tmp.chmod(0o600)
        fd.write(data)
    finally:
        fd.close()
    tmp.replace(path)


def run_demo(workdir: Path, console: Console | None = None, random_state: int = 0) -> DemoReport:
    """Run the scenario, writing its files into ``workdir`` and telling the story on ``console``."""
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
    with console.status("training the demo model (scikit-learn MLP on load_digits)..."):
        data = load_demo_data(random_state)
        model = train_demo_model(random_state, data)
    skops_path = workdir / f"{DEMO_MODEL_NAME}.skops"
    onnx_path = workdir / f"{DEMO_MODEL_NAME}.onnx"
    _write_private(skops_path, model.skops_bytes)
    _write_private(onnx_path, model.onnx_bytes)
    console.print(
        f"1. trained [bold]{DEMO_MODEL_NAME}[/bold]: test accuracy "
        f"[bold green]{model.test_accuracy:.2%}[/bold green] on {len(data.y_test)} held-out images"
    )
    console.print(f"   saved {skops_path.name} (skops, no pickle) and {onnx_path.name} (ONNX)")

    predictor = load_model(model.onnx_bytes)
    onnx_labels = predictor.predict(data.x_test)
    onnx_accuracy = float(np.mean(onnx_labels == data.y_test))
    console.print(
        f"2. loaded the ONNX file from memory with ONNX Runtime: accuracy {onnx_accuracy:.2%}"
    )

    table = Table(title="a few predictions", show_lines=False)
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
    console.print(table)
    seconds = time.perf_counter() - started
    console.print(f"[dim]demo finished in {seconds:.1f} s; files in {workdir}[/dim]")
    return DemoReport(
        test_accuracy=model.test_accuracy,
        onnx_accuracy=onnx_accuracy,
        files=(skops_path, onnx_path),
        seconds=seconds,
    )
