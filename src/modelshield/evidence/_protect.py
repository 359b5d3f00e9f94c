"""``protect``: every protection applied to a model file in one step.

1. **watermark** (where the model can be trained: a scikit-learn estimator with ``partial_fit`` or
   ``warm_start`` stored with skops, or a torch.export program): a trigger set derived from a new
   key is embedded by continued training on the data given (``x``, ``y``), or, without data, on
   inputs drawn from the model's declared range labelled by the model itself;
2. **obfuscate** (ONNX and torch models; scikit-learn models are converted to ONNX first when
   skl2onnx can): function-preserving transforms at level 2, checked for equivalence;
3. **certify**: a signed certificate with the model's digests and commitments to the watermark
   keys;
4. **seal and sign** the protected model for the server recipients;
5. the watermark keys and the commitment openings, **sealed to the owner**; the audit key; and a
   ready ``shield.toml`` with the response watermark switched on, and detection too when ``data``
   was given (its rows fit the detectors, the held-out fifth calibrates them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelshield._files import load_npz, npy_bytes, write_atomic
from modelshield.errors import InvalidInputError, UnsupportedModelError

Progress = Callable[[str], None]

_NOTE = """\
# Put the server's identity (the private key of the recipient the model was sealed for) at
# keys/server.key with mode 0600 before serving.
"""


@dataclass(frozen=True)
class ProtectReport:
    """What :func:`protect_model` did and wrote."""

    directory: Path
    model_name: str
    sealed_model: Path
    certificate: Path
    secrets: Path
    config: Path
    steps: tuple[str, ...] = field(default_factory=tuple)
    watermarked: bool = False
    obfuscated: bool = False
    accuracy_before: float | None = None
    accuracy_after: float | None = None


def _pseudo_data(predictor: Any, n: int, rng: np.random.Generator) -> tuple[Any, Any]:
    spec = predictor.input_spec
    lo = 0.0 if spec.min_value is None else spec.min_value
    hi = 1.0 if spec.max_value is None else spec.max_value
    x = rng.uniform(lo, hi, size=(n, *spec.shape)).astype(spec.dtype)
    return x, predictor.predict(x)


#: Everything :func:`protect_model` writes into its folder (and nothing else).
_WRITES = ("keys", "models", "state", "certificate.json", "shield.toml")


@contextlib.contextmanager
def _removed_on_failure(directory: Path) -> Iterator[None]:
    """If the block fails, remove the entries of :data:`_WRITES` it created in ``directory``,
    and the folder if the block created it and it is then empty: never anything else (a file
    the user put there meanwhile stays)."""
    existed = directory.exists()
    before = {name for name in _WRITES if os.path.lexists(directory / name)}
    try:
        yield
    except BaseException:
        for name in _WRITES:
            path = directory / name
            if name in before or not os.path.lexists(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if not existed:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def protect_model(
    model: Path,
    *,
    owner: str,
    recipients: Sequence[Any],
    signing_key: Any,
    owner_recipient: Any,
    directory: Path,
    data: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    obfuscate_level: int = 2,
    random_state: int = 0,
    progress: Progress | None = None,
) -> ProtectReport:
    """Apply every protection to ``model`` and write the deployment into ``directory``."""
    from modelshield import audit, vault, watermark
    from modelshield.evidence._certificate import (
        create_certificate,
        dump_certificate,
        dump_openings,
    )
    from modelshield.gateway import default_config
    from modelshield.models import SklearnPredictor, detect_format, load_model

    say = progress or (lambda message: None)
    if directory.exists() and any(directory.iterdir()):
        raise InvalidInputError(f"{directory} is not empty; choose a new folder")
    raw = model.read_bytes()
    fmt = detect_format(raw)
    predictor = load_model(raw)
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in model.stem) or "model"
    rng = np.random.default_rng(random_state)
    steps: list[str] = []
    trigger_key = watermark.generate_key()
    response_key = watermark.generate_key()
    # ``data`` trains the watermark in; a fifth of it is held out to measure the accuracy cost
    x_train = y_train = x_eval = y_eval = None
    if data is not None:
        x_all, y_all = np.asarray(data[0]), np.asarray(data[1])
        order = rng.permutation(len(x_all))
        cut = len(order) // 5
        x_eval, y_eval = x_all[order[:cut]], y_all[order[:cut]]
        x_train, y_train = x_all[order[cut:]], y_all[order[cut:]]
    accuracy_before = (
        None if x_eval is None else float(np.mean(predictor.predict(x_eval) == y_eval))
    )
    watermarked = False
    protected = raw
    if fmt == "skops" and isinstance(predictor, SklearnPredictor):
        estimator = predictor.estimator
        if hasattr(estimator, "partial_fit") or hasattr(estimator, "warm_start"):
            say("embedding the trigger-set watermark (continued training)")
            if x_train is not None and y_train is not None:
                x, y = x_train, y_train
            else:
                x, y = _pseudo_data(predictor, 2000, rng)
            spec = predictor.input_spec
            trigger = watermark.make_trigger_set(
                trigger_key,
                shape=spec.shape,
                classes=predictor.classes,
                low=0.0 if spec.min_value is None else spec.min_value,
                high=1.0 if spec.max_value is None else spec.max_value,
            )
            marked = watermark.embed_trigger_set(
                estimator, trigger, x, y, random_state=random_state
            )
            from modelshield.models import dump_sklearn

            protected = dump_sklearn(marked, input_spec=predictor.input_spec)
            watermarked = True
            steps.append("trigger-set watermark embedded")
        else:
            steps.append("trigger-set watermark skipped: the estimator cannot continue training")
    elif fmt == "torch":
        steps.append("trigger-set watermark skipped for torch archives (embed before exporting)")
    else:
        steps.append("trigger-set watermark skipped: ONNX models cannot be trained here")
    obfuscated = False
    try:
        onnx_bytes = protected if fmt == "onnx" else None
        if fmt == "skops":
            from modelshield.demo import to_onnx

            onnx_bytes = to_onnx(load_model(protected).estimator, predictor.input_spec)  # type: ignore[attr-defined]
        elif fmt == "torch":
            onnx_bytes = protected
        if onnx_bytes is not None:
            say(f"obfuscating (level {obfuscate_level}) and checking equivalence")
            from modelshield.obfuscate import obfuscate

            result = obfuscate(onnx_bytes, level=obfuscate_level, seed=random_state, inputs=x_eval)
            protected = result.model_bytes
            obfuscated = True
            steps.append(f"obfuscated at level {obfuscate_level} (outputs checked unchanged)")
    except (UnsupportedModelError, ImportError) as exc:
        steps.append(f"obfuscation skipped: {exc}")
    final = load_model(protected)
    accuracy_after = None if x_eval is None else float(np.mean(final.predict(x_eval) == y_eval))
    # what this writes into the (empty or new) folder goes again if any step fails
    with _removed_on_failure(directory):
        directory.mkdir(parents=True, exist_ok=True)
        keys = directory / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)
        (directory / "models").mkdir(exist_ok=True)
        (directory / "state").mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory / "state", 0o700)  # the registry and audit databases (umask aside)
        say("certifying, sealing and signing")
        suffix = ".onnx" if obfuscated else model.suffix
        sealed = directory / "models" / f"{name}.sealed"
        vault.seal_bytes(protected, sealed, list(recipients), signer=signing_key)
        commitments = {"response-watermark": response_key}
        if watermarked:
            commitments["trigger-set"] = trigger_key
        certificate, openings = create_certificate(
            model=protected,
            model_name=f"{name}{suffix}",
            owner=owner,
            signing_key=signing_key,
            sealed=sealed,
            secrets_to_commit=commitments,
        )
        cert_path = directory / "certificate.json"
        write_atomic(cert_path, dump_certificate(certificate), mode=0o644)
        secrets_path = keys / "owner-secrets.sealed"
        vault.seal_bytes(dump_openings(openings), secrets_path, owner_recipient)
        write_atomic(keys / "response-watermark.key", response_key.hex().encode() + b"\n")
        audit.write_audit_key(keys / "audit.key", audit.generate_audit_key())
        write_atomic(keys / "owner.signing.pub", signing_key.verifying_key.to_pem(), mode=0o644)
        # detection needs honest rows: without ``data`` it is written switched off (the
        # pseudo-data the watermark can make do with is no picture of honest traffic)
        detection = (
            '# reference = "models/NAME.reference.npy"   # honest rows (.npy), then enable\n'
        )
        if x_train is not None and x_eval is not None:
            write_atomic(directory / "models" / f"{name}.reference.npy", npy_bytes(x_train))
            detection = f'reference = "models/{name}.reference.npy"\n'
            if len(x_eval):
                write_atomic(directory / "models" / f"{name}.calibration.npy", npy_bytes(x_eval))
                detection += f'calibration = "models/{name}.calibration.npy"\n'
        config = directory / "shield.toml"
        text = default_config(
            name, detection=x_train is not None, reference_lines=detection,
            written_by="protect", note=_NOTE,
        )  # fmt: skip
        text += '\n[evidence]\ncertificate = "certificate.json"\n'
        write_atomic(config, text.encode(), mode=0o644)
        steps.append("certified, sealed, signed; secrets sealed to the owner; shield.toml written")
    return ProtectReport(
        directory=directory,
        model_name=name,
        sealed_model=directory / "models" / f"{name}.sealed",
        certificate=cert_path,
        secrets=secrets_path,
        config=config,
        steps=tuple(steps),
        watermarked=watermarked,
        obfuscated=obfuscated,
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
    )


def load_npz_data(path: Path) -> tuple[Any, Any]:
    """``x`` and ``y`` arrays from an ``.npz`` file (no pickle)."""
    arrays = load_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise InvalidInputError(f"{path}: expected an .npz with arrays x and y")
    return arrays["x"], arrays["y"]
