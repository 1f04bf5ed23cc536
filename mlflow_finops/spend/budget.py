"""Budget envelopes and what has been spent from them, read from MLflow itself.

There is no side ledger: the spend of an envelope is the sum of
``finops/cost_usd`` over the runs that carry one (the same rule as the report: a run
without it is untracked and counts nothing) in its scope (tag ``finops.model`` in
``models``, or ``finops.team`` equal to ``team``) whose *start time* falls in
the current calendar period of the envelope's time zone, in every experiment
of the store (training, drift checks and retrains alike, deleted runs too:
the money was spent). Nested runs (``finops.nested_in``) are skipped because
their cost is already inside their parent's.

Projection: ``projected_usd = spent_usd / elapsed fraction of the period`` —
the current average rate carried to the end of the period. It is noisy at the
very start of a period (one run on day 1 of a month projects x30), which is
why warnings are raised on *spent* (``warn_at``) and the projection is shown
beside it, not used to block.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Callable, Iterable
from zoneinfo import ZoneInfo

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from ..money import format_usd
from ..names import METRIC_COST_USD, TAG_MODEL, TAG_NESTED_IN, TAG_TEAM
from ..policy import BudgetEnvelope, Policy
from ..store import PAGE_SIZE, all_experiment_ids, iter_runs, quote

_log = logging.getLogger(__name__)

__all__ = ["BudgetStatus", "spend", "budget_status", "period_bounds", "envelopes_for"]


@dataclass(frozen=True)
class BudgetStatus:
    """Where one envelope stands now. ``remaining_usd`` is negative when overspent."""

    name: str
    envelope: BudgetEnvelope
    period_start: datetime
    period_end: datetime
    now: datetime
    spent_usd: float
    remaining_usd: float
    projected_usd: float
    warn: bool
    runs: int
    # (unix seconds of run start, cost) per counted run, sorted: the burn-down chart's data
    points: tuple[tuple[float, float], ...] = field(default=(), repr=False)

    @property
    def amount_usd(self) -> float:
        return self.envelope.amount_usd

    @property
    def elapsed_fraction(self) -> float:
        return _fraction(self.period_start, self.period_end, self.now)

    @property
    def exceeded(self) -> bool:
        return self.spent_usd >= self.envelope.amount_usd

    @property
    def projected_over(self) -> bool:
        return self.projected_usd > self.envelope.amount_usd

    @property
    def state(self) -> str:
        """One word for tables and charts: OVER (spent it all), WARN (past warn_at), projected over, ok."""
        if self.exceeded:
            return "OVER"
        if self.warn:
            return "WARN"
        return "projected over" if self.projected_over else "ok"

    def allows(self, cost_usd: float) -> bool:
        """Whether a job expected to cost ``cost_usd`` fits the remaining money and the per-job cap."""
        cap = self.envelope.per_job_usd
        return cost_usd <= self.remaining_usd and (cap is None or cost_usd <= cap)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "amount_usd": self.amount_usd,
            "period": self.envelope.period,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "elapsed_fraction": round(self.elapsed_fraction, 6),
            "spent_usd": self.spent_usd,
            "remaining_usd": self.remaining_usd,
            "projected_usd": self.projected_usd,
            "warn_at": self.envelope.warn_at,
            "warn": self.warn,
            "exceeded": self.exceeded,
            "projected_over": self.projected_over,
            "runs": self.runs,
            "priority": self.envelope.priority,
            "per_job_usd": self.envelope.per_job_usd,
            "models": list(self.envelope.models),
            "team": self.envelope.team,
        }


def period_bounds(period: str, tz: str | ZoneInfo, now: datetime | None = None) -> tuple[datetime, datetime]:
    """Start (inclusive) and end (exclusive) of the calendar period holding ``now``, in ``tz``.

    Weeks start on Monday; quarters in January, April, July and October.
    Bounds are local midnights, so a day across a DST change is 23 or 25 hours.
    """
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    now = _aware(now).astimezone(zone)
    d = now.date()
    if period == "day":
        start, end = d, d + timedelta(days=1)
    elif period == "week":
        start = d - timedelta(days=d.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = d.replace(day=1)
        end = _add_months(start, 1)
    elif period == "quarter":
        start = date(d.year, 3 * ((d.month - 1) // 3) + 1, 1)
        end = _add_months(start, 3)
    elif period == "year":
        start, end = date(d.year, 1, 1), date(d.year + 1, 1, 1)
    else:
        raise ValueError(f"unknown budget period {period!r} (expected day, week, month, quarter or year)")
    return _midnight(start, zone), _midnight(end, zone)


def spend(
    envelope: BudgetEnvelope,
    client: MlflowClient | None = None,
    now: datetime | None = None,
    *,
    name: str = "",
    page_size: int = PAGE_SIZE,
    experiment_ids: Iterable[str] | None = None,
    on_page: Callable[[int], None] | None = None,
) -> BudgetStatus:
    """Sum the envelope's spend in its current period from MLflow (see the module doc)."""
    client = client or MlflowClient()
    now = _aware(now)
    start, end = period_bounds(envelope.period, envelope.timezone, now)
    ids = list(experiment_ids) if experiment_ids is not None else all_experiment_ids(client)
    base = [
        f"metrics.\"{METRIC_COST_USD}\" >= 0",  # has a cost, as the report counts; filtered in the store
        f"tags.\"{TAG_NESTED_IN}\" IS NULL",
        f"attributes.start_time >= {_ms(start)}",
        f"attributes.start_time < {_ms(end)}",
    ]
    scopes: list[tuple[str, str]] = [(TAG_MODEL, m) for m in envelope.models]
    if envelope.team:
        scopes.append((TAG_TEAM, envelope.team))
    seen: dict[str, tuple[float, float]] = {}
    for key, value in scopes:
        literal = quote(value)
        clauses = list(base)
        if literal is not None:
            clauses.append(f'tags."{key}" = {literal}')
        for run in iter_runs(
            client, ids, " AND ".join(clauses), view_type=ViewType.ALL, page_size=page_size, on_page=on_page
        ):
            if run.info.run_id in seen or run.data.tags.get(key) != value:
                continue
            cost = run.data.metrics.get(METRIC_COST_USD)
            if cost is None or not math.isfinite(cost):
                continue  # untracked (or still without a first sample): nothing known to count
            seen[run.info.run_id] = (run.info.start_time / 1000.0, float(cost))
    points = tuple(sorted(seen.values()))
    spent = sum(c for _, c in points)
    fraction = _fraction(start, end, now)
    projected = spent / fraction if fraction > 0 else spent
    status = BudgetStatus(
        name=name,
        envelope=envelope,
        period_start=start,
        period_end=end,
        now=now,
        spent_usd=spent,
        remaining_usd=envelope.amount_usd - spent,
        projected_usd=max(projected, spent),
        warn=spent >= envelope.warn_at * envelope.amount_usd,
        runs=len(points),
        points=points,
    )
    _log.debug("budget %s: %s of %s over %d run(s)", name, format_usd(spent), format_usd(envelope.amount_usd),
               len(points))
    return status


