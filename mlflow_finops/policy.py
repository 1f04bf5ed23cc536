"""The policy file, ``finops.toml``: data only, read with ``tomllib``, validated with pydantic.

Each section is a pydantic model that forbids unknown keys, so a typo is an
error that names the key and lists what was expected, never a silent default.
Later capabilities add their sections to :class:`Policy`.
"""

from __future__ import annotations

import os
from datetime import datetime
import sys
from pathlib import Path
from zoneinfo import ZoneInfo
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .policy_errors import PolicyError, describe_error, unknown_key
from .pricing import PriceCatalog

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Policy",
    "TagPolicy",
    "PolicyError",
    "load_policy",
    "find_policy_path",
    "POLICY_ENV",
    "DriftPolicy",
    "ColumnDriftPolicy",
    "PerformancePolicy",
    "ModelPolicy",
    "BudgetEnvelope",
    "TriggerPolicy",
]

POLICY_ENV = "MLFLOW_FINOPS_POLICY"
DEFAULT_POLICY_FILE = "finops.toml"


# Upper bounds of durations and counts: generous for any real policy, small enough that
# datetime arithmetic and MLflow's query limits never overflow on what the file says.
MAX_HOURS = 24 * 366  # a year
MAX_COUNT = 1000  # attempts, checks in a persistence window, ...


class _Section(BaseModel):
    # inf and NaN are never a price, a duration or a count
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_O = TypeVar("_O", bound="_Overridable")


class _Overridable(_Section):
    """A section that ``[models.NAME.<section>]`` may override key by key."""

    def merged(self: _O, override: _O | None) -> _O:
        """This section with the keys that ``override`` sets explicitly replaced."""
        if override is None:
            return self
        return self.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


class TagPolicy(_Section):
    """Attribution tags put on every new MLflow run (``finops.team`` and so on)."""

    team: str | None = None
    cost_center: str | None = None
    workload: str | None = None
    model: str | None = Field(None, description="Model the runs belong to (budget envelopes group by it).")
    extra: dict[str, str] = Field(
        default_factory=dict, description="More tags, logged as finops.<key>."
    )

    def resolve(self, env: os._Environ[str] | dict[str, str] | None = None) -> dict[str, str]:
        """Tags from the file, overridden by ``MLFLOW_FINOPS_TEAM`` / ``_COST_CENTER`` / ``_WORKLOAD`` / ``_MODEL``."""
        env = os.environ if env is None else env
        tags = {f"finops.{k}": v for k, v in self.extra.items()}
        for key in ("team", "cost_center", "workload", "model"):
            value = env.get(f"MLFLOW_FINOPS_{key.upper()}") or getattr(self, key)
            if value:
                tags[f"finops.{key}"] = str(value)
        return tags


# ------------------------------------------------------------------ drift gate (issue 3)
CorrectionName = Literal["none", "bonferroni", "bh"]
PerformanceMetric = Literal["accuracy", "f1", "roc_auc", "rmse", "mae", "r2"]


def _check_method(value: str | None) -> str | None:
    if value is not None:
        from .stattests import stat_test_kind

        try:
            stat_test_kind(value)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
    return value


class ColumnDriftPolicy(_Section):
    """Evidently stat test and threshold for one column (``[drift.per_column.NAME]``)."""

    method: str | None = Field(None, description="Evidently stat test name, e.g. 'ks', 'wasserstein', 'psi'.")
    threshold: float | None = Field(None, gt=0, le=MAX_COUNT, description="Threshold for that test.")

    _method = field_validator("method")(classmethod(lambda cls, v: _check_method(v)))


class PerformancePolicy(_Section):
    """Retrain when the model's metric on labelled current data degrades beyond ``margin``."""

    metric: PerformanceMetric = "accuracy"
    margin: float = Field(0.05, ge=0, description="Allowed degradation vs the reference, in metric units.")
    model_uri: str | None = Field(None, description="MLflow model URI, e.g. 'models:/churn@champion'.")
    baseline: Literal["reference", "promotion"] = Field(
        "reference",
        description="What the current score is compared with: the model on the reference data, or its score "
        "when it was promoted (a registry alias URI; a version without one: its first labelled window).",
    )
    min_rows: int = Field(30, ge=1, le=10**9, description="Labelled current rows needed to score the model.")


