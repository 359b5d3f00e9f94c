"""``modelshield watermark``: keys, embedding and verification of watermarks in model files.

A watermark key file holds exactly 32 random bytes (written 0600). ``embed`` reads a skops
(scikit-learn) or torch.export model file, embeds a trigger set (``--scheme trigger-set``) or, for
torch, a weight watermark (``--scheme weights``), and writes the marked model; ``verify`` checks a
suspect (a model file, or a gateway URL for the black-box trigger-set scheme) and prints the verdict
(exit code 0 either way: read ``verified``).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from modelshield._files import load_npz, write_atomic
from modelshield.cli._app import console
from modelshield.errors import (
    ConfigError,
    InvalidInputError,
    KeyMissingError,
    UnsupportedModelError,
)

watermark_app = typer.Typer(
    name="watermark",
    help="Embed and verify ownership watermarks in model files.",
    no_args_is_help=True,
)


class Scheme(StrEnum):
    trigger_set = "trigger-set"
    weights = "weights"


def _write_atomic(path: Path, data: bytes, *, mode: int, force: bool = False) -> None:
    if path.exists() and not force:
        raise InvalidInputError(f"{path} exists; refusing to overwrite it (use --force)")
    write_atomic(path, data, overwrite=True, mode=mode)


def _read_key(path: Path) -> bytes:
    from modelshield.watermark import KEY_BYTES

    try:
        key = path.read_bytes()
    except OSError as exc:
        raise KeyMissingError(
            f"cannot read the watermark key file {path}: {exc.strerror}"
        ) from None
    if len(key) != KEY_BYTES:
        raise KeyMissingError(f"{path} is not a watermark key file ({KEY_BYTES} bytes expected)")
    return key


def _read_model(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UnsupportedModelError(f"cannot read the model file {path}: {exc.strerror}") from None


def is_url(suspect: str) -> bool:
    return suspect.startswith(("http://", "https://"))


def open_suspect(suspect: str, api_key: str | None, model: str | None) -> tuple[Any, Any, str]:
    """A suspect model file or gateway URL as (predict function, holder of ``input_spec`` and
    ``classes``, description); a URL is queried through :class:`~modelshield.attacks.HttpTarget`
    in batches of 100 rows."""
    if is_url(suspect):
        if api_key is None:
            raise ConfigError("an HTTP suspect needs --api-key (or MODELSHIELD_API_KEY)")
        from modelshield.attacks import HttpTarget

        target = HttpTarget(suspect, api_key=api_key, model=model)

        def remote(x: Any) -> Any:
            out = [target.query(np.asarray(x[i : i + 100])).labels for i in range(0, len(x), 100)]
            return np.concatenate(out)

        return remote, target, f"{suspect} (model {target.model})"
    from modelshield.models import load_model

    path = Path(suspect)
    try:
        predictor = load_model(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the suspect model ({exc.strerror})") from None
    return predictor.predict, predictor, f"model file {path.name}"


def _training_data(path: Path | None, n_features: int) -> tuple[Any, Any]:
    if path is None:
        if n_features != 64:
            raise InvalidInputError("pass --data FILE.npz (arrays x and y) for this model")
        from modelshield.demo import load_demo_data

        data = load_demo_data()
        return data.x_train, data.y_train
    arrays = load_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise InvalidInputError(f"{path}: expected an .npz file with arrays x and y")
    return arrays["x"], arrays["y"]


def _trigger_set_for(key: bytes, predictor: Any) -> Any:
    from modelshield.watermark import make_trigger_set

    spec = predictor.input_spec
    return make_trigger_set(
        key,
        shape=spec.shape,
        classes=predictor.classes,
        low=0.0 if spec.min_value is None else spec.min_value,
        high=1.0 if spec.max_value is None else spec.max_value,
    )


def _first_weight(module: Any) -> tuple[str, int]:
    for name, param in module.named_parameters():
        if name.endswith("weight") and param.dim() >= 2:
            return name, int(param[0].numel())
    raise UnsupportedModelError("the torch model has no weight matrix to carry a watermark")


def keygen(
    output: Annotated[Path, typer.Option("-o", "--output", help="Key file to create (0600).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Create a watermark key: 32 random bytes, readable by you only."""
    from modelshield.watermark import generate_key

    _write_atomic(output, generate_key(), mode=0o600, force=force)
    console.print(f"watermark key written to {output}")


