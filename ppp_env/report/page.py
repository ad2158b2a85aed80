"""The pieces every report page is made of: escaping, tables, sections, the page itself.

Everything a report shows is user data (tenant names, error messages): it goes through
:func:`h` unless it is markup this package built (:class:`Raw`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from functools import cache
from importlib.resources import files
from string import Template


class Raw(str):
    """Markup built here, inserted as it is."""


class Sorted:
    """A cell shown as ``text`` and sorted by ``key`` (e.g. ``1.23 s`` by 1.23)."""

    def __init__(self, text: object, key: float | None) -> None:
        self.text, self.key = text, key


def cell(value: object, numeric: bool) -> str:
    cls = " class=num" if numeric else ""
    if isinstance(value, Sorted):
        key = "" if value.key is None else f"{value.key:g}"
        return f'<td{cls} data-v="{key}">{h(value.text)}</td>'
    return f"<td{cls}>{h(value)}</td>"


def h(value: object) -> str:
    """``value`` as HTML text: escaped (quotes too), None as an empty string."""
    if isinstance(value, Raw):
        return value
    return html.escape("" if value is None else str(value), quote=True)


def took(value: float | None) -> Sorted:
    """A duration cell, sorted by its seconds."""
    return Sorted(seconds(value), value)


def seconds(value: float | None) -> str:
    """``85 ms``, ``1.23 s``, ``2 min 05 s``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, rest = divmod(value, 60)
    return f"{minutes:.0f} min {rest:02.0f} s"


def when(iso: object) -> str:
    """An ISO 8601 UTC time as ``2026-12-06 10:31:02`` (milliseconds and zone dropped)."""
    if not iso:
        return "-"
    text = str(iso).replace("T", " ")
    for zone in ("Z", "+00:00"):
        text = text.removesuffix(zone)
    return text.split(".")[0]


def revision(value: object) -> str:
    return "(base)" if value in (None, "") else str(value)


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    cls: str = "sortable",
    numeric: Sequence[int] = (),
    row_cls: Sequence[str] | None = None,
) -> Raw:
    """A table; cells are escaped unless :class:`Raw`; ``numeric`` columns align right."""
    head = "".join(
        f"<th{' class=num' if i in numeric else ''}>{h(c)}</th>" for i, c in enumerate(headers)
    )
    body = []
    for n, row in enumerate(rows):
        attr = f' class="{h(row_cls[n])}"' if row_cls and row_cls[n] else ""
        cells = "".join(cell(c, i in numeric) for i, c in enumerate(row))
        body.append(f"<tr{attr}>{cells}</tr>")
    return Raw(
        f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def section(anchor: str, title: str, body: str, note: str | None = None) -> Raw:
    intro = f'<p class="note">{h(note)}</p>' if note else ""
    return Raw(f'<section id="{h(anchor)}"><h2>{h(title)}</h2>{intro}{body}</section>')


def facts(pairs: Sequence[tuple[str, object]]) -> Raw:
    """The header's facts: a definition list."""
    items = "".join(f"<div><dt>{h(k)}</dt><dd>{h(v)}</dd></div>" for k, v in pairs)
    return Raw(f'<dl class="facts">{items}</dl>')


def badge(status: str) -> Raw:
    return Raw(f'<span class="badge {h(status.replace(" ", "_"))}">{h(status)}</span>')


@cache
def _static(name: str) -> str:
    return (files("ppp_env.report") / "static" / name).read_text(encoding="utf-8")


def page(title: str, body: str) -> str:
    """One self-contained HTML page: its CSS and script inline, nothing fetched."""
    return Template(_static("page.html")).substitute(
        title=h(title), css=_static("report.css"), js=_static("report.js"), body=body
    )
