"""The assessment as a terminal table and a self-contained HTML page."""

from __future__ import annotations

from modelshield.assess._rules import Assessment
from modelshield.reports import bars_svg, esc, page, table

_MEANING = {
    "exploitability": "how easily the model can be copied (API or file)",
    "detectability": "how likely a theft goes unnoticed",
    "impact": "how badly a theft hurts (proof, tracing, integrity)",
}


def render_html(assessment: Assessment, title: str = "OWASP ML05 risk assessment") -> str:
    scores = [
        ("exploitability", float(assessment.exploitability)),
        ("detectability", float(assessment.detectability)),
        ("technical impact", float(assessment.impact)),
    ]
    summary = (
        f"<p class='summary'>Overall risk of model theft: <b>{esc(assessment.rating)}</b> "
        f"({assessment.overall} on a 1-5 scale). Each factor is scored 1 (low risk) to 5 (high "
        "risk) from the deployment's configuration and, when given, measured red-team results."
        "</p>"
    )
    factors = table(
        ["factor", "score (1-5)", "meaning"],
        [
            ["exploitability", assessment.exploitability, _MEANING["exploitability"]],
            ["detectability", assessment.detectability, _MEANING["detectability"]],
            ["technical impact", assessment.impact, _MEANING["impact"]],
        ],
    )
    findings = table(
        ["factor", "weight", "finding", "why", "what to change"],
        [[f.factor, f"{f.weight:+d}", f.title, f.reason, f.fix] for f in assessment.findings],
    )
    return page(
        title,
        [
            summary,
            "<h2>Scores</h2>",
            bars_svg(scores, 5.0),
            factors,
            "<h2>Findings</h2>",
            findings if assessment.findings else "<p>No findings.</p>",
        ],
        subtitle="OWASP Machine Learning Security Top 10, ML05:2023 Model Theft",
    )