RetrainSignal = Literal["harm", "drift", "either"]


class DriftPolicy(_Overridable):
    """How the drift gate decides (``[drift]``; ``[models.NAME.drift]`` overrides any key)."""

    drift_share: float = Field(0.5, gt=0, le=1, description="Dataset drifts when drifted/checked >= this.")
    # 30 rows: Evidently's K-S test (its default for numeric columns up to 1,000 rows) then finds
    # a one-standard-deviation shift 88% of the time at p < 0.05 (71% at 20 rows, 24% at 10).
    min_rows: int = Field(30, ge=1, le=10**9, description="Fewer current rows -> decision 'insufficient_data'.")
    sample_rows: int = Field(
        50_000, ge=1000, le=10**8, description="Rows per side for distance tests on large data (see drift/sampling.py)."
    )
    method: str | None = Field(None, description="Stat test for every column (default: Evidently's choice).")
    num_method: str | None = None
    cat_method: str | None = None
    threshold: float | None = Field(None, gt=0, le=MAX_COUNT)
    num_threshold: float | None = Field(None, gt=0, le=MAX_COUNT)
    cat_threshold: float | None = Field(None, gt=0, le=MAX_COUNT)
    per_column: dict[str, ColumnDriftPolicy] = Field(default_factory=dict)
    columns: list[str] = Field(default_factory=list, description="Columns to watch; empty = all.")
    ignore: list[str] = Field(default_factory=list, description="Columns never checked.")
    cooldown_hours: float = Field(0.0, ge=0, le=MAX_HOURS, description="No second retrain trigger this soon after one.")
    persistence_k: int = Field(1, ge=1, le=MAX_COUNT, description="Retrain only when k of the last n checks drifted.")
    persistence_n: int = Field(1, ge=1, le=MAX_COUNT)
    correction: CorrectionName = Field("none", description="Multiple-testing correction of p-value tests.")
    performance: PerformancePolicy | None = None
    html_report: Literal["retrain", "always", "never"] = Field(
        "retrain",
        description="When a check logs Evidently's HTML report: on a retrain decision (of the drifted columns), "
        "always (every column), or never.",
    )
    retrain_on: RetrainSignal = Field(
        "harm",
        description="harm: the model's measured loss decides when labels are there, drift while they lag; "
        "drift: the drifted share only; either: drift or loss.",
    )

    _methods = field_validator("method", "num_method", "cat_method")(
        classmethod(lambda cls, v: _check_method(v))
    )

    def problems(self) -> list[str]:
        """Cross-key problems; checked on the merged policy, since a model may override one key only."""
        if self.persistence_k > self.persistence_n:
            return [f"persistence_k ({self.persistence_k}) must be <= persistence_n ({self.persistence_n})"]
        return []


class ModelPolicy(_Section):
    """One monitored model (``[models.NAME]``). Later issues add their keys here."""

    reference: str | None = Field(None, description="Reference data file (CSV or Parquet).")
    current: str | None = Field(
        None, description="Folder or file glob with new data; the newest file(s) form the window."
    )
    current_files: int = Field(1, ge=1, le=MAX_COUNT, description="How many newest files make up one window.")
    schedule: str | None = Field(None, description="Cron expression for `mlflow-finops schedule`.")
    experiment: str | None = Field(None, description="Monitoring experiment (default finops-monitoring/NAME).")
    target: str | None = Field(None, description="Label column: left out of drift, used by performance.")
    drift: DriftPolicy | None = Field(None, description="Overrides of [drift] for this model.")
    registered_model: str | None = Field(None, description="Model registry name (default: the model's name).")
    retrain: "RetrainPolicy | None" = Field(None, description="Overrides of [retrain] for this model.")
    trigger: "TriggerPolicy | None" = Field(None, description="Overrides of [trigger] for this model.")
    features: list[str] = Field(
        default_factory=list, description="Columns the model learns from; empty = every column but target and drop."
    )
    drop: list[str] = Field(default_factory=list, description="Columns never learned from nor judged (ids, dates).")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from croniter import croniter

            if not croniter.is_valid(value):
                raise ValueError(f"not a valid cron expression: {value!r}")
        return value


