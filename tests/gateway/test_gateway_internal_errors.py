"""A bug inside the pipeline is answered as a JSON 500 and is still audited."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from modelshield import access, audit
from modelshield.config import load_config
from modelshield.demo import DemoModel
from modelshield.gateway import ServerThread, build_app, open_gateway
from modelshield.models import load_model
from modelshield.stores import open_audit_store

from .conftest import write_config


class Broken:
    """A predictor whose scores raise an unexpected error."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.input_spec = inner.input_spec  # type: ignore[attr-defined]
        self.classes = inner.classes  # type: ignore[attr-defined]

    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        raise RuntimeError("secret internal detail")

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        raise RuntimeError("secret internal detail")


def test_unexpected_error_is_a_json_500_with_an_audit_record(
    tmp_path: Path, demo_model: DemoModel
) -> None:
    config = load_config(write_config(tmp_path))
    with access.open_registry(config.registry.url) as registry:
        _, key = registry.add("alice", models=["digits"])
    gateway = open_gateway(config, models={"digits": Broken(load_model(demo_model.onnx_bytes))})  # type: ignore[dict-item]
    with ServerThread(build_app(gateway)) as server:
        r = httpx.post(
            f"{server.url}/v1/models/digits/predict",
            json={"inputs": [[0.0] * 64]},
            headers={"Authorization": f"Bearer {key.reveal()}"},
        )
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "internal error"}}
    assert "secret internal detail" not in r.text
    store = open_audit_store(config.audit.url)
    try:
        records = [x for x in audit.export(store) if x.get("status") == 500]
        assert audit.verify(store, audit.audit_key_from_config(config)).ok
    finally:
        store.close()
    assert len(records) == 1
    assert records[0]["client"] == "alice"
    assert records[0]["reason"] == "internal"
