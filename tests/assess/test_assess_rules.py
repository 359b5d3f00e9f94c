"""The risk score improves as defences are switched on; every finding says what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelshield.assess import assess, render_html
from modelshield.config import Config, load_config
from modelshield.errors import InvalidInputError


def write(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "shield.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


UNDEFENDED = """
[models.m]
path = "model.onnx"
[tiers.standard]
requests_per_second = 1000.0
budget_rows = 100000000
budget_period = "lifetime"
max_batch_rows = 5000
output = ["probabilities"]
"""


def test_score_improves_as_defences_are_switched_on(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"plain model bytes")
    (tmp_path / "model.sealed").write_bytes(b"\x89MSEAL\r\n" + b"\x00" * 64)
    (tmp_path / "cert.json").write_text("{}")
    steps = [
        UNDEFENDED,
        UNDEFENDED.replace('output = ["probabilities"]', 'output = ["top_k:1", "round:2"]'),
        UNDEFENDED.replace('output = ["probabilities"]', 'output = ["labels"]')
        .replace("budget_rows = 100000000", "budget_rows = 2000")
        .replace('budget_period = "lifetime"', 'budget_period = "24h"')
        .replace("max_batch_rows = 5000", "max_batch_rows = 100"),
    ]
    steps.append(
        steps[-1].replace('path = "model.onnx"', 'path = "model.sealed"\nrequire_signer = "o.pub"')
    )
    steps.append(
        steps[-1]
        + '[audit]\nkey = "00112233445566778899aabbccddeeff"\n[detection]\nenabled = true\n'
    )
    steps.append(steps[-1] + '[watermark]\nenabled = true\n[evidence]\ncertificate = "cert.json"\n')
    overall = [assess(write(tmp_path, text)).overall for text in steps]
    assert overall == sorted(overall, reverse=True)
    assert overall[0] > overall[-1]
    first, last = assess(write(tmp_path, steps[0])), assess(write(tmp_path, steps[-1]))
    assert first.exploitability == 5
    assert last.exploitability == 1
    assert last.detectability == 1
    assert first.rating == "high"
    assert last.rating == "low"
    titles = {f.title for f in first.findings}
    assert "tier standard: returns full-precision probabilities" in titles
    assert "model m: stored unsealed" in titles
    assert "no extraction detector" in titles
    assert all(f.fix for f in first.findings)


def test_redteam_results_move_the_scores(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    moderate = (
        UNDEFENDED.replace('output = ["probabilities"]', 'output = ["labels"]')
        .replace("budget_rows = 100000000", "budget_rows = 2000")
        .replace("max_batch_rows = 5000", "max_batch_rows = 100")
    )
    config = write(tmp_path, moderate + "[detection]\nenabled = true\n")
    held = {
        "runs": [
            {
                "attack": "knockoff",
                "defence": "default",
                "budget": 5000,
                "fidelity": 0.4,
                "detected_at": 120,
            }
        ]
    }
    broke = {
        "runs": [
            {
                "attack": "knockoff",
                "defence": "default",
                "budget": 5000,
                "fidelity": 0.95,
                "detected_at": None,
            }
        ]
    }
    base = assess(config)
    assert assess(config, held).exploitability == base.exploitability - 1
    assert assess(config, broke).detectability == base.detectability + 1
    # not results at all: a clear error (a list once ended in AttributeError); a run whose
    # fidelity is no number is left out rather than guessed
    for bad in ([1, 2], {"runs": 5}, "runs"):
        with pytest.raises(InvalidInputError, match="'runs' list"):
            assess(config, bad)  # type: ignore[arg-type]
    odd = {"runs": [*broke["runs"], {**held["runs"][0], "fidelity": "high"}]}
    assert assess(config, odd).detectability == base.detectability + 1


def test_html_report_escapes_and_is_self_contained(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"x")
    html = render_html(assess(write(tmp_path, UNDEFENDED)))
    assert html.startswith("<!doctype html>")
    assert "<script" not in html
    assert "http://" not in html
    assert "https://" not in html
    assert "full-precision probabilities" in html
