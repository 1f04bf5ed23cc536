"""What the FinOps page shows, read from the store in one paged pass.

The same arithmetic as ``mlflow-finops report`` (:func:`mlflow_finops.spend.rollup.run_cost`
per run, :func:`~mlflow_finops.spend.rollup.groups` per team / model / experiment), so the
page's totals equal the report's for the same period. One pass over the runs in the
period (:func:`mlflow_finops.store.iter_runs`, 10,000 per page) also keeps what the Pareto
fronts (each experiment's own quality metric) and the retrain lineage need; budgets are
read as ``mlflow-finops budget`` reads them (their own calendar period, deleted runs too).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Iterator

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from ..names import (METRIC_COST_USD, METRIC_EVAL_CHALLENGER_PREFIX, METRIC_REALIZED_GAIN, REPORTS_EXPERIMENT,
                     RETRAINS_EXPERIMENT, TAG_DRIFT_RUN_ID, TAG_MODEL, TAG_MODEL_VERSION, TAG_REASON,
                     TAG_RETRAIN_STATE, TAG_ROLLED_BACK, RetrainState, eval_challenger, eval_champion)
from ..policy import PolicyError, find_policy_path, load_policy
from ..scoring import HIGHER_IS_BETTER
from ..spend import rollup
from ..spend.budget import BudgetStatus, budget_status
from ..spend.report import CostReport, ReportError
from ..store import iter_runs

if TYPE_CHECKING:  # pragma: no cover
    from ..charting import Chart

_log = logging.getLogger(__name__)

__all__ = ["PageData", "Front", "Retrain", "gather", "fronts", "FRONTS"]

FRONTS = 4  # Pareto charts drawn: the most expensive experiments (each chart costs 0.3-3 s to draw)
RETRAINS = 50  # newest retrains listed
_RETRAINS_PREFIX = RETRAINS_EXPERIMENT.split("{")[0]  # "finops-retrains/"


@dataclass(frozen=True)
class Retrain:
    """One retrain run and what it bought: the challenger's held-out metric against the champion's."""

    run_id: str
    experiment_id: str
    model: str
    state: str
    start_time: float
    cost_usd: float | None
    drift_run_id: str | None
    model_version: str | None
    reason: str
    metric: str | None = None
    champion: float | None = None
    challenger: float | None = None
    # what the promoted version realized on the first labelled window after its promotion (metric units,
    # against the version it replaced), and why it was rolled back when that was a loss
    realized: float | None = None
    rolled_back: str = ""

    @property
    def gain(self) -> float | None:
        """The challenger's improvement over the champion (positive = better), in metric units."""
        if self.metric is None or self.champion is None or self.challenger is None:
            return None
        higher = HIGHER_IS_BETTER.get(self.metric, rollup.metric_goal(self.metric) == "max")
        return (self.challenger - self.champion) if higher else (self.champion - self.challenger)

    @property
    def bought(self) -> float:
        """What the model gained: the gain when the challenger was promoted, else nothing."""
        g = self.gain
        return max(g, 0.0) if self.state == RetrainState.PROMOTED and g is not None else 0.0


@dataclass(frozen=True)
class Front:
    """One experiment's cost-vs-metric chart and its Pareto runs (cheapest first)."""

    experiment: str
    experiment_id: str
    metric: str
    goal: str
    chart: "Chart"
    front: list[rollup.RunCost]


@dataclass
class PageData:
    """Everything one rendering of the page needs, with how long reading it took."""

    report: CostReport
    budgets: list[BudgetStatus] = field(default_factory=list)
    policy_source: str | None = None
    policy_error: str | None = None
    quality: dict[str, dict[str, float]] = field(default_factory=dict)  # run id -> its model metrics
    retrains: list[Retrain] = field(default_factory=list)
    experiment_ids: dict[str, str] = field(default_factory=dict)  # experiment name -> id
    run_experiments: dict[str, str] = field(default_factory=dict)  # run id -> experiment id
    seconds: float = 0.0


