"""Self-contained HTML pages (inline CSS, inline SVG, no script, no network) that print to PDF."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid
#d0d7de;padding-bottom:.2rem}table{border-collapse:collapse;width:100%;margin:.6rem 0}
th,td{border:1px solid #d0d7de;padding:.35rem .5rem;text-align:left;vertical-align:top;
font-size:.92rem}
th{background:#f6f8fa}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.muted{color:#57606a}.summary{background:#f6f8fa;border-left:4px solid #0969da;padding:.6rem 1rem}
code,pre{font-family:ui-monospace,monospace;font-size:.85rem}pre{background:#f6f8fa;padding:.6rem;
overflow-x:auto;white-space:pre-wrap}@media print{body{margin:0}h2{page-break-after:avoid}}
"""


def esc(value: object) -> str:
    """HTML-escape any value."""
    return html.escape(str(value), quote=True)


def page(title: str, sections: Sequence[str], subtitle: str = "") -> str:
    """A complete HTML document; ``sections`` are already-escaped HTML fragments."""
    head = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
    )
    sub = f"<p class='muted'>{esc(subtitle)}</p>" if subtitle else ""
    return head + f"<h1>{esc(title)}</h1>{sub}" + "".join(sections) + "</body></html>"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else esc(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bars_svg(items: Sequence[tuple[str, float]], maximum: float, width: int = 480) -> str:
    """A horizontal bar chart as inline SVG (one bar per ``(label, value)``)."""
    row = 26
    height = row * len(items) + 10
    parts = [f"<svg width='{width}' height='{height}' role='img' aria-label='bar chart'>"]
    for i, (label, value) in enumerate(items):
        y = 5 + i * row
        length = 0 if maximum <= 0 else (width - 190) * max(0.0, min(value, maximum)) / maximum
        colour = (
            "#cf222e"
            if value >= 0.7 * maximum
            else "#bf8700"
            if value >= 0.4 * maximum
            else "#1a7f37"
        )
        parts.append(
            f"<text x='0' y='{y + 16}' font-size='13'>{esc(label)}</text>"
            f"<rect x='150' y='{y + 3}' width='{length:.1f}' height='16' fill='{colour}'/>"
            f"<text x='{155 + length:.1f}' y='{y + 16}' font-size='13'>{value:g}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def png_img(data: bytes, alt: str) -> str:
    """An ``<img>`` embedding PNG bytes (for matplotlib figures)."""
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'/>"
