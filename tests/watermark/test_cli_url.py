"""``modelshield watermark verify URL``: black-box checks through a real gateway on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelshield import access, audit
from modelshield.config import load_config
from modelshield.demo import DEMO_INPUT_SPEC, DemoModel
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.models import dump_sklearn, load_model

from .conftest import KEY


@dataclass
class Served:
    url: str
    key_file: Path
    api_key: str


@pytest.fixture
def served(tmp_path: Path, demo_model: DemoModel, marked_estimator: Any) -> Iterator[Served]:
    """A gateway serving the trigger-marked digits model as ``marked`` and the unmarked one as
    ``plain``, with one API key allowed both."""
    audit.write_audit_key(tmp_path / "keys" / "audit.key", audit.generate_audit_key())
    (tmp_path / "state").mkdir()
    (tmp_path / "shield.toml").write_text(
        "[models.marked]\npath = 'models/marked.skops'\n"
        "[models.plain]\npath = 'models/plain.onnx'\n"
        "[audit]\nurl = 'sqlite:///state/audit.db'\nkey = { file = 'keys/audit.key' }\n"
        "[registry]\nurl = 'sqlite:///state/registry.db'\n"
        "[tiers.standard]\nrequests_per_second = 1000.0\nburst = 1000\nbudget_rows = 10000\n"
        "max_batch_rows = 100\noutput = ['labels']\n",
        encoding="utf-8",
    )
    config = load_config(tmp_path / "shield.toml")
    models = {
        "marked": load_model(dump_sklearn(marked_estimator, input_spec=DEMO_INPUT_SPEC)),
        "plain": load_model(demo_model.onnx_bytes),
    }
    with access.open_registry(config.registry.url) as registry:
        _, api_key = registry.add("owner", models=["marked", "plain"], tier="standard")
    key_file = tmp_path / "wm.key"
    key_file.write_bytes(KEY)
    gateway = open_gateway(config, models=models, random_state=0)
    with ServerThread(build_app(gateway)) as server:
        yield Served(server.url, key_file, api_key.reveal())


def test_verify_through_a_gateway_url(served: Served, modelshield_cli: Any) -> None:
    ours = modelshield_cli(
        "watermark", "verify", served.url, "--key", str(served.key_file),
        "--api-key", served.api_key, "--model", "marked", "--json",
    )  # fmt: skip
    assert ours.returncode == 0, ours.stderr
    verdict = json.loads(ours.stdout.strip().splitlines()[-1])
    assert verdict["verified"] is True
    assert verdict["p_value"] < 1e-6
    assert verdict["trials"] == 100

    plain = modelshield_cli(
        "watermark", "verify", served.url, "--key", str(served.key_file),
        "--api-key", served.api_key, "--model", "plain", "--json",
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    verdict = json.loads(plain.stdout.strip().splitlines()[-1])
    assert verdict["verified"] is False
    assert verdict["p_value"] > 1e-3


def test_api_key_from_the_environment(served: Served) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "modelshield", "watermark", "verify", served.url,
            "--key", str(served.key_file), "--model", "marked",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MODELSHIELD_API_KEY": served.api_key},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "VERIFIED" in result.stdout


def test_bad_api_key_is_one_line_and_exits_non_zero(served: Served, modelshield_cli: Any) -> None:
    result = modelshield_cli(
        "watermark", "verify", served.url, "--key", str(served.key_file),
        "--api-key", "ms_not-a-key", "--model", "marked",
    )  # fmt: skip
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error:")


def test_a_url_without_api_key_is_a_clear_error(served: Served) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelshield", "watermark", "verify", served.url,
         "--key", str(served.key_file)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "MODELSHIELD_API_KEY"},
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--api-key" in result.stderr


def test_weights_scheme_on_a_url_is_refused(served: Served, modelshield_cli: Any) -> None:
    result = modelshield_cli(
        "watermark", "verify", served.url, "--scheme", "weights", "--key", str(served.key_file),
        "--api-key", served.api_key,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "white-box" in result.stderr
