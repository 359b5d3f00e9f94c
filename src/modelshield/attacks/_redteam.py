"""``redteam.toml``: what the attack x defence matrix runs, and running it end to end."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelshield._files import load_npz
from modelshield.attacks._matrix import (
    Defence,
    MatrixResult,
    moved_pool,
    run_matrix,
    standard_defences,
)
from modelshield.attacks._registry import ATTACKS
from modelshield.attacks._result import Evaluation
from modelshield.errors import ConfigError
from modelshield.models import Predictor, load_model

DEFENCES = (
    "none", "rounding", "top1", "labels", "reverse_sigmoid", "noise", "budget", "detection",
    "watermark",
)  # fmt: skip


class RedteamConfig(BaseModel):
    """``[redteam]`` in ``redteam.toml`` (every field has a default: an empty file works)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "digits"
    data: str = "digits"
    pool: Literal["moved", "natural", "random"] = "moved"
    attacks: tuple[str, ...] = ("knockoff", "copycat", "jacobian", "active-uncertainty")
    defences: tuple[str, ...] = DEFENCES
    budgets: tuple[int, ...] = (250, 1000, 5000)
    budget_rows: int = Field(default=1000, ge=1)
    seed: int = 0


def load_redteam_config(path: Path | None) -> RedteamConfig:
    """Read ``redteam.toml`` (``None``: the defaults); names the file and field when bad."""
    if path is None:
        return RedteamConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        config = RedteamConfig.model_validate(raw.get("redteam", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: redteam.{where}: {first['msg']}") from None
    unknown = [a for a in config.attacks if a not in ATTACKS]
    if unknown:
        raise ConfigError(f"{path}: redteam.attacks: unknown {unknown}; choose from {ATTACKS}")
    bad = [d for d in config.defences if d not in DEFENCES]
    if bad:
        raise ConfigError(f"{path}: redteam.defences: unknown {bad}; choose from {DEFENCES}")
    return config


def _victim_and_data(config: RedteamConfig) -> tuple[Predictor, dict[str, Any]]:
    if config.model == "digits" or config.data == "digits":
        from modelshield.demo import load_demo_data, train_demo_model

        demo = load_demo_data(config.seed)
    victim = (
        load_model(train_demo_model(config.seed, demo).onnx_bytes)
        if config.model == "digits"
        else load_model(Path(config.model).read_bytes())
    )
    arrays: dict[str, Any]
    if config.data == "digits":
        arrays = {
            "pool": demo.x_train,
            "x_test": demo.x_test,
            "y_test": demo.y_test,
        }
    else:
        arrays = load_npz(config.data)
    return victim, arrays


def run_redteam(
    config: RedteamConfig,
    *,
    detection: Callable[[Predictor], Any] | None = None,
    watermark: Callable[[Predictor], Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> MatrixResult:
    """Run the configured matrix in process (the victim wrapped in ``Shield`` per defence)."""
    victim, arrays = _victim_and_data(config)
    x_pool = arrays.get("pool")
    image = None
    if len(victim.input_spec.shape) == 1:
        side = round(victim.input_spec.n_features**0.5)
        image = (side, side) if side * side == victim.input_spec.n_features else None
    pool = None
    if x_pool is not None and config.pool != "random":
        pool = (
            moved_pool(x_pool, image_shape=image, random_state=config.seed)
            if config.pool == "moved"
            else np.asarray(x_pool, dtype=np.float64)
        )
    x_test, y_test = arrays["x_test"], arrays.get("y_test")
    evaluation = Evaluation.from_predictor(victim, inputs=x_test, true_labels=y_test)
    # the first half of the held-out rows calibrates detection; honest clients send the rest
    half = len(x_test) // 2
    honest_x = np.asarray(x_test[half:])
    honest_y = np.asarray(y_test[half:] if y_test is not None else victim.predict(honest_x))
    defences: list[Defence] = [
        d
        for d in standard_defences(
            budget_rows=config.budget_rows, detection=detection, watermark=watermark
        )
        if d.name in config.defences
    ]
    return run_matrix(
        victim,
        attacks=config.attacks,
        defences=defences,
        budgets=config.budgets,
        pool=pool,
        evaluation=evaluation,
        honest_inputs=honest_x,
        honest_labels=honest_y,
        random_state=config.seed,
        progress=progress,
    )


def detection_factory_for(config: RedteamConfig) -> Callable[[Predictor], Any]:
    """Detection calibrated on the defender's honest data: ``reference`` in the data file, or
    for the digits demo the training split (the data the model was trained on)."""
    from modelshield.gateway._detection import detection_factory

    if config.data == "digits":
        from modelshield.demo import load_demo_data

        demo = load_demo_data(config.seed)
        reference, held_out = demo.x_train, demo.x_test
    else:
        npz = load_npz(config.data)
        if "reference" not in npz or "x_test" not in npz:
            raise ConfigError(
                f"{config.data}: the detection defence needs 'reference' and 'x_test' arrays"
            )
        reference, held_out = npz["reference"], npz["x_test"]
    calibration = held_out[: len(held_out) // 2]  # honest clients use the other half
    return detection_factory(reference, calibration, random_state=config.seed)
