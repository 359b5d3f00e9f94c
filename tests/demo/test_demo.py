from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from modelshield.demo import DemoData, DemoModel, run_demo, train_demo_model


def test_training_is_deterministic(demo_model: DemoModel, demo_data: DemoData) -> None:
    again = train_demo_model(0, demo_data)
    assert again.test_accuracy == demo_model.test_accuracy
    assert (
        again.estimator.predict(demo_data.x_test) == demo_model.estimator.predict(demo_data.x_test)
    ).all()


def test_demo_model_is_accurate(demo_model: DemoModel) -> None:
    assert demo_model.test_accuracy >= 0.95


def test_run_demo_writes_private_files(tmp_path: Path) -> None:
    out = io.StringIO()
    report = run_demo(tmp_path, console=Console(file=out, width=100))
    assert report.test_accuracy >= 0.95
    assert abs(report.onnx_accuracy - report.test_accuracy) <= 0.005
    for path in report.files:
        assert path.exists(), path
        assert path.stat().st_mode & 0o777 == 0o600
    assert "test accuracy" in out.getvalue()
    assert report.sealed_accuracy == report.onnx_accuracy
    assert report.gateway_statuses == {"alice": 200, "bad_key": 401, "over_budget": 429}
    assert report.audit_ok
    assert report.backup_restored
    assert report.fidelity_undefended >= 0.9
    assert report.fidelity_defended <= report.fidelity_undefended - 0.2
    assert report.insider_traced  # the insider's copy carries the insider's watermark
    assert not report.independent_traced  # an independent model is never claimed as ours
    assert report.evidence_report is not None
    html = report.evidence_report.read_text()
    assert "Ownership certificate" in html
    assert "In plain language" in html
    sealed = next(p for p in report.files if p.suffix == ".sealed").read_bytes()
    plain = next(p for p in report.files if p.suffix == ".onnx").read_bytes()
    for start in range(0, len(plain) - 32, len(plain) // 8):
        assert plain[start : start + 32] not in sealed  # no plaintext in the seal
    assert report.seconds < 120
