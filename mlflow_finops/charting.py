"""Chart primitives shared by the per-run cost timeline (cost/) and the reports (spend/).

Every chart is a :class:`Chart`: a PNG for MLflow's artifact viewer and e-mail,
and the same figure as inline SVG for a self-contained HTML page (hover
tooltips, the numbers as a table; no script, opens offline, tens of kilobytes
instead of the ~3.5 MB of an offline plotly page). Figures are drawn by
matplotlib on an Agg canvas without ``pyplot`` (no global state, safe on the
tracker's thread at run end, a notebook's interactive backend is left alone).

matplotlib is imported by :func:`new_figure` only: importing this module costs
nothing, so the tracker and the CLI pay for matplotlib (~1 s) only when they draw.
"""

from __future__ import annotations

import html
import io
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

__all__ = ["Chart", "new_figure", "render", "html_page", "html_table", "label", "shorten", "money_axis",
           "legend_below", "empty", "write_charts", "PALETTE", "MAX_TOOLTIPS", "NAME_CHARS"]

DPI = 100
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
MAX_TOOLTIPS = 2000  # more points than this: a plain picture (each tooltip adds to the page's weight)
NAME_CHARS = 40  # a run or experiment name drawn in a chart is cut to this (the HTML keeps it whole)


@dataclass
class Chart:
    """One drawn chart: its PNG, its SVG (for HTML pages) and the numbers behind it."""

    title: str
    png: bytes
    svg: str
    header: list[str]
    rows: list[list[str]]
    figure: "Figure | None" = field(default=None, repr=False, compare=False)  # as drawn: layout can be checked

    def pair(self) -> tuple[bytes, str]:
        """``(png, html)``: the chart on its own page."""
        return self.png, html_page(self.title, [self])


def new_figure(width: float = 9.0, height: float = 4.8) -> "Figure":
    """A matplotlib figure on its own Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render(fig: "Figure", title: str, header: list[str], rows: list[list[str]],
           tooltips: dict[str, list[str]] | None = None) -> Chart:
    """Draw ``fig`` as PNG and SVG; ``tooltips`` maps a collection's gid to one hover text per marker."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    svg_buf = io.StringIO()
    fig.savefig(svg_buf, format="svg")
    svg = svg_buf.getvalue()
    svg = svg[svg.find("<svg"):]  # drop the XML prolog and doctype: it is inlined in HTML
    for gid, tips in (tooltips or {}).items():
        svg = _add_tooltips(svg, gid, tips)
    return Chart(title, buf.getvalue(), svg, header, rows, fig)


def _add_tooltips(svg: str, gid: str, tips: list[str]) -> str:
    """Give the i-th marker of the collection with ``gid`` a ``<title>`` (browser hover text).

    matplotlib writes a collection's markers as ``<use>`` references, or, for one or
    two markers, as plain ``<path>`` elements: both are handled.
    """
    body = _group_body(svg, gid)
    if body is None:
        return svg
    start, end = body
    inner = re.sub(r"<defs>.*?</defs>", lambda m: " " * len(m.group(0)), svg[start:end], flags=re.S)
    marks = list(re.finditer(r"<use [^>]*?/>", inner)) or list(re.finditer(r"<path [^>]*?/>", inner))
    if len(marks) != len(tips):
        return svg  # markers and points do not line up one to one: keep the plain picture
    out, last = [], start
    for mark, tip in zip(marks, tips):
        a, b = start + mark.start(), start + mark.end()
        out.append(svg[last:a])
        out.append(svg[a:b - 2] + "><title>" + html.escape(tip) + "</title></" + mark.group(0)[1:5].strip() + ">")
        last = b
    out.append(svg[last:])
    return svg[:start] + "".join(out)


def _group_body(svg: str, gid: str) -> tuple[int, int] | None:
    """Where the content of ``<g id="gid">`` starts and ends in ``svg`` (nested groups included)."""
    m = re.search(rf'<g id="{re.escape(gid)}">', svg)
    if not m:
        return None
    depth = 1
    for tag in re.finditer(r"<g[\s>]|</g>", svg[m.end():]):
        depth += -1 if tag.group(0) == "</g>" else 1
        if depth == 0:
            return m.end(), m.end() + tag.start()
    return None


def label(text: str, width: int | None = None) -> str:
    """Text for a matplotlib title or legend: a literal '$' (money), not mathtext; cut to ``width`` chars if given."""
    return (shorten(text, width) if width else text).replace("$", r"\$")


def shorten(text: str, width: int = NAME_CHARS) -> str:
    """``text`` on one line, at most ``width`` characters, an ellipsis where it was cut.

    A name of 100 characters must not take the plot's room: charts draw the short form
    and keep the whole name in the HTML (tooltips, data tables).
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 1)].rstrip() + "\u2026"


def money_axis(axis: "Axis") -> None:
    """Tick labels of a cost axis in the one money format (``format_usd``: $0.10, not 0.1)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from .money import format_usd

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: label(format_usd(v))))
    axis.set_minor_formatter(NullFormatter())


def legend_below(fig: "Figure", ax: "Axes", fontsize: float = 8) -> None:
    """The axes' legend under the plot, outside it: it never hides data and never narrows the axes."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    # As many columns as fit across the figure: ~0.6 em per character, plus the marker and the gap.
    column_px = max(len(t) for t in labels) * fontsize * 0.6 * fig.dpi / 72 + 60
    ncols = max(1, min(len(handles), 3, int(fig.get_figwidth() * fig.dpi // column_px)))
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize=fontsize, frameon=False)


def empty(ax: "Axes", message: str) -> None:
    """An axes that says why there is nothing to draw, instead of a blank frame."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.untracked{color:#999;font-style:italic}.warn{color:#b45309;font-weight:bold}.over{color:#b91c1c;font-weight:bold}
svg{max-width:100%;height:auto}.meta{color:#666;font-size:.85em}
"""


def html_page(title: str, charts: Sequence[Chart] = (), intro_html: str = "", tables_html: str = "") -> str:
    """A standalone HTML document: no script, no external file, opens offline."""
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        intro_html,
    ]
    for chart in charts:
        if len(charts) > 1 or intro_html:
            parts.append(f"<h2>{html.escape(chart.title)}</h2>")
        parts.append(f"<figure>{chart.svg}</figure>")
        if chart.rows:
            parts.append("<details><summary>Data</summary>" + html_table(chart.header, chart.rows) + "</details>")
    parts.append(tables_html)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<p class=\"meta\">Generated by mlflow-finops, {stamp}.</p></body></html>")
    return "\n".join(parts)


def html_table(header: Sequence[str], rows: Iterable[Sequence[object]], row_classes: Sequence[str] | None = None) -> str:
    """An HTML table, every cell escaped; ``row_classes`` styles rows (``untracked``, ``warn``, ``over``)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_charts(folder: str, charts: Mapping[str, tuple[bytes, str]]) -> list[str]:
    """Write each ``name -> (png, html)`` as ``folder/name.png`` and ``folder/name.html``; the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, (png, page) in charts.items():
        for ext, data in (("png", png), ("html", page.encode("utf-8"))):
            path = os.path.join(folder, f"{name}.{ext}")
            with open(path, "wb") as f:
                f.write(data)
            written.append(path)
    return written
