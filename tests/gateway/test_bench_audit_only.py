"""benchmarks/_audit_only_app.py, the gateway benchmark's audit-only reference point: every
answer it gives has its record committed, chained to the one before, when the answer arrives."""

from __future__ import annotations

import hashlib
import importlib.util
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from modelshield.demo import DemoData, DemoModel
from modelshield.gateway import ServerThread

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "benchmarks" / "_audit_only_app.py"


def load_app_module() -> ModuleType:
    if str(ROOT) not in sys.path:  # it imports the bare app as the benchmark's servers do
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("audit_only_app", APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(db: Path) -> list[tuple[bytes, str, bytes, bytes]]:
    with sqlite3.connect(db) as conn:
        got = conn.execute("SELECT input_hmac, labels, prev_hash, hash FROM audit ORDER BY rowid")
        return list(got.fetchall())


def test_each_answer_has_a_committed_chained_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_model: DemoModel, demo_data: DemoData
) -> None:
    model, db = tmp_path / "digits.onnx", tmp_path / "audit.db"
    model.write_bytes(demo_model.onnx_bytes)
    monkeypatch.setenv("BARE_MODEL", str(model))
    monkeypatch.setenv("AUDIT_ONLY_DB", str(db))
    app = load_app_module().create_app()
    inputs = demo_data.x_test[:24]
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:

        def predict(i: int) -> int:
            response = client.post(
                "/v1/models/digits/predict", json={"inputs": [inputs[i].tolist()]}
            )
            assert response.status_code == 200
            label = int(response.json()["labels"][0])
            # committed by the time the answer arrives: the record is already in the file
            assert f"[{label}]" in {r[1] for r in rows(db)}
            return label

        with ThreadPoolExecutor(8) as pool:  # concurrent requests share group commits
            labels = list(pool.map(predict, range(len(inputs))))
    stored = rows(db)
    assert len(stored) == len(inputs)
    assert sorted(r[1] for r in stored) == sorted(f"[{label}]" for label in labels)
    prev = bytes(32)
    for digest, label_text, prev_hash, record_hash in stored:
        assert prev_hash == prev
        assert record_hash == hashlib.sha256(prev + digest + label_text.encode()).digest()
        prev = record_hash


def test_refuses_an_unknown_synchronous_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        load_app_module().LoopGroupCommit(str(tmp_path / "a.db"), "OFF; DROP TABLE x")