def gather(client: MlflowClient, since: datetime | None, until: datetime | None, *,
           page_size: int | None = None) -> PageData:
    """Read the period's runs once, then the budgets; raises ReportError for an empty period.

    Charts are drawn later (:func:`fronts`), so the page can send its tables first.
    """
    if since and until and since >= until:
        raise ReportError(f"empty period: since {since.isoformat()} is not before until {until.isoformat()}")
    t0 = time.perf_counter()
    names = _experiment_names(client)
    clauses = []
    if since:
        clauses.append(f"attributes.start_time >= {int(since.timestamp() * 1000)}")
    if until:
        clauses.append(f"attributes.start_time < {int(until.timestamp() * 1000)}")
    rows: list[rollup.RunCost] = []
    quality: dict[str, dict[str, float]] = {}
    retrains: list[Retrain] = []
    pages = 0

    def page_read(_: int) -> None:
        nonlocal pages
        pages += 1

    kwargs = {"page_size": page_size} if page_size else {}
    for run in iter_runs(client, list(names), " AND ".join(clauses), on_page=page_read, **kwargs):
        row, q = rollup.run_cost(run, names)
        rows.append(row)
        if row.tracked and q:
            quality[row.run_id] = q
        if row.experiment.startswith(_RETRAINS_PREFIX) and TAG_RETRAIN_STATE in run.data.tags:
            retrains.append(_retrain(run, row))
    # the report's own choice of metric, so its best-run columns match `mlflow-finops report`
    counts: Counter[str] = Counter()
    for q in quality.values():
        counts.update(q.keys())
    metric = rollup.pick_metric(counts)
    if metric:
        rows = [rollup.with_metric(r, quality.get(r.run_id, {}).get(metric)) if r.tracked else r for r in rows]
    report = CostReport(runs=rows, metric=metric, goal=rollup.metric_goal(metric), since=since, until=until,
                        pages=pages, read_seconds=time.perf_counter() - t0)
    data = PageData(report=report, experiment_ids={v: k for k, v in names.items()},
                    run_experiments={r.run_id: r.experiment_id for r in rows}, quality=quality)
    data.retrains = sorted(retrains, key=lambda r: -r.start_time)[:RETRAINS]
    _read_budgets(client, data)
    data.seconds = time.perf_counter() - t0
    _log.info("finops page: %d run(s) in %d page(s), %.2fs", len(rows), pages, data.seconds)
    return data


def _experiment_names(client: MlflowClient) -> dict[str, str]:
    """experiment id -> name of every active experiment but the reports' own (as the report reads them)."""
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        out.update({e.experiment_id: e.name for e in page if e.name != REPORTS_EXPERIMENT})
        token = page.token
        if not token:
            return out


def _retrain(run, row: rollup.RunCost) -> Retrain:
    tags, m = run.data.tags, run.data.metrics
    prefix = METRIC_EVAL_CHALLENGER_PREFIX
    metric = next((k[len(prefix):] for k in sorted(m) if k.startswith(prefix)), None)
    cost = m.get(METRIC_COST_USD)
    return Retrain(
        run_id=row.run_id, experiment_id=row.experiment_id,
        model=tags.get(TAG_MODEL) or row.experiment[len(_RETRAINS_PREFIX):],
        state=tags.get(TAG_RETRAIN_STATE, ""), start_time=row.start_time,
        cost_usd=float(cost) if cost is not None and math.isfinite(cost) else None,
        drift_run_id=tags.get(TAG_DRIFT_RUN_ID), model_version=tags.get(TAG_MODEL_VERSION),
        reason=tags.get(TAG_REASON, ""), metric=metric,
        champion=m.get(eval_champion(metric)) if metric else None,
        challenger=m.get(eval_challenger(metric)) if metric else None,
        realized=m.get(METRIC_REALIZED_GAIN), rolled_back=tags.get(TAG_ROLLED_BACK, ""),
    )


def _read_budgets(client: MlflowClient, data: PageData) -> None:
    """The policy the server was started with ($MLFLOW_FINOPS_POLICY, else ./finops.toml) and its envelopes."""
    path = find_policy_path()
    data.policy_source = str(path) if path else None
    if path is None:
        return
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        data.policy_error = str(exc)
        return
    if policy.budgets:
        data.budgets = budget_status(policy, client)


def fronts(data: PageData) -> Iterator[Front]:
    """Cost vs each experiment's own most common model metric, for the most expensive experiments, one by one."""
    from ..spend import charts

    report, quality = data.report, data.quality
    by_exp: dict[str, list[rollup.RunCost]] = {}
    for r in report.counted:
        if r.run_id in quality and not r.experiment.startswith("finops-"):
            by_exp.setdefault(r.experiment, []).append(r)
    drawn = 0
    for group in report.groups("experiment"):
        runs = by_exp.get(group.key)
        if not runs:
            continue
        counts: Counter[str] = Counter()
        for r in runs:
            counts.update(quality[r.run_id].keys())
        metric = rollup.pick_metric(counts)
        points = [(r, quality[r.run_id].get(metric)) for r in runs]
        points = [(r, v) for r, v in points if v is not None]
        if metric is None or len(points) < 2:
            continue
        goal = rollup.metric_goal(metric)
        chart = charts.cost_vs_metric([(r.label, r.cost_usd, v, r.experiment) for r, v in points], metric, goal,
                                      f"{group.key}: cost vs {metric}")
        front = [points[i][0] for i in charts.pareto_front([(r.cost_usd, v) for r, v in points], goal)]
        front = [rollup.with_metric(r, quality[r.run_id][metric]) for r in front]
        yield Front(group.key, runs[0].experiment_id, metric, goal, chart, front)
        drawn += 1
        if drawn >= FRONTS:
            return