def embed(
    model: Annotated[Path, typer.Argument(help="Model file (skops or torch.export).")],
    key: Annotated[Path, typer.Option("--key", help="Watermark key file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Marked model file to write.")],
    scheme: Annotated[Scheme, typer.Option("--scheme", help="Watermark scheme.")] = (
        Scheme.trigger_set
    ),
    data: Annotated[
        Path | None,
        typer.Option("--data", help=".npz with clean training arrays x, y (default: digits)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the training.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Embed a watermark into a model file and write the marked model."""
    from modelshield.models import detect_format, dump_sklearn, dump_torch, load_model
    from modelshield.watermark import (
        WeightWatermark,
        embed_trigger_set,
        embed_trigger_set_torch,
        embed_weights,
        verify_trigger_set,
        verify_weights,
    )

    secret = _read_key(key)
    raw = _read_model(model)
    fmt = detect_format(raw)
    predictor: Any = load_model(raw)
    x, y = _training_data(data, predictor.input_spec.n_features)
    if fmt == "skops":
        if scheme is not Scheme.trigger_set:
            raise UnsupportedModelError("the weights scheme needs a torch model")
        triggers = _trigger_set_for(secret, predictor)
        marked = embed_trigger_set(predictor.estimator, triggers, x, y, random_state=seed)
        result = verify_trigger_set(marked.predict, triggers)
        out = dump_sklearn(marked, input_spec=predictor.input_spec)
    elif fmt == "torch":
        module = predictor.module
        classes = predictor.classes
        y_index = np.asarray([classes.index(v) for v in np.asarray(y).tolist()], dtype=np.int64)
        if scheme is Scheme.trigger_set:
            triggers = _trigger_set_for(secret, predictor)
            marked = embed_trigger_set_torch(module, triggers, x, y_index, random_state=seed)
            result = verify_trigger_set(lambda b: _torch_labels(marked, b, classes), triggers)
        else:
            layer, n_inputs = _first_weight(module)
            mark = WeightWatermark.from_key(secret, layer=layer, n_inputs=n_inputs)
            marked = embed_weights(module, mark, x, y_index, random_state=seed)
            result = verify_weights(marked, mark)
        out = dump_torch(_Exportable.wrap(marked), input_spec=predictor.input_spec, classes=classes)
    else:
        raise UnsupportedModelError(f"cannot embed into {fmt} files; use the training framework")
    _write_atomic(output, out, mode=0o644, force=force)
    console.print(
        f"{scheme.value} watermark embedded (self-check p = {result.p_value:.3g}); "
        f"marked model written to {output}"
    )


def _torch_labels(module: Any, batch: Any, classes: Any) -> list[Any]:
    import torch

    with torch.no_grad():
        index = module(torch.from_numpy(np.asarray(batch, dtype=np.float32))).argmax(1).numpy()
    return [classes[i] for i in index.tolist()]


class _Exportable:
    """Wrap a module rebuilt from a torch.export archive so that it can be exported again."""

    @staticmethod
    def wrap(module: Any) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> Any:
                return self.inner(x)

            def train(self, mode: bool = True) -> Any:  # exported graphs refuse mode switches
                self.training = mode
                return self

        return Wrapper(module)


def verify(
    suspect: Annotated[
        str, typer.Argument(help="Suspect model file (ONNX, skops, torch) or gateway URL.")
    ],
    key: Annotated[Path, typer.Option("--key", help="Watermark key file.")],
    scheme: Annotated[Scheme, typer.Option("--scheme", help="Watermark scheme.")] = (
        Scheme.trigger_set
    ),
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="MODELSHIELD_API_KEY", help="For a URL.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name at a URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check whether a suspect model file or URL carries our watermark (p-value and verdict)."""
    from modelshield.watermark import WeightWatermark, verify_trigger_set, verify_weights

    if scheme is Scheme.weights and is_url(suspect):
        raise UnsupportedModelError(
            "the weights scheme is white-box: it needs the suspect's torch model file, not a URL"
        )
    secret = _read_key(key)
    predict, predictor, _ = open_suspect(suspect, api_key, model)
    if scheme is Scheme.trigger_set:
        result = verify_trigger_set(predict, _trigger_set_for(secret, predictor))
    else:
        module = getattr(predictor, "module", None)
        if module is None:
            raise UnsupportedModelError("the weights scheme needs a torch model file")
        layer, n_inputs = _first_weight(module)
        result = verify_weights(
            module, WeightWatermark.from_key(secret, layer=layer, n_inputs=n_inputs)
        )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), sort_keys=True))
        return
    verdict = "[bold green]VERIFIED[/]" if result.verified else "[bold]not verified[/]"
    console.print(
        f"{verdict}: {result.matches}/{result.trials} keyed answers reproduced, chance "
        f"{result.chance_rate:.3f}, p = {result.p_value:.3g} (threshold {result.threshold:g})"
    )


watermark_app.command("keygen")(keygen)
watermark_app.command("embed")(embed)
watermark_app.command("verify")(verify)


def register(app: typer.Typer) -> None:
    app.add_typer(watermark_app, name="watermark")