# ------------------------------------------------------------------ budgets (issue 5)
BudgetPeriod = Literal["day", "week", "month", "quarter", "year"]
BudgetPriority = Literal["critical", "standard", "exploratory"]


class BudgetEnvelope(_Section):
    """A spending envelope (``[budgets.NAME]``) for runs of some models and/or a team.

    Spend is summed from MLflow (``finops/cost_usd``) over the current calendar
    period in ``timezone``; see :mod:`mlflow_finops.budget`.
    """

    amount_usd: float = Field(..., gt=0, description="What the envelope allows per period, in USD.")
    period: BudgetPeriod = Field("month", description="Calendar period the amount covers.")
    per_job_usd: float | None = Field(None, gt=0, description="Cap for one (retrain) job.")
    priority: BudgetPriority = Field("standard", description="Who yields first when money is short.")
    models: list[str] = Field(default_factory=list, description="Runs tagged finops.model in this list.")
    team: str | None = Field(None, min_length=1, description="Runs tagged finops.team equal to this.")
    warn_at: float = Field(0.8, gt=0, le=1, description="Warn when spent >= warn_at x amount_usd.")
    timezone: str = Field("UTC", description="IANA time zone in which periods start (e.g. 'Europe/Paris').")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        if any(not m.strip() for m in value):
            raise ValueError("model names must not be empty")
        return value

    @model_validator(mode="after")
    def _scoped(self) -> "BudgetEnvelope":
        if not self.models and not self.team:
            raise ValueError("set models = [...] and/or team = \"...\" to say which runs the envelope covers")
        return self