def budget_status(
    policy: Policy,
    client: MlflowClient | None = None,
    now: datetime | None = None,
    *,
    names: Iterable[str] | None = None,
    page_size: int = PAGE_SIZE,
) -> list[BudgetStatus]:
    """:func:`spend` for every envelope of the policy (or the ``names`` given), in file order.

    Raises ``KeyError`` naming an unknown envelope.
    """
    client = client or MlflowClient()
    wanted = list(names) if names is not None else list(policy.budgets)
    unknown = [n for n in wanted if n not in policy.budgets]
    if unknown:
        known = ", ".join(policy.budgets) or "none defined"
        raise KeyError(f"unknown budget envelope {unknown[0]!r} (known: {known})")
    ids = all_experiment_ids(client)
    return [
        spend(policy.budgets[n], client, now, name=n, page_size=page_size, experiment_ids=ids) for n in wanted
    ]


def envelopes_for(policy: Policy, model: str | None = None, team: str | None = None) -> list[str]:
    """Names of the envelopes whose scope covers a run of ``model`` by ``team``."""
    return [
        name
        for name, env in policy.budgets.items()
        if (model is not None and model in env.models) or (team is not None and env.team == team)
    ]


# ---------------------------------------------------------------- helpers
def _aware(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)


def _midnight(d: date, zone: ZoneInfo) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=zone)


def _add_months(d: date, months: int) -> date:
    m = d.month - 1 + months
    return date(d.year + m // 12, m % 12 + 1, 1)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _fraction(start: datetime, end: datetime, now: datetime) -> float:
    """Elapsed share of the period in real seconds (aware datetimes in one zone subtract naively)."""
    total = end.timestamp() - start.timestamp()
    return min(max((now.timestamp() - start.timestamp()) / total, 0.0), 1.0)
