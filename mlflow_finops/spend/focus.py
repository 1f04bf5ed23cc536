"""The report's runs as FOCUS 1.2 rows (FinOps Open Cost and Usage Specification), for finance tools.

One charge row per counted run (tracked, not nested: the runs ``report`` sums), or
one per run and UTC day, so the FOCUS total equals the report's total on the same
filters. What the columns hold, and why:

- **Costs.** A run is priced from list prices (the price profile), with no negotiated
  discount and no commitment, so ``ListCost = ContractedCost = BilledCost =
  EffectiveCost = finops/cost_usd``, in ``BillingCurrency`` USD. No unit price column
  is written: a run's cost blends CPU, memory, GPU and energy prices, so no single
  published unit price times a quantity gives it.
- **Charge.** ``ChargeCategory`` Usage, ``ChargeClass`` null (no corrections),
  ``ChargeFrequency`` Usage-Based; ``ChargePeriodStart``/``End`` are the run's start
  and end (UTC, whole seconds, end exclusive); ``BillingPeriodStart``/``End`` the
  calendar month of the charge's start (a run is billed in the month it started, as
  ``report --since/--until`` counts it).
- **Quantities.** CPU core-hours: ``ConsumedQuantity``/``PricingQuantity`` in
  ``Core-Hours``.
- **Who and what.** ``ProviderName``/``PublisherName``/``InvoiceIssuerName`` and the
  billing account are the ``provider`` argument (default ``mlflow-finops``: the tool
  that priced the run); the sub-account is the MLflow experiment; the resource is the
  run (``ResourceId`` = run id, ``ResourceType`` "MLflow Run");
  ``ServiceCategory`` "AI and Machine Learning". ``PricingCategory`` is Dynamic for
  spot-priced runs, else Standard.
- **Tags.** The run's ``finops.*`` tags as a JSON object: provider-defined tags whose
  key prefix (``finops.``) is the provider's, values unaltered.
- **Custom columns** (``x_``): core/GPU hours, energy, CO2e, idle cost, experiment,
  model, team, cost centre, workload, price profile, allocation mode, run status.
- **Left out**: the conditional columns whose condition never holds here (commitment
  discounts, capacity reservations, SKUs, regions, invoices, pricing currencies).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Iterable, Iterator, Literal, Mapping, Sequence, TextIO

from ..names import (
    TAG_ALLOCATION_MODE,
    TAG_COST_CENTER,
    TAG_MARKET,
    TAG_PRICE_PROFILE,
    TAG_WORKLOAD,
)
from .rollup import RunCost

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from .report import CostReport

__all__ = ["FOCUS_VERSION", "COLUMNS", "MANDATORY", "PROVIDER", "focus_rows", "iter_focus_rows", "to_csv", "write_csv",
           "to_parquet", "write"]

FOCUS_VERSION = "1.2"
PROVIDER = "mlflow-finops"
SERVICE_NAME = "MLflow runs"
SERVICE_CATEGORY = "AI and Machine Learning"
SERVICE_SUBCATEGORY = "Machine Learning"
RESOURCE_TYPE = "MLflow Run"
UNIT = "Core-Hours"
Granularity = Literal["run", "day"]

# The columns FOCUS 1.2 makes mandatory (all present; see the spec's "Feature level").
MANDATORY = ("BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
             "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
             "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
             "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName")
_DATES = ("BillingPeriodStart", "BillingPeriodEnd", "ChargePeriodStart", "ChargePeriodEnd")
_DECIMALS = ("BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "PricingQuantity", "ConsumedQuantity",
             "x_CpuCoreHours", "x_GpuHours", "x_EnergyKwh", "x_Co2eKg", "x_IdleCost")
# Every column written, in order: the spec's (alphabetical), then the custom ones.
COLUMNS = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency",
    "ChargePeriodEnd", "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit", "ContractedCost", "EffectiveCost",
    "InvoiceIssuerName", "ListCost", "PricingCategory", "PricingQuantity", "PricingUnit", "ProviderName",
    "PublisherName", "ResourceId", "ResourceName", "ResourceType", "ServiceCategory", "ServiceName",
    "ServiceSubcategory", "SubAccountId", "SubAccountName", "Tags",
    "x_CpuCoreHours", "x_GpuHours", "x_EnergyKwh", "x_Co2eKg", "x_IdleCost", "x_Experiment", "x_Model", "x_Team",
    "x_CostCenter", "x_Workload", "x_PriceProfile", "x_AllocationMode", "x_RunStatus",
)
# The run figures split over days with the cost (everything additive).
_SPLIT = {"BilledCost": "cost_usd", "x_CpuCoreHours": "cpu_core_hours", "x_GpuHours": "gpu_hours",
          "x_EnergyKwh": "energy_kwh", "x_Co2eKg": "co2e_kg", "x_IdleCost": "idle_cost_usd"}


@dataclass(frozen=True)
class _Span:
    """One charge period of a run: [start, end) in whole UTC seconds, and its share of the run."""

    start: datetime
    end: datetime
    share: float


def focus_rows(runs: Iterable[RunCost], tags: Mapping[str, Mapping[str, str]] | None = None, *,
               granularity: Granularity = "run", provider: str = PROVIDER) -> list[dict[str, object]]:
    """FOCUS rows (column -> value; None is null) for the counted runs, oldest first.

    ``tags``: run id -> that run's ``finops.*`` tags (``CostReport.tags``).
    """
    tags = tags or {}
    counted = sorted((r for r in runs if r.counted), key=lambda r: (r.start_time, r.run_id))
    return list(iter_focus_rows(((r, tags.get(r.run_id, {})) for r in counted), granularity=granularity,
                                provider=provider))


def iter_focus_rows(runs: Iterable[tuple[RunCost, Mapping[str, str]]], *, granularity: Granularity = "run",
                    provider: str = PROVIDER) -> Iterator[dict[str, object]]:
    """FOCUS rows one at a time for ``(run, its finops.* tags)`` pairs, in the order given.

    The caller chooses the runs (counted ones) and their order (oldest first): a report
    streams them from its table, so no list of rows is ever held.
    """
    if granularity not in ("run", "day"):
        raise ValueError(f"granularity={granularity!r}: expected 'run' or 'day'")
    for r, run_tags in runs:
        spans = _spans(r, granularity)
        figures = {col: getattr(r, attr) for col, attr in _SPLIT.items()}
        shares = _split(figures, [s.share for s in spans])
        for span, part in zip(spans, shares):
            yield _row(r, dict(run_tags), span, part, provider)


def _spans(r: RunCost, granularity: Granularity) -> list[_Span]:
    """The run's charge period, or its pieces per UTC day with each piece's share of the wall time."""
    start = datetime.fromtimestamp(math.floor(r.start_time), timezone.utc)
    end_ts = r.end_time if r.end_time and r.end_time > r.start_time else r.start_time + (r.wall_hours or 0.0) * 3600
    end = datetime.fromtimestamp(math.ceil(end_ts), timezone.utc)
    if end <= start:  # a run shorter than its second still had a charge period
        end = start + timedelta(seconds=1)
    if granularity == "run":
        return [_Span(start, end, 1.0)]
    total = (end - start).total_seconds()
    spans = []
    day = start.replace(hour=0, minute=0, second=0)
    while day < end:
        nxt = day + timedelta(days=1)
        a, b = max(start, day), min(end, nxt)
        spans.append(_Span(a, b, (b - a).total_seconds() / total))
        day = nxt
    return spans


def _split(figures: Mapping[str, float | None], shares: Sequence[float]) -> list[dict[str, float | None]]:
    """Each figure cut by the shares; the last piece takes the remainder, so the pieces sum to the figure."""
    out: list[dict[str, float | None]] = [{} for _ in shares]
    for col, value in figures.items():
        left = value
        for i, share in enumerate(shares):
            if value is None:
                out[i][col] = None
            elif i == len(shares) - 1:
                out[i][col] = left
            else:
                out[i][col] = value * share
                left -= value * share  # type: ignore[operator]
    return out


def _month(t: datetime) -> tuple[datetime, datetime]:
    first = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return first, (first + timedelta(days=32)).replace(day=1)


def _row(r: RunCost, run_tags: Mapping[str, str], span: _Span, part: Mapping[str, float | None],
         provider: str) -> dict[str, object]:
    cost = float(part["BilledCost"] or 0.0)
    core_hours = float(part["x_CpuCoreHours"] or 0.0)
    bp_start, bp_end = _month(span.start)
    profile = run_tags.get(TAG_PRICE_PROFILE)
    name = r.run_name or None
    return {
        "BilledCost": cost,
        "BillingAccountId": provider,
        "BillingAccountName": provider,
        "BillingCurrency": "USD",
        "BillingPeriodEnd": bp_end,
        "BillingPeriodStart": bp_start,
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeDescription": (f"MLflow run {r.run_name or r.run_id} in experiment {r.experiment}: "
                              f"compute at list prices ({profile or 'default price profile'})"),
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": span.end,
        "ChargePeriodStart": span.start,
        "ConsumedQuantity": core_hours,
        "ConsumedUnit": UNIT,
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": provider,
        "ListCost": cost,
        "PricingCategory": "Dynamic" if run_tags.get(TAG_MARKET) == "spot" else "Standard",
        "PricingQuantity": core_hours,
        "PricingUnit": UNIT,
        "ProviderName": provider,
        "PublisherName": provider,
        "ResourceId": r.run_id,
        "ResourceName": name,
        "ResourceType": RESOURCE_TYPE,
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceName": SERVICE_NAME,
        "ServiceSubcategory": SERVICE_SUBCATEGORY,
        "SubAccountId": r.experiment_id,
        "SubAccountName": r.experiment,
        "Tags": json.dumps(dict(sorted(run_tags.items())), ensure_ascii=False) if run_tags else None,
        "x_CpuCoreHours": part["x_CpuCoreHours"],
        "x_GpuHours": part["x_GpuHours"],
        "x_EnergyKwh": part["x_EnergyKwh"],
        "x_Co2eKg": part["x_Co2eKg"],
        "x_IdleCost": part["x_IdleCost"],
        "x_Experiment": r.experiment,
        "x_Model": r.model,
        "x_Team": r.team,
        "x_CostCenter": run_tags.get(TAG_COST_CENTER),
        "x_Workload": run_tags.get(TAG_WORKLOAD),
        "x_PriceProfile": profile,
        "x_AllocationMode": run_tags.get(TAG_ALLOCATION_MODE),
        "x_RunStatus": r.status,
    }


# ===================================================================== writing
def _csv_cell(v: object) -> str:
    """FOCUS text: null is an empty cell, dates 'YYYY-MM-DDTHH:mm:ssZ', numbers plain decimals (no exponent)."""
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(v, float):
        text = format(Decimal(repr(v)).normalize(), "f")
        return "0" if text in ("-0", "0") else text
    return str(v)


def to_csv(rows: Iterable[Mapping[str, object]]) -> str:
    """The rows as FOCUS CSV: a header of :data:`COLUMNS`, one line per charge."""
    buf = io.StringIO()
    write_csv(rows, buf)
    return buf.getvalue()


def write_csv(rows: Iterable[Mapping[str, object]], out: TextIO) -> None:
    """:func:`to_csv`, written to ``out`` a row at a time."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for row in rows:
        w.writerow([_csv_cell(row[c]) for c in COLUMNS])


