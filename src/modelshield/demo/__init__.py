"""The bundled end-to-end scenario on a small model (stable: names; the story grows).

:func:`train_demo_model` trains the digits MLP used throughout the docs and tests;
:func:`run_demo` tells the whole story on the terminal.
"""

from __future__ import annotations

from modelshield.demo._model import (
    DEMO_INPUT_SPEC,
    DEMO_MODEL_NAME,
    DemoData,
    DemoModel,
    load_demo_data,
    to_onnx,
    train_demo_model,
)
from modelshield.demo._scenario import DemoReport, run_demo

__all__ = [
    "DEMO_INPUT_SPEC",
    "DEMO_MODEL_NAME",
    "DemoData",
    "DemoModel",
    "DemoReport",
    "load_demo_data",
    "run_demo",
    "to_onnx",
    "train_demo_model",
]