# ------------------------------------------------------------------ Ray clusters
class NodePriceRule(_Section):
    """Prices for the Ray nodes whose labels all match (``[[ray.node_prices]]``); first match wins."""

    labels: dict[str, str] = Field(..., min_length=1, description="Ray node labels that must all match.")
    prices: dict[str, Any] = Field(..., description="[prices] keys that differ on these nodes.")

    @field_validator("prices")
    @classmethod
    def _valid_prices(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            PriceCatalog.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "?"
            raise ValueError(f"{key}: {err['msg']}") from None
        return value


class RayPolicy(_Section):
    """How work on a Ray cluster is priced (``[ray]``)."""

    address: str | None = Field(None, description="Ray cluster address (default: $RAY_ADDRESS or local).")
    node_prices: list[NodePriceRule] = Field(default_factory=list)
    max_node_metrics: int = Field(16, ge=0, le=10_000, description="Per-node metrics for at most this many nodes.")

    def prices_for(self, base: PriceCatalog, labels: dict[str, str]) -> PriceCatalog:
        """The catalog of a node: ``base`` with the first matching rule's prices applied."""
        for rule in self.node_prices:
            if all(labels.get(k) == v for k, v in rule.labels.items()):
                return PriceCatalog.model_validate({**base.model_dump(exclude_unset=True), **rule.prices})
        return base


# ------------------------------------------------------------------ windows and retraining
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class OffPeakRange(_Section):
    """``[[windows.off_peak]]``: days and an ``HH:MM`` range; ``end`` before ``start`` wraps midnight."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(DAYS), min_length=1
    )
    start: str = Field(..., description="HH:MM, local time")
    end: str = Field(..., description="HH:MM, local time; 24:00 is the end of the day")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        minutes(value)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> "OffPeakRange":
        if minutes(self.start) == minutes(self.end) % 1440 and minutes(self.end) != 1440:
            raise ValueError(f"start and end are both {self.start}: an empty window")
        return self

    def spans(self) -> list[tuple[int, int]]:
        """Minute-of-week intervals [a, b) this range covers."""
        a, b = minutes(self.start), minutes(self.end)
        out = []
        for d in self.days:
            base = DAYS.index(d) * 1440
            if b > a:
                out.append((base + a, base + b))
            else:  # wraps past midnight into the next day
                out.append((base + a, base + 1440))
                nxt = (base + 1440) % (7 * 1440)
                out.append((nxt, nxt + b))
        return [(x, y) for x, y in out if y > x]


class WindowPolicy(_Section):
    """``[windows]``: off-peak ranges in a time zone, and a cluster-idle condition."""

    timezone: str = Field("UTC", description="IANA time zone of the off-peak ranges.")
    off_peak: list[OffPeakRange] = Field(default_factory=list, description="Empty: any time of day.")
    min_free_cpus: float = Field(0.0, ge=0, le=10**6, description="Free CPUs the Ray cluster must have.")
    min_free_gpus: float = Field(0.0, ge=0, le=10**6, description="Free GPUs the Ray cluster must have.")
    max_wait_hours: float = Field(12.0, gt=0, le=MAX_HOURS, description="How long 'standard' retrains wait for a window.")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except Exception:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as 'Europe/Paris')") from None
        return value

    @model_validator(mode="after")
    def _no_overlap(self) -> "WindowPolicy":
        spans = sorted((s, i) for i, r in enumerate(self.off_peak) for s in r.spans())
        for ((a0, a1), i), ((b0, b1), j) in zip(spans, spans[1:]):
            if b0 < a1 and i != j:
                day = DAYS[(b0 // 1440) % 7]
                raise ValueError(
                    f"off_peak[{i}] and off_peak[{j}] overlap on {day} "
                    f"around {b0 % 1440 // 60:02d}:{b0 % 60:02d}"
                )
        return self

    def in_off_peak(self, now: datetime) -> bool:
        if not self.off_peak:
            return True
        local = now.astimezone(ZoneInfo(self.timezone))
        m = local.weekday() * 1440 + local.hour * 60 + local.minute
        return any(a <= m < b for r in self.off_peak for a, b in r.spans())


def minutes(hhmm: str) -> int:
    """'20:30' -> 1230; '24:00' -> 1440. Raises ValueError with the expected form."""
    try:
        h, m = hhmm.split(":")
        hi, mi = int(h), int(m)
    except ValueError:
        raise ValueError(f"{hhmm!r} is not a time of day in HH:MM form") from None
    if not (0 <= hi <= 24 and 0 <= mi < 60) or (hi == 24 and mi != 0):
        raise ValueError(f"{hhmm!r} is not a time of day in HH:MM form (00:00 .. 24:00)")
    return hi * 60 + mi


RetrainMetric = Literal["accuracy", "f1", "roc_auc", "rmse", "mae", "r2"]
RetrainStrategy = Literal["auto", "partial_fit", "warm_start", "refit"]
RetrainRunner = Literal["actor", "job"]
RetrainMemory = Literal["adaptive", "all"]


class RetrainPolicy(_Overridable):
    """How a model is retrained (``[retrain]``; ``[models.NAME.retrain]`` overrides any key)."""

    ray_address: str | None = Field(
        None, description="Ray Jobs API address, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS, else that)."
    )
    connect_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="How long joining the Ray cluster as a driver (the warm actor's runner) "
        "may take before the attempt runs as a Ray job instead; a cluster that is not there fails at once.",
    )
    strategy: RetrainStrategy = Field(
        "auto", description="auto: a full refit while the data is small (refit_max_rows), else partial_fit, "
        "else warm_start, else refit."
    )
    refit_max_rows: int = Field(
        100_000, ge=0, le=10**12,
        description="auto refits from scratch on everything the champion learned plus the new rows while they "
        "number at most this (0: never): on small data a refit costs about what an update does and adapts fully.",
    )
    metric: RetrainMetric = Field("accuracy", description="What champion and challenger are compared on.")
    margin: float = Field(0.0, ge=0, description="The challenger must beat the champion by more than this.")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Newest share of the new data held out.")
    memory: RetrainMemory = Field(
        "adaptive", description="adaptive: a refit also tries the new rows alone, forgetting what the champion "
        "learned, and keeps that when it predicts the held-out rows better by more than margin; all: a refit "
        "always learns everything the champion learned plus the new rows.",
    )
    deadline_hours: float = Field(24.0, gt=0, le=MAX_HOURS, description="A pending retrain not started by then is dropped.")
    max_attempts: int = Field(3, ge=1, le=MAX_COUNT, description="Tries of a failing job while budget remains.")
    backoff_s: float = Field(60.0, ge=0, le=MAX_HOURS * 3600, description="Wait before the 2nd try; doubles each time.")
    expected_cost_usd: float | None = Field(
        None, gt=0, description="Cost a job is expected to need (default: mean of the last 3 retrains)."
    )
    cap_tolerance: float = Field(0.05, ge=0, le=1, description="Hard stop at cap x (1 + this).")
    max_job_minutes: float = Field(
        60.0, gt=0, le=MAX_HOURS * 60, description="A job running longer is stopped and counts as failed (a hung job spends nothing)."
    )
    sample_interval_s: float = Field(2.0, gt=0, le=3600, description="Cost sampling interval inside the job.")
    poll_s: float = Field(2.0, gt=0, le=3600, description="How often the supervisor polls the job.")
    entrypoint_num_cpus: float = Field(1.0, ge=0, le=10**4, description="CPUs the job's driver reserves.")
    warm_start_step: int = Field(10, ge=1, le=10**6, description="Trees (or stages) added per step when warm-starting.")
    warm_start_steps: int = Field(5, ge=1, le=MAX_COUNT, description="How many such steps at most.")
    partial_fit_epochs: int = Field(5, ge=1, le=MAX_COUNT, description="Passes over the new data with partial_fit.")
    batch_rows: int = Field(2048, ge=1, le=10**9, description="Rows per partial_fit call.")
    runner: RetrainRunner = Field(
        "actor", description="actor: a warm Ray actor runs each retrain as a task; job: one Ray job per retrain."
    )
    warm_idle_s: float = Field(
        600.0, ge=0, le=MAX_HOURS * 3600, description="A warm retrain actor exits after this long without work."
    )


class TriggerPolicy(_Overridable):
    """When a retrain is worth its cost (``[trigger]``; ``[models.NAME.trigger]`` overrides any key).

    Losses and gains are in the retrain metric's units (0.01 = one point of accuracy).
    """

    tolerated_loss: float = Field(
        0.01, ge=0, le=MAX_COUNT, description="Loss since promotion that never triggers a retrain by itself."
    )
    value_per_1000_predictions_usd: float = Field(
        0.001, ge=0, le=10**9, description="What one point (0.01) of the metric is worth on 1,000 predictions "
        "served, USD (a point of accuracy: 10 more right answers in 1,000)."
    )
    predictions_per_day: float = Field(100.0, ge=0, le=10**15, description="Predictions the model serves a day.")
    horizon_days: float = Field(
        1.0, gt=0, le=10**6, description="Days of serving a retrain's gain is counted for: the time between two "
        "checks (a gain is measured again on every labelled window)."
    )
    value_per_point_usd: float | None = Field(
        None, ge=0, le=10**9, description="What one point (0.01) of the metric bought by a retrain is worth, USD. "
        "Unset: value_per_1000_predictions_usd x predictions_per_day / 1000 x horizon_days ($0.0001 by default); "
        "set: overrides them."
    )
    history: int = Field(5, ge=1, le=MAX_COUNT, description="Past retrains the expected gain and cost learn from.")
    follow_gains: bool = Field(
        True, description="Weigh a retrain on the next labelled window too when the last one bought more than "
        "tolerated_loss (the data is still moving; the streak ends with a retrain that buys less)."
    )
    min_labelled_rows: int = Field(30, ge=1, le=10**9, description="Labelled rows needed to measure the loss.")

    def point_value_usd(self) -> float:
        """What a point of the metric bought by a retrain is worth: ``value_per_point_usd`` when set,
        else what a point earns on the predictions served over ``horizon_days``."""
        if self.value_per_point_usd is not None:
            return self.value_per_point_usd
        return self.value_per_1000_predictions_usd * self.predictions_per_day / 1000 * self.horizon_days

    def merged(self, override: "TriggerPolicy | None") -> "TriggerPolicy":
        out = super().merged(override)
        if override is not None and "value_per_point_usd" not in override.model_fields_set and \
                {"value_per_1000_predictions_usd", "predictions_per_day", "horizon_days"} & override.model_fields_set:
            out = out.model_copy(update={"value_per_point_usd": None})  # a model that states its own value
        return out


class Policy(_Section):
    """The whole policy file. Every section is optional."""

    prices: PriceCatalog = Field(default_factory=PriceCatalog)
    tags: TagPolicy = Field(default_factory=TagPolicy)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    models: dict[str, ModelPolicy] = Field(default_factory=dict)
    budgets: dict[str, BudgetEnvelope] = Field(default_factory=dict)
    ray: RayPolicy = Field(default_factory=RayPolicy)
    windows: WindowPolicy = Field(default_factory=WindowPolicy)
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)
    trigger: TriggerPolicy = Field(default_factory=TriggerPolicy)

    source: str | None = Field(None, exclude=True, description="Where this policy was read from.")

    @model_validator(mode="after")
    def _drift_consistent(self) -> "Policy":
        problems = [f"[drift]: {p}" for p in self.drift.problems()]
        for name, mp in self.models.items():
            if mp.drift is not None:
                problems += [f"[models.{name}.drift]: {p}" for p in self.drift.merged(mp.drift).problems()]
        if self.models:
            for name, env in self.budgets.items():
                for m in env.models:
                    if m not in self.models:
                        problems.append(
                            f"[budgets.{name}].models: unknown model {m!r} "
                            f"(models in this policy: {', '.join(sorted(self.models))})"
                        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> "Policy":
        """Validate a parsed policy; raises :class:`PolicyError` naming each bad key."""
        if "source" in data:
            raise PolicyError(source, [unknown_key("source", [])])
        try:
            return cls.model_validate({**data, "source": source})
        except ValidationError as exc:
            raise PolicyError(source, [describe_error(err, cls) for err in exc.errors()]) from None

    # ---------------------------------------------------------- lookups
    def model(self, name: str) -> ModelPolicy:
        """``[models.<name>]``; a :class:`PolicyError` naming the models there are when absent."""
        if name not in self.models:
            raise PolicyError(self.source or "policy", [f"[models.{name}]: unknown model (models in this policy: "
                                                         f"{', '.join(sorted(self.models)) or 'none'})"])
        return self.models[name]

    def path(self, value: str) -> str:
        """A path the policy names: relative ones are relative to the policy file's folder."""
        p = Path(value).expanduser()
        if not p.is_absolute() and self.source and Path(self.source).is_file():
            p = Path(self.source).resolve().parent / p
        return str(p)

    def reference(self, name: str) -> str:
        """``[models.<name>].reference``, resolved (:meth:`path`); a :class:`PolicyError` when not set."""
        value = self.model(name).reference
        if not value:
            raise PolicyError(self.source or "policy", [f"[models.{name}].reference: not set"])
        return self.path(value)


def find_policy_path(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The explicit path, else ``$MLFLOW_FINOPS_POLICY``, else ``./finops.toml`` if present."""
    if path is not None:
        return Path(path)
    env = os.environ.get(POLICY_ENV)
    if env:
        return Path(env)
    local = Path.cwd() / DEFAULT_POLICY_FILE
    return local if local.is_file() else None


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Read and validate the policy file; an absent default file gives the default policy."""
    resolved = find_policy_path(path)
    if resolved is None:
        return Policy()
    source = str(resolved)
    try:
        raw = resolved.read_bytes()
    except FileNotFoundError:
        raise PolicyError(source, ["file not found"]) from None
    except OSError as exc:
        raise PolicyError(source, [f"cannot read file: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(source, [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, [f"not valid TOML: {exc}"]) from None
    return Policy.from_dict(data, source=source)
