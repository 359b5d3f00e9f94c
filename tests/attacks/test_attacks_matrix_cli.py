"""`modelshield attack matrix` and `modelshield assess` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def test_matrix_writes_results_and_report(tmp_path: Path, modelshield_cli: Any) -> None:
    (tmp_path / "redteam.toml").write_text(
        "[redteam]\nattacks = ['knockoff']\ndefences = ['none', 'reverse_sigmoid', 'detection']\n"
        "budgets = [200]\n",
        encoding="utf-8",
    )
    r = modelshield_cli(
        "attack", "matrix", "--config", "redteam.toml", "--out", "report", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    # the detection run sets off an alert (in the results); it is not logged over the progress bar
    assert "extraction alert" not in r.stdout + r.stderr
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    runs = {row["defence"]: row for row in results["runs"]}
    assert set(runs) == {"none", "reverse_sigmoid", "detection"}
    assert runs["none"]["fidelity"] > runs["reverse_sigmoid"]["fidelity"]
    assert {b["defence"] for b in results["benign"]} == set(runs)
    assert all(b["top1_kept"] == 1.0 for b in results["benign"])
    html = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html  # the fidelity curves
    assert "Benign cost" in html
    # the assessment reads the measured results
    r = modelshield_cli("init", "deploy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = modelshield_cli(
        "assess", "--config", "deploy/shield.toml", "--redteam", "report/results.json",
        "--out", "assess.html", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert 1 <= scores["exploitability"] <= 5
    assert (tmp_path / "assess.html").read_text().startswith("<!doctype html>")


def test_matrix_config_errors_name_the_field(tmp_path: Path, modelshield_cli: Any) -> None:
    (tmp_path / "redteam.toml").write_text("[redteam]\nattacks = ['nope']\n", encoding="utf-8")
    r = modelshield_cli("attack", "matrix", "--config", "redteam.toml", cwd=tmp_path)
    assert r.returncode == 1
    assert "redteam.attacks" in r.stderr
