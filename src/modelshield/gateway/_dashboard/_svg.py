"""Server-rendered SVG charts: no JavaScript library, no network, no inline style.

Only presentation attributes and classes are used (never ``style=``), so the charts render under
a Content-Security-Policy without ``'unsafe-inline'``. Every text is escaped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")

Point = tuple[float, float]


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= ``value`` (1 for nothing)."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = step * 10.0**exponent
        if candidate >= value * (1 - 1e-12):
            return candidate
    return 10.0 ** (exponent + 1)  # pragma: no cover - the loop always returns


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value / 1000:g}k"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.2g}"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t))


def line_chart(
    series: Sequence[tuple[str, Sequence[Point]]],
    *,
    title: str,
    t0: float,
    t1: float,
    unit: str = "",
    threshold: float | None = None,
    width: int = 640,
    height: int = 200,
) -> str:
    """A line chart of ``(name, [(time, value), ...])`` series between ``t0`` and ``t1``.

    ``threshold`` draws a dashed horizontal line (a detector's threshold). An empty chart says so.
    """
    left, right, top, bottom = 48, 12, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, pts in series for _, v in pts if math.isfinite(v)]
    if threshold is not None:
        values.append(threshold)
    y_max = nice_max(max(values, default=0.0))
    span = max(t1 - t0, 1e-9)

    def x(t: float) -> float:
        return left + (min(max(t, t0), t1) - t0) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - min(max(v, 0.0), y_max) / y_max * plot_h

    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
    ]
    for i in range(5):
        v = y_max * i / 4
        yy = y(v)
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" '
            'stroke="#e5e7eb" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{left - 4}" y="{yy + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(_fmt(v) + unit)}</text>"
        )
    for i in range(5):
        t = t0 + span * i / 4
        anchor = ("start", "middle", "middle", "middle", "end")[i]
        out.append(
            f'<text x="{x(t):.1f}" y="{height - bottom + 16}" text-anchor="{anchor}" '
            f'class="tick">{_clock(t)}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#9ca3af" stroke-width="1"/>'
    )
    if threshold is not None:
        ty = y(threshold)
        out.append(
            f'<line class="threshold" x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" '
            f'y2="{ty:.1f}" stroke="#dc2626" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        out.append(
            f'<text x="{left + plot_w}" y="{ty - 4:.1f}" text-anchor="end" class="tick">'
            f"threshold {escape(_fmt(threshold))}</text>"
        )
    for index, (name, points) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        pts = [(t, v) for t, v in points if math.isfinite(v) and t0 <= t <= t1]
        if len(pts) == 1:
            ((t, v),) = pts
            out.append(
                f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'
                f"<title>{escape(name)}</title></circle>"
            )
        elif pts:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
            out.append(
                f'<polyline class="series" fill="none" stroke="{color}" stroke-width="2" '
                f'points="{path}"><title>{escape(name)}</title></polyline>'
            )
        lx = left + 8 + index * 130
        out.append(
            f'<rect x="{lx}" y="{height - 12}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{height - 3}" class="legend">{escape(name[:18])}</text>'
        )
    if not values or not any(pts for _, pts in series):
        out.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            'class="empty">no data yet</text>'
        )
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    items: Sequence[tuple[str, float]], *, title: str, width: int = 640, bar_height: int = 20
) -> str:
    """A horizontal bar chart of ``(label, value)`` pairs, largest first as given."""
    left, right, top = 140, 48, 24
    height = top + max(1, len(items)) * (bar_height + 6) + 8
    plot_w = width - left - right
    x_max = nice_max(max((v for _, v in items), default=0.0))
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
    ]
    if not items:
        out.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + 14}" text-anchor="middle" '
            'class="empty">none</text>'
        )
    for i, (label, value) in enumerate(items):
        yy = top + i * (bar_height + 6)
        w = max(0.0, value) / x_max * plot_w
        color = PALETTE[i % len(PALETTE)]
        out.append(
            f'<text x="{left - 6}" y="{yy + bar_height - 5}" text-anchor="end" class="tick">'
            f"{escape(label[:22])}</text>"
            f'<rect class="bar" x="{left}" y="{yy}" width="{w:.1f}" height="{bar_height}" '
            f'fill="{color}"><title>{escape(label)}: {escape(_fmt(value))}</title></rect>'
            f'<text x="{left + w + 4:.1f}" y="{yy + bar_height - 5}" class="tick">'
            f"{escape(_fmt(value))}</text>"
        )
    out.append("</svg>")
    return "".join(out)
