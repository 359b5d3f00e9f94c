"""HTML building blocks: one page layout, escaped tables and forms. Every value is escaped."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape

NAV = (
    ("overview", "Overview"),
    ("clients", "Clients"),
    ("audit", "Audit"),
    ("models", "Models"),
    ("reports", "Reports"),
)


def e(value: object) -> str:
    """``value`` as escaped HTML text (quotes too, so it is safe inside attributes)."""
    return escape("" if value is None else str(value), quote=True)


def when(t: float | None) -> str:
    """A UTC time as ``YYYY-MM-DD HH:MM:SSZ`` (``-`` for none)."""
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def badge(text: object, kind: str | None = None) -> str:
    css = (kind if kind is not None else str(text)).split(" ")[-1]
    return f'<span class="badge {e(css)}">{e(text)}</span>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, table_id: str = "") -> str:
    """A table; ``rows`` hold HTML already escaped by the caller (use :func:`e`)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">nothing yet</td></tr>'
    attr = f' id="{e(table_id)}"' if table_id else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def num(value: float | int) -> str:
    text = f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"
    return f'<span class="num">{e(text)}</span>'


def tile(label: str, value: str, *, alert: bool = False, tile_id: str = "") -> str:
    css = "tile alert" if alert else "tile"
    attr = f' id="{e(tile_id)}"' if tile_id else ""
    return (
        f'<div class="{css}"{attr}><div class="value">{e(value)}</div>'
        f'<div class="label">{e(label)}</div></div>'
    )


def csrf_form(action: str, csrf: str, button: str, *, fields: dict[str, str] | None = None,
              css: str = "", button_id: str = "") -> str:  # fmt: skip
    """A POST form carrying the session's CSRF token."""
    hidden = "".join(
        f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in (fields or {}).items()
    )
    bid = f' id="{e(button_id)}"' if button_id else ""
    return (
        f'<form class="inline" method="post" action="{e(action)}">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">{hidden}'
        f'<button type="submit" class="{e(css)}"{bid}>{e(button)}</button></form>'
    )


def page(
    *,
    title: str,
    active: str,
    body: str,
    admin: str | None,
    csrf: str | None,
    refresh: float,
    now: float,
) -> str:
    """The whole document: header with navigation and sign-out, then ``body``."""
    nav = "".join(
        f'<a href="/dashboard/{key}"{" class=active" if key == active else ""}>{e(label)}</a>'
        for key, label in NAV
    )
    who = ""
    if admin is not None and csrf is not None:
        who = (
            f'<span class="who">signed in as {e(admin)} '
            + csrf_form("/dashboard/logout", csrf, "Sign out", button_id="sign-out")
            + "</span>"
        )
    header = (
        f'<header><span class="brand">modelshield</span><nav>{nav}</nav>{who}</header>'
        if admin is not None
        else '<header><span class="brand">modelshield</span></header>'
    )
    refresh_attr = f"{refresh:g}" if admin is not None else "0"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · modelshield</title>"
        '<link rel="stylesheet" href="/dashboard/static/dashboard.css">'
        '<script src="/dashboard/static/dashboard.js" defer></script>'
        f'</head><body data-refresh="{e(refresh_attr)}">{header}<main>'
        f"<h1>{e(title)}</h1>{body}"
        f'<p class="muted" id="updated" data-live>rendered {e(when(now))}</p>'
        "</main></body></html>"
    )
