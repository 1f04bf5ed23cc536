"""The report's charts and the budget views, drawn from figures given here (no MLflow store)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mlflow_finops.charting import html_table, write_charts
from mlflow_finops.money import format_usd
from mlflow_finops.policy import BudgetEnvelope
from mlflow_finops.spend.budget import BudgetStatus
from mlflow_finops.spend.charts import budget_burndown, cost_over_time, cost_vs_metric
from mlflow_finops.spend.report import budget_table, budget_warning

PNG = b"\x89PNG\r\n\x1a\n"
UTC = timezone.utc
START, END, NOW = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC),
                   datetime(2026, 11, 16, tzinfo=UTC))  # half of November gone


def status(name: str, spent: float, amount: float = 10.0, warn_at: float = 0.8, projected: float | None = None,
           **scope: object) -> BudgetStatus:
    env = BudgetEnvelope(amount_usd=amount, warn_at=warn_at, **(scope or {"team": "growth"}))
    return BudgetStatus(
        name=name, envelope=env, period_start=START, period_end=END, now=NOW, spent_usd=spent,
        remaining_usd=amount - spent, projected_usd=projected if projected is not None else 2 * spent,
        warn=spent >= warn_at * amount, runs=2, points=((START.timestamp() + 3600, spent / 2), (NOW.timestamp() - 60, spent / 2)),
    )


@pytest.mark.parametrize(
    ("spent", "projected", "state"),
    [(12.0, 24.0, "OVER"), (10.0, 20.0, "OVER"), (8.5, 17.0, "WARN"), (6.0, 12.0, "projected over"), (2.0, 4.0, "ok")],
)
def test_an_envelope_has_one_state_word(spent: float, projected: float, state: str) -> None:
    assert status("b", spent, projected=projected).state == state


def test_budget_table_and_warning_show_money_one_way() -> None:
    statuses = [status("churn", 9.0, models=["churn"], team="growth"), status("tiny", 0.00052, amount=1.0)]
    header, rows = budget_table(statuses)
    churn, tiny = (dict(zip(header, row)) for row in rows)
    assert churn["scope"] == "model churn, team growth" and churn["status"] == "WARN"
    assert (churn["amount"], churn["spent"], churn["remaining"], churn["projected"]) == ("$10.00", "$9.00", "$1.00", "$18.00")
    assert churn["period"] == "month from 2026-11-01 (50% elapsed)"
    assert (tiny["spent"], tiny["projected"], tiny["status"]) == ("$0.00052", "$0.0010", "ok")
    assert budget_warning(statuses[0]) == (
        "budget 'churn' has spent $9.00 of $10.00 (90% >= warn_at 80%); projected $18.00 by 2026-12-01")


def test_burndown_draws_one_panel_per_envelope() -> None:
    chart = budget_burndown([status("churn", 9.0), status("research", 1.0)])
    assert chart.png.startswith(PNG) and chart.svg.startswith("<svg")
    assert [row[0] for row in chart.rows] == ["churn", "research"]
    assert [row[-1] for row in chart.rows] == ["WARN", "ok"]
    png, page = chart.pair()
    assert png == chart.png and page.startswith("<!DOCTYPE html>") and "Budget burn-down" in page
    assert "no [budgets.*] envelopes" in budget_burndown([]).pair()[1]


def test_cost_vs_metric_gives_every_point_a_tooltip_with_its_cost() -> None:
    points = [("a", 0.00052, 0.70, "exp1"), ("b", 2.0, 0.80, "exp1"), ("c", 3.0, 0.75, "exp2"),
              ("d", float("nan"), 0.9, "exp2")]  # a non-finite cost is left out
    chart = cost_vs_metric(points, "accuracy", "max")
    tips = re.findall(r"<title>([^<]*)</title>", chart.svg)
    assert sorted(t for t in tips if "accuracy" in t) == [
        f"a (exp1): {format_usd(0.00052)}, accuracy 0.7", "b (exp1): $2.00, accuracy 0.8", "c (exp2): $3.00, accuracy 0.75"]
    assert [(row[0], row[-1]) for row in chart.rows] == [("a", "yes"), ("b", "yes"), ("c", "")]  # cheapest first
    with pytest.raises(ValueError, match="goal='best'"):
        cost_vs_metric(points, "accuracy", "best")


def test_cost_over_time_keeps_eight_series_and_sums_the_rest() -> None:
    points = [(f"exp{i}", 1_700_000_000.0 + i, float(i + 1)) for i in range(10)] + [("exp0", 1_700_000_100.0, None)]
    chart = cost_over_time(points, "Cost")
    series = {row[0] for row in chart.rows}
    assert series == {f"exp{i}" for i in range(2, 10)} | {"other"}
    other = [float(row[2]) for row in chart.rows if row[0] == "other"]
    assert other[-1] == 1.0 + 2.0  # the two cheapest, cumulated
    assert "no tracked runs" in cost_over_time([], "Cost").pair()[1]


def test_html_table_escapes_cells_and_styles_rows(tmp_path: Path) -> None:
    table = html_table(["run", "cost"], [["<b>x</b>", "$1.00"], ["y", "untracked"]], ["", "untracked"])
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in table
    assert '<tr class="untracked"><td>y</td><td>untracked</td></tr>' in table
    written = write_charts(str(tmp_path / "out"), {"one": (PNG, "<p>page</p>")})
    assert sorted(Path(p).name for p in written) == ["one.html", "one.png"]
    assert (tmp_path / "out" / "one.png").read_bytes() == PNG
    assert (tmp_path / "out" / "one.html").read_text() == "<p>page</p>"
