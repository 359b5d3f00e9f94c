"""``modelshield init``: scaffold a deployment folder with keys, a sealed model and shield.toml."""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelshield._files import load_npy, npy_bytes, write_atomic
from modelshield.errors import InvalidInputError

_TEMPLATE = """\
# shield.toml written by `modelshield {written_by}`. Relative paths are relative to this file.
# Every field is documented in docs/gateway.md and in shield.example.toml.
{note}
[server]
host = "127.0.0.1"        # loopback by default: put a TLS-terminating proxy in front to expose it
port = 8000
workers = 1

[models.{name}]
path = "models/{name}.sealed"                 # sealed to keys/server.pub, signed by the owner
identity = "keys/server.key"                  # opens the seal (keep it 0600, on this host only)
require_signer = "keys/owner.signing.pub"     # refuse a model the owner did not sign

{image_shape}
[registry]                                    # API keys, clients, admin TOTP secrets
url = "sqlite:///state/registry.db"

[audit]                                       # every request, chained and HMAC-ed
url = "sqlite:///state/audit.db"
key = {{ file = "keys/audit.key" }}

[state]                                       # limits, budgets, flags: "redis://..." for replicas
url = "memory://"

[gateway]
max_body_bytes = 1048576

# The default profile: enough for honest use, little for a thief.
[tiers.standard]
requests_per_second = 10.0
burst = 20
budget_rows = 2000          # rows per period, per client
budget_period = "24h"
max_batch_rows = 100
# The top-1 label is exact (the `labels` field); the scores are deceptive (Lee et al.'s reverse
# sigmoid), cut to the top 3 and rounded: useless for training a copy on soft labels.
output = ["reverse_sigmoid:1:0.2", "top_k:3", "round:2"]

# For clients that only need the label.
[tiers.labels]
requests_per_second = 10.0
burst = 20
budget_rows = 2000
budget_period = "24h"
max_batch_rows = 100
output = ["labels"]

# A trial: a small budget for evaluating the model.
[tiers.trial]
requests_per_second = 5.0
burst = 10
budget_rows = 100
budget_period = "24h"
max_batch_rows = 50
output = ["top_k:1", "round:2"]

# Extraction detection: fitted on the training rows, thresholds calibrated on held-out rows.
[detection]
enabled = {detection}
action = "block"                              # alert | throttle | degrade | block
{reference}
# The per-client response watermark: a keyed share of each client's answers carry its keyed
# mark: 0.05% of confident answers (a keyed wrong label) and 14% of those the model is unsure
# about (top-1 below 0.95; its runner-up label), which thieves that augment or synthesise queries
# send far more often than honest clients (measured on digits: 0.96% of honest answers changed;
# docs/watermark.md).
[watermark]
enabled = true
share = 0.0005
uncertain_share = 0.14
uncertain_below = 0.95
key = {{ file = "keys/response-watermark.key" }}

[logging]
level = "INFO"
"""


