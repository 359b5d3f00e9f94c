"""The evidence report in a real headless Chromium: every section is there and it prints to PDF."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelshield import vault, watermark
from modelshield.demo import DEMO_INPUT_SPEC, DemoData, DemoModel
from modelshield.evidence import create_certificate, gather_evidence, render_evidence_html
from modelshield.models import SklearnPredictor

pytestmark = pytest.mark.slow

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    ci = os.environ.get("CI") == "true" or os.environ.get("MODELSHIELD_REQUIRE_SERVICES") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if ci:
            pytest.fail("the playwright package is missing: pip install -e '.[dev]'")
        pytest.skip("the playwright package is not installed")
    executable = shutil.which("chromium")
    if executable is None:
        if ci:
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_evidence_report_renders_with_every_section(
    tmp_path: Path,
    demo_model: DemoModel,
    demo_data: DemoData,
    chromium: Any,
    screenshot_dir: Path,
) -> None:
    key = watermark.generate_key()
    trigger = watermark.make_trigger_set(key, shape=(64,), classes=tuple(range(10)))
    marked = watermark.embed_trigger_set(
        demo_model.estimator, trigger, demo_data.x_train, demo_data.y_train, random_state=0
    )
    signing = vault.generate_signing_key()
    certificate, openings = create_certificate(
        model=demo_model.onnx_bytes,
        model_name="digits.onnx",
        owner="Example Labs Ltd",
        signing_key=signing,
        secrets_to_commit={"trigger-set": key},
    )
    suspect = SklearnPredictor(marked, input_spec=DEMO_INPUT_SPEC)
    report = gather_evidence(
        suspect="stolen.skops",
        suspect_predict=suspect.predict,
        certificate=certificate,
        trusted_key=signing.verifying_key,
        openings=openings,
        classes=tuple(range(10)),
        input_shape=(64,),
        commands=("modelshield evidence stolen.skops --certificate cert.json -o report.html",),
    )
    assert report.ours
    path = tmp_path / "report.html"
    path.write_text(render_evidence_html(report), encoding="utf-8")
    page = chromium.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(path.as_uri())
    text = page.inner_text("body")
    for heading in (
        "Evidence report: model ownership",
        "In plain language",
        "1. Ownership certificate",
        "2. Verifications against the suspect",
        "3. Who leaked it",
        "4. How to reproduce every figure",
        "5. Certificate (as signed)",
    ):
        assert heading in text, heading
    assert "the suspect is a copy of the certified model" in text
    assert "trigger set" in text
    assert "Example Labs Ltd" in text
    screenshot_dir.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot_dir / "evidence-report.png"), full_page=True)
    pdf = page.pdf()
    assert pdf.startswith(b"%PDF")
    assert errors == []
    page.close()