def _schema() -> "pa.Schema":
    import pyarrow as pa

    def kind(col: str) -> "pa.DataType":
        if col in _DATES:
            return pa.timestamp("ms", tz="UTC")  # Parquet has no seconds unit
        if col in _DECIMALS:
            return pa.float64()
        return pa.string()

    return pa.schema([(c, kind(c)) for c in COLUMNS])


def to_parquet(rows: Iterable[Mapping[str, object]], path: str, batch: int = 10_000) -> None:
    """The rows as a Parquet file: timestamps in UTC, costs and quantities as doubles, the rest strings.

    Written ``batch`` rows at a time (one row group each), so the rows can be a stream.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    with pq.ParquetWriter(path, schema) as writer:
        chunk: list[dict[str, object]] = []
        for row in rows:
            chunk.append({c: row[c] for c in COLUMNS})
            if len(chunk) >= batch:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))


def write(report: "CostReport", output: str | None, *, granularity: Granularity = "run",
          provider: str = PROVIDER, out: TextIO | None = None) -> None:
    """Stream the report's FOCUS rows to ``output``: Parquet for ``*.parquet``, else CSV.

    With no ``output`` the CSV goes to ``out`` (default: standard output).
    """
    import sys

    pairs = report.runs.select_with_tags("counted", "start")
    rows = iter_focus_rows(pairs, granularity=granularity, provider=provider)
    if output and output.lower().endswith((".parquet", ".pq")):
        to_parquet(rows, output)
    elif output:
        with open(output, "w", encoding="utf-8", newline="") as f:
            write_csv(rows, f)
    else:
        write_csv(rows, out or sys.stdout)
