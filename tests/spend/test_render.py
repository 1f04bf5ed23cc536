"""How a cost report reads: CSV, JSON and the HTML page (untracked runs are never $0)."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser

import pytest
from support.tracked_runs import cost_of, tracked_store  # noqa: F401

from mlflow_finops.money import format_usd
from mlflow_finops.spend.report import ReportError, build_report


class _Tables(HTMLParser):
    """Every <table> of a page as (header cells, rows of cells), text only."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            header, rows = self.tables[-1]
            if header:
                rows.append(self._row)
            else:
                header.extend(self._row)
            self._row = None


def runs_table(page: str) -> dict[str, dict[str, str]]:
    """The report page's Runs table: run label -> {column: cell text}."""
    parser = _Tables()
    parser.feed(page)
    (header, rows), = [t for t in parser.tables if t[0][:2] == ["run", "experiment"]]
    return {row[0]: dict(zip(header, row)) for row in rows}


def test_formats(tracked_store: dict) -> None:
    rep = build_report()
    rows = list(csv.DictReader(io.StringIO(rep.to_csv("run"))))
    row = {r["run_id"]: r for r in rows}[tracked_store["untracked"]]
    assert row["tracked"] == "false" and row["cost_usd"] == "" and row["energy_kwh"] == ""  # not $0
    assert float({r["run_id"]: r for r in rows}[tracked_store["fraud-0"]]["cost_usd"]) == pytest.approx(
        cost_of(tracked_store["fraud-0"]))
    groups = list(csv.DictReader(io.StringIO(rep.to_csv("model"))))
    assert {g["key"] for g in groups} == {"churn", "fraud"}

    doc = json.loads(rep.to_json())
    assert doc["summary"]["untracked_runs"] == 1 and doc["summary"]["nested_runs"] == 1
    assert [r["cost_usd"] for r in doc["runs"] if not r["tracked"]] == [None]

    page = rep.to_html()
    assert page.count("<svg") == 2  # cost over time, cost vs accuracy
    assert "Pareto front" in page
    runs = runs_table(page)
    assert runs["not-tracked"]["cost"] == "untracked" and runs["not-tracked"]["idle cost"] == ""  # never $0
    assert runs["fraud-0"]["cost"] == format_usd(cost_of(tracked_store["fraud-0"]))
    assert rep.render("csv") == rep.to_csv("run") and rep.render("csv", by="model") == rep.to_csv("model")
    assert json.loads(rep.render("json")) == doc
    with pytest.raises(ReportError, match="unknown report format 'xml'"):
        rep.render("xml")  # type: ignore[arg-type]
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"?https?:", page)  # self-contained