def default_config(
    name: str,
    *,
    detection: bool,
    reference_lines: str,
    image_shape: str = "",
    written_by: str = "init",
    note: str = "",
) -> str:
    """The documented shield.toml with the default profile, for the model ``name`` sealed at
    ``models/NAME.sealed`` (what ``modelshield init`` and ``modelshield protect`` write).

    ``reference_lines`` are the detection section's reference/calibration lines (or a comment),
    ``image_shape`` an optional model line, ``note`` comment lines for the top of the file.
    """
    return _TEMPLATE.format(
        name=name,
        image_shape=image_shape,
        detection="true" if detection else "false",
        reference=reference_lines,
        written_by=written_by,
        note=note,
    )


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_deployment` wrote."""

    directory: Path
    config: Path
    model_name: str
    sealed_model: Path
    server_key: Path
    owner_signing_key: Path
    audit_key: Path
    #: a JSON request body of a few honest rows to try the gateway with (None without rows)
    sample_request: Path | None = None


def _model_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem).strip("-.") or "model"
    return name


def _honest_rows(path: Path, predictor: Any, option: str, *, at_least: int) -> Any:
    """Rows from a ``.npy`` file that the model would accept (shape, finite, in range), checked
    before anything is written: the gateway would otherwise refuse the deployment at start."""
    from modelshield.models import validate_inputs

    try:
        rows = load_npy(path)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{option}: {exc}") from None
    try:
        validate_inputs(rows, predictor.input_spec)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{option}: {path}: {exc}") from None
    if rows.ndim < 2 or len(rows) < at_least:
        raise InvalidInputError(f"{option}: {path} must hold at least {at_least} rows")
    return rows


def init_deployment(
    directory: Path,
    model: Path | None = None,
    *,
    reference: Path | None = None,
    calibration: Path | None = None,
) -> InitReport:
    """Create ``directory`` with server and owner keys, the audit and watermark keys, the sealed
    (and signed) model — the demo digits model when ``model`` is ``None`` — and a documented
    shield.toml with the default profile.

    Detection needs honest rows: ``reference`` (the training rows, ``.npy``) and ``calibration``
    (held-out rows); the demo model brings its own. Without them detection is written disabled.
    Refuses a folder that already holds a shield.toml or keys (nothing is overwritten).
    """
    from modelshield import audit, vault
    from modelshield.models import load_model

    directory = Path(directory)
    config_path = directory / "shield.toml"
    keys = directory / "keys"
    if config_path.exists() or keys.exists():
        raise InvalidInputError(f"{directory} already holds a deployment; choose an empty folder")
    ref_rows: Any = None
    cal_rows: Any = None
    sample_rows: Any = None
    image_shape = ""
    if model is None and (reference is not None or calibration is not None):
        raise InvalidInputError(
            "--reference and --calibration go with --model (the demo model brings its own rows)"
        )
    if calibration is not None and reference is None:
        raise InvalidInputError("--calibration needs --reference (the rows detection is fitted on)")
    if model is not None:
        data = Path(model).read_bytes()
        predictor = load_model(data)  # refuse what could not be served, before writing anything
        name = _model_name(Path(model))
        if reference is not None:
            ref_rows = _honest_rows(Path(reference), predictor, "--reference", at_least=50)
        if calibration is not None:
            cal_rows = _honest_rows(Path(calibration), predictor, "--calibration", at_least=1)
    else:
        from modelshield.demo import DEMO_MODEL_NAME, load_demo_data, train_demo_model

        demo = load_demo_data()
        data = train_demo_model(0, demo).onnx_bytes
        name = DEMO_MODEL_NAME
        # the demo's own split: train rows fit the detectors, half the held-out rows calibrate
        ref_rows, cal_rows = demo.x_train, demo.x_test[: len(demo.x_test) // 2]
        sample_rows = demo.x_test[len(demo.x_test) // 2 :][:3]  # held out of both
        image_shape = "image_shape = [8, 8]                          # rows are 8x8 images\n"
    for sub in (keys, directory / "models", directory / "state"):
        sub.mkdir(parents=True, exist_ok=True)
    # keys, and the registry (TOTP secrets in clear) and audit databases: the owner's only
    os.chmod(keys, 0o700)
    os.chmod(directory / "state", 0o700)
    server = vault.keygen(keys / "server")
    owner = vault.keygen(keys / "owner", signing=True)
    audit_key = audit.write_audit_key(keys / "audit.key", audit.generate_audit_key())
    sealed = directory / "models" / f"{name}.sealed"
    vault.seal_bytes(
        data,
        sealed,
        vault.load_recipient(server.public),
        signer=vault.load_signing_key(owner.private),
    )
    write_atomic(keys / "response-watermark.key", secrets.token_bytes(32).hex().encode())
    detection_lines = '# reference = "models/NAME.reference.npy"   # training rows (.npy)\n'
    if ref_rows is not None:
        write_atomic(directory / "models" / f"{name}.reference.npy", npy_bytes(ref_rows))
        detection_lines = f'reference = "models/{name}.reference.npy"\n'
        if cal_rows is not None:
            write_atomic(directory / "models" / f"{name}.calibration.npy", npy_bytes(cal_rows))
            detection_lines += f'calibration = "models/{name}.calibration.npy"\n'
    sample: Path | None = None
    if sample_rows is None:
        sample_rows = cal_rows if cal_rows is not None else ref_rows
    if sample_rows is not None:
        sample = directory / "sample-request.json"
        body = {"inputs": np.asarray(sample_rows[:3]).tolist()}
        write_atomic(sample, json.dumps(body).encode() + b"\n", mode=0o644)
    text = default_config(
        name, detection=ref_rows is not None, reference_lines=detection_lines,
        image_shape=image_shape,
    )  # fmt: skip
    write_atomic(config_path, text.encode(), mode=0o644)
    return InitReport(
        directory=directory,
        config=config_path,
        model_name=name,
        sealed_model=sealed,
        server_key=server.private,
        owner_signing_key=owner.private,
        audit_key=audit_key,
        sample_request=sample,
    )


_OPEN_TIER = """[tiers.standard]
requests_per_second = 100000.0
burst = 100000
budget_rows = 1000000000
budget_period = "lifetime"
max_batch_rows = 1000
output = ["probabilities"]

"""


def strip_defences(config_path: Path) -> None:
    """Rewrite a shield.toml written by :func:`init_deployment` into an undefended deployment:
    full probabilities, no budget, no detection, no response watermark (for red-team baselines
    only: never serve a real model like this)."""
    text = config_path.read_text(encoding="utf-8")

    def drop(table: str, replacement: str = "") -> None:
        nonlocal text
        # a table runs from its header to the next line that starts a table
        pattern = rf"^\[{re.escape(table)}\]\n(?:(?!\[).*\n)*"
        text = re.sub(pattern, replacement, text, flags=re.M)

    drop("tiers.standard", _OPEN_TIER)
    drop("detection")
    drop("watermark")
    config_path.write_text(text, encoding="utf-8")
