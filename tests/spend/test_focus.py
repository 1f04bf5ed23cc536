"""`report --format focus` over a real SQLite MLflow store: FOCUS 1.2 rows that add up to the report.

Validation: by the spec's rules, checked here (``assert_focus``), not by the FinOps
Foundation's ``focus-validator``. Its only release on the package index (1.0.0) pins
numpy<2, pytz<2024 and sqlglot<19 (this project runs numpy 2) and does not import with
current ``multimethod``; installed apart (multimethod<2), it knows FOCUS 0.5/1.0 only,
still asks for pre-1.0 column names (Provider, Publisher, InvoiceIssuer, ResourceID),
and downloads the ISO currency list while validating. It cannot join ``[test]``.

The rules checked, from the FOCUS 1.2 column pages and attributes: every mandatory column
present; column ids PascalCase, custom ones ``x_``-prefixed; non-null where the spec says so
for Usage rows; allowed values (ChargeCategory, ChargeClass, ChargeFrequency, ServiceCategory, PricingCategory);
ISO 4217 currency; numeric format (plain decimals: no exponent, sign, unit, comma);
date/time format ``YYYY-MM-DDTHH:mm:ssZ`` in UTC, start inclusive before end
exclusive, billing periods whole months; List = Contracted = Billed = Effective cost
(list-priced usage, no discounts); Tags a JSON object of scalar values with unique keys.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_finops.cli import cli
from mlflow_finops.names import (
    METRIC_COST_USD,
    TAG_MARKET,
    TAG_MODEL,
    TAG_NESTED_IN,
    TAG_PRICE_PROFILE,
    TAG_TEAM,
)
from mlflow_finops.spend.focus import COLUMNS, MANDATORY, focus_rows, to_csv
from mlflow_finops.spend.report import build_report

from .test_report import tracked_store  # noqa: F401  (the fixture: real autologged runs)

UTC = timezone.utc
SERVICE_CATEGORIES = {
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases", "Developer Tools",
    "Multicloud", "Identity", "Integration", "Internet of Things", "Management and Governance", "Media",
    "Migration", "Mobile", "Networking", "Security", "Storage", "Web", "Other"}
NOT_NULL = ("BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart",
            "ChargeCategory", "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart", "ConsumedQuantity",
            "ConsumedUnit", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity",
            "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName", "ResourceId")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
NUMBER = re.compile(r"-?\d+(\.\d+)?")
COSTS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost")
QUANTITIES = ("PricingQuantity", "ConsumedQuantity", "x_CpuCoreHours", "x_GpuHours", "x_EnergyKwh", "x_Co2eKg",
              "x_IdleCost")


def read_csv(text: str) -> list[dict[str, str | None]]:
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    return [{k: (v if v != "" else None) for k, v in row.items()} for row in reader]


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate tag keys {keys}"
    return dict(pairs)


def assert_focus(rows: list[dict[str, str | None]]) -> None:
    """FOCUS 1.2 rules on CSV rows (strings; None = empty cell = null)."""
    for col in COLUMNS:
        assert re.fullmatch(r"x_[A-Z][A-Za-z0-9]*|[A-Z][A-Za-z0-9]*", col), col
    assert set(MANDATORY) <= set(COLUMNS)
    for row in rows:
        for col in NOT_NULL:
            assert row[col] is not None, (col, row["ResourceId"])
        assert row["ChargeCategory"] in {"Usage", "Purchase", "Tax", "Credit", "Adjustment"}
        assert row["ChargeClass"] in {None, "Correction"}
        assert row["ChargeFrequency"] in {"One-Time", "Recurring", "Usage-Based"}
        assert row["ServiceCategory"] in SERVICE_CATEGORIES
        assert row["PricingCategory"] in {None, "Standard", "Dynamic", "Committed", "Other"}
        assert re.fullmatch(r"[A-Z]{3}", row["BillingCurrency"] or "")
        for col in (*COSTS, *QUANTITIES):
            if row[col] is not None:
                assert NUMBER.fullmatch(row[col]), (col, row[col])
        assert len({row[c] for c in COSTS}) == 1, "list-priced usage: all four costs equal"
        assert float(row["BilledCost"]) >= 0
        for col in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
            assert DATE.fullmatch(row[col] or ""), (col, row[col])
        when = {c: datetime.strptime(row[c], "%Y-%m-%dT%H:%M:%SZ")
                for c in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")}
        assert when["ChargePeriodStart"] < when["ChargePeriodEnd"]
        assert when["BillingPeriodStart"] <= when["ChargePeriodStart"] < when["BillingPeriodEnd"]
        bp = when["BillingPeriodStart"]
        assert (bp.day, bp.hour, bp.minute, bp.second) == (1, 0, 0, 0)
        assert when["BillingPeriodEnd"] == datetime(bp.year + bp.month // 12, bp.month % 12 + 1, 1)
        if row["Tags"] is not None:
            tags = json.loads(row["Tags"], object_pairs_hook=_unique_keys)
            assert isinstance(tags, dict)
            assert all(isinstance(v, (str, int, float, bool)) or v is None for v in tags.values())


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, ["report", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_focus_rows_add_up_to_the_report(tracked_store: dict, tmp_path: Path) -> None:  # noqa: F811
    for scope in ((), ("-e", "churn-train")):
        rows = read_csv(invoke("--format", "focus", *scope))
        assert_focus(rows)
        summary = json.loads(invoke("--format", "json", *scope))["summary"]
        assert math.isclose(sum(float(r["BilledCost"]) for r in rows), summary["cost_usd"], rel_tol=1e-12)
        assert len(rows) == summary["tracked_runs"]
    ids = {r["ResourceId"] for r in rows}
    assert ids == {tracked_store["churn-0"], tracked_store["churn-1"]}  # nested and untracked runs left out
    row = next(r for r in rows if r["ResourceId"] == tracked_store["churn-1"])
    assert (row["ResourceName"], row["x_Experiment"], row["x_Model"], row["x_Team"]) == (
        "churn-1", "churn-train", "churn", "growth")
    assert row["ResourceType"] == "MLflow Run" and row["ServiceCategory"] == "AI and Machine Learning"
    assert row["ChargeCategory"] == "Usage" and row["ChargeClass"] is None and row["BillingCurrency"] == "USD"
    assert row["PricingUnit"] == row["ConsumedUnit"] == "Core-Hours"
    assert float(row["PricingQuantity"]) == float(row["x_CpuCoreHours"]) > 0
    run = MlflowClient().get_run(tracked_store["churn-1"])
    assert float(row["BilledCost"]) == run.data.metrics[METRIC_COST_USD]
    assert json.loads(row["Tags"]) == {k: v for k, v in run.data.tags.items() if k.startswith("finops.")}
    assert row["ChargePeriodStart"] == datetime.fromtimestamp(run.info.start_time // 1000, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def test_parquet_has_focus_types_and_the_same_rows(tracked_store: dict, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "focus.parquet"
    invoke("--format", "focus", "-o", str(out), "--focus-provider", "ML platform")
    table = pq.read_table(out)
    assert tuple(table.column_names) == COLUMNS
    for col in ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd"):
        assert table.schema.field(col).type == pa.timestamp("ms", tz="UTC")
    for col in (*COSTS, *QUANTITIES):
        assert table.schema.field(col).type == pa.float64()
    assert table.schema.field("Tags").type == pa.string()
    csv_rows = read_csv(invoke("--format", "focus", "--focus-provider", "ML platform"))
    assert table.column("BilledCost").to_pylist() == [float(r["BilledCost"]) for r in csv_rows]
    days = tmp_path / "days.csv"
    invoke("--format", "focus", "--focus-granularity", "day", "-o", str(days))
    day_rows = read_csv(days.read_text(encoding="utf-8"))
    assert_focus(day_rows)
    assert sum(float(r["BilledCost"]) for r in day_rows) == pytest.approx(sum(table.column("BilledCost").to_pylist()))
    assert set(table.column("ProviderName").to_pylist()) == {"ML platform"}
    assert table.column("ChargeClass").null_count == table.num_rows


def _run(client: MlflowClient, exp: str, name: str, start: datetime, end: datetime, cost: float,
         core_hours: float, **tags: str) -> str:
    exp_id = client.get_experiment_by_name(exp)
    exp_id = exp_id.experiment_id if exp_id else client.create_experiment(exp)
    ms = int(start.timestamp() * 1000)
    run = client.create_run(exp_id, start_time=ms, run_name=name, tags=tags)
    rid = run.info.run_id
    client.log_batch(rid, metrics=[Metric(METRIC_COST_USD, cost, ms, 0),
                                   Metric("finops/cpu_core_hours", core_hours, ms, 0),
                                   Metric("finops/energy_kwh", 0.002, ms, 0)])
    client.set_terminated(rid, "FINISHED", end_time=int(end.timestamp() * 1000))
    return rid


def test_day_rows_split_a_run_at_midnight_and_month_end(sqlite_uri: str) -> None:
    client = MlflowClient()
    hostile = 'a "quoted", comma\nnewline <b>&amp; ' + "x" * 80
    spot = _run(client, "nightly", hostile, datetime(2026, 10, 31, 22, 0, 0, 400000, tzinfo=UTC),
                datetime(2026, 11, 1, 4, 0, tzinfo=UTC), 3.0, 6.0,
                **{TAG_MARKET: "spot", TAG_PRICE_PROFILE: "gcp", TAG_TEAM: "growth", TAG_MODEL: "churn"})
    short = _run(client, "nightly", "", datetime(2026, 11, 2, 9, 0, 0, 200000, tzinfo=UTC),
                 datetime(2026, 11, 2, 9, 0, 0, 700000, tzinfo=UTC), 0.0000004, 0.0)
    _run(client, "nightly", "child", datetime(2026, 11, 2, 10, tzinfo=UTC), datetime(2026, 11, 2, 11, tzinfo=UTC),
         5.0, 1.0, **{TAG_NESTED_IN: spot})
    rep = build_report(experiments=["nightly"], keep_tags=True)

    per_run = read_csv(to_csv(focus_rows(rep.runs, rep.tags)))
    assert_focus(per_run)
    assert [r["ResourceId"] for r in per_run] == [spot, short]
    first, tiny = per_run
    assert (first["ChargePeriodStart"], first["ChargePeriodEnd"]) == ("2026-10-31T22:00:00Z", "2026-11-01T04:00:00Z")
    assert (first["BillingPeriodStart"], first["BillingPeriodEnd"]) == ("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z")
    assert first["ResourceName"] == hostile and first["PricingCategory"] == "Dynamic"
    assert (tiny["ChargePeriodStart"], tiny["ChargePeriodEnd"]) == ("2026-11-02T09:00:00Z", "2026-11-02T09:00:01Z")
    assert tiny["BilledCost"] == "0.0000004" and tiny["PricingCategory"] == "Standard"  # no exponent
    assert tiny["PricingQuantity"] == "0"

    per_day = read_csv(to_csv(focus_rows(rep.runs, rep.tags, granularity="day")))
    assert_focus(per_day)
    october, november = (r for r in per_day if r["ResourceId"] == spot)
    assert (october["ChargePeriodEnd"], november["ChargePeriodStart"]) == ("2026-11-01T00:00:00Z",) * 2
    assert (october["BillingPeriodStart"], november["BillingPeriodStart"]) == (
        "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z")
    assert (float(october["BilledCost"]), float(november["BilledCost"])) == pytest.approx((1.0, 2.0))
    assert (float(october["PricingQuantity"]), float(november["PricingQuantity"])) == pytest.approx((2.0, 4.0))
    assert sum(float(r["BilledCost"]) for r in per_day) == pytest.approx(rep.total().cost_usd, rel=1e-12)
    assert json.loads(october["Tags"])[TAG_MARKET] == "spot"
    with pytest.raises(ValueError, match="granularity='week'"):
        focus_rows(rep.runs, granularity="week")  # type: ignore[arg-type]
