"""The red team's HTML report: fidelity-versus-queries curves per attack and defence, tables."""

from __future__ import annotations

import io
from collections import defaultdict

from modelshield.attacks._matrix import MatrixResult
from modelshield.reports import esc, page, png_img, table


def _curves_png(result: MatrixResult, attack: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for run in result.runs:
        if run.attack == attack and run.fidelity is not None:
            series[run.defence].append((run.rows, run.fidelity))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for defence, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=defence)
    ax.set_xlabel("rows the attacker obtained")
    ax.set_ylabel("fidelity of the copy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{attack}: fidelity versus queries")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_matrix_html(result: MatrixResult, title: str = "Red team: attack x defence") -> str:
    """A self-contained report of a matrix run."""
    attacks = sorted({r.attack for r in result.runs})
    sections = [
        "<p class='summary'>Each attack was run against each defence setting at several query "
        "budgets. <b>Fidelity</b> is the share of held-out inputs on which the stolen copy agrees "
        "with the model; lower is better for the defender. <b>Detected</b> is the row at which the "
        "deployment blocked the attacker. The benign table shows what honest clients keep.</p>",
        "<h2>Benign cost of each defence</h2>",
        table(
            ["defence", "honest accuracy", "honest top-1 kept"],
            [[b.defence, f"{b.accuracy:.3f}", f"{b.top1_kept:.4f}"] for b in result.benign],
        ),
    ]
    for attack in attacks:
        sections.append(f"<h2>{esc(attack)}</h2>")
        sections.append(png_img(_curves_png(result, attack), f"{attack} fidelity curves"))
        rows = [
            [
                r.defence,
                r.budget,
                r.rows,
                "-" if r.fidelity is None else f"{r.fidelity:.3f}",
                "-" if r.accuracy is None else f"{r.accuracy:.3f}",
                r.outcome,
                "-" if r.detected_at is None else r.detected_at,
            ]
            for r in result.runs
            if r.attack == attack
        ]
        sections.append(
            table(
                [
                    "defence",
                    "budget",
                    "rows obtained",
                    "fidelity",
                    "copy accuracy",
                    "outcome",
                    "detected at row",
                ],
                rows,
            )
        )
    return page(title, sections, subtitle="modelshield red team, OWASP ML05:2023 Model Theft")
