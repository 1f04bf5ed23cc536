"""The cost tracker: one sampler thread per tracked process, logging ``finops/*`` to MLflow.

``autolog()`` patches ``mlflow.start_run`` / ``mlflow.end_run`` (MLflow has no
run start/end hook for plugins) so that the first run started afterwards gets
a :class:`CostTracker`; nested runs started while it is live get the cost of
their own stretch (tagged ``finops.nested_in``) from the same sampler, never a
second one. Resuming a run (``start_run(run_id=...)``) adds to the cost it
already carries.

What is sampled sits behind one interface (:mod:`mlflow_finops.cost.samplers`):
the process tree with its GPUs, and the Ray job's workers on every node.

Nothing here may break training: every hook is wrapped, a failing sample is
reported and retried with backoff (the kernel's counters are cumulative, so a
later reading recovers the total; the run is ``degraded`` only when something
is really missing), and delivery to MLflow runs on its own thread (see
:mod:`mlflow_finops.cost.delivery`).

A scheduler stops training with SIGTERM first: the first tracker started in the
main thread installs a handler that flushes (final sample, delivery, the run
ended KILLED) and then does what was done before (a user's handler runs; the
default one still ends the process). SIGKILL leaves the run RUNNING: the next
tracked run on the host ends it (:mod:`mlflow_finops.cost.orphans`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import mlflow

from .._env import env_flag, env_float
from ..money import format_usd
from ..names import (
    CORE_METRICS,
    COST_VIEW_KEY,
    ENV_CHARGE_PROCESS_START,
    ENV_CHART_MIN_S,
    ENV_DISABLE,
    ENV_FLUSH_TIMEOUT_S,
    ENV_INTERVAL_S,
    ENV_LOG_CHARTS,
    ENV_METRICS,
    METRICS_ALL,
    METRICS_CORE,
    METRIC_GPU_PEAK_MEMORY_GB,
    METRIC_PREFIX,
    TAG_ALLOCATED_CPUS,
    TAG_ALLOCATION_MODE,
    TAG_COST,
    TAG_END_REASON,
    TAG_INTERVAL_S,
    TAG_MARKET,
    TAG_NESTED_IN,
    TAG_NOTE,
    TAG_PRICE_PROFILE,
    TAG_SHARED_VIEW_PREFIX,
    TAG_TRACKED,
    TAG_TRACKING_ERROR,
    TAG_TRACKING_STATUS,
    TRACKING_COMPLETE,
    TRACKING_DEGRADED,
    TRACKING_LIVE,
)
from ..policy import Policy, RayPolicy, load_policy
from ..pricing import Allocation, CostBreakdown, PriceCatalog
from .context import policy_in_use, run_tags, use_policy
from .delivery import Batch, Outbox
from .gpu import GpuSampler
from .orphans import END_SIGTERM, end_orphaned_runs, process_tags
from .process import ProcessTreeSampler, allocated_cpus, allocated_ram_gb
from .ray_nodes import RayClusterSampler, RaySampler
from .samplers import GB, RunUsage, Sampler

_log = logging.getLogger(__name__)

__all__ = ["CostTracker", "CpuMark", "autolog", "track_cost", "active_tracker", "charge_runs_from"]

DEFAULT_INTERVAL_S = 10.0
# A failing sample is retried after 2, 4, then 8 intervals (at most MAX_BACKOFF_S, unless the
# interval itself is longer), for as long as the run lasts.
BACKOFF_DOUBLINGS = 3
MAX_BACKOFF_S = 60.0
ORPHAN_SCAN_EVERY_S = 300.0  # per tracking URI and process: runs of killed processes are looked for
MAX_HISTORY = 5000
CHART_MIN_S = 300.0  # runs shorter than this get no timeline chart ($MLFLOW_FINOPS_CHART_MIN_S)
COST_NOTE_PREFIX = "**Cost (mlflow-finops):**"  # our line in the run's description, replaced on resume


def metrics_setting() -> str:
    """``$MLFLOW_FINOPS_METRICS``: ``all`` (default) or ``core`` (:data:`CORE_METRICS` only)."""
    value = os.environ.get(ENV_METRICS, METRICS_ALL).strip().lower() or METRICS_ALL
    if value not in (METRICS_ALL, METRICS_CORE):
        raise ValueError(f"{ENV_METRICS}={value!r}: must be {METRICS_ALL!r} or {METRICS_CORE!r}")
    return value


def cost_note(description: str, line: str) -> str:
    """``description`` with our cost line replaced, or appended below the user's own text."""
    kept = [x for x in description.splitlines() if not x.startswith(COST_NOTE_PREFIX)]
    text = "\n".join(kept).rstrip()
    return f"{text}\n\n{line}" if text else line


def cost_view_state(columns: list[str]) -> str:
    """The runs-table view MLflow's UI loads from an experiment tag: the cost tag beside the metrics."""
    # The cost wide enough for "$0.0000017" (MLflow's 100 px default clips it); the UI applies
    # a width only to a column named in columnOrder.
    cost = f"tags.`{TAG_COST}`"
    return json.dumps({"selectedColumns": ["attributes.`Source`", *columns], "columnOrder": columns,
                       "columnWidths": {cost: 150}})


def resolve_prices(
    prices: PriceCatalog | Mapping[str, Any] | None = None, policy: Policy | str | None = None
) -> PriceCatalog:
    """Defaults < policy file ``[prices]`` < ``MLFLOW_FINOPS_*`` < ``prices`` argument."""
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    return PriceCatalog.resolve(pol.prices, os.environ, prices)


class CostTracker:
    """Samples one process tree (and a Ray driver's workers) every ``interval_s`` and logs
    its cost to one MLflow run.

    Use :func:`track_cost` or :func:`autolog` rather than this class directly.
    ``breakdown()`` is the cost so far; ``on_sample(fn)`` registers a callback
    that gets each new breakdown (a budget cap uses it to stop training).
    """

    def __init__(
        self,
        run_id: str,
        *,
        interval_s: float | None = None,
        prices: PriceCatalog | None = None,
        tracking_uri: str | None = None,
        log_timeseries: bool = True,
        offset: CostBreakdown | None = None,
        run_start_ms: int | None = None,
        pid: int | None = None,
        gpu: GpuSampler | None = None,
        flush_timeout_s: float | None = None,
        ray_policy: RayPolicy | None = None,
        log_charts: bool | None = None,
        policy: Policy | None = None,
    ):
        self.run_id = run_id
        # The policy the run is tracked under: its [tags] and [ray] node prices too, not only
        # [prices] (None: each is found as usual, $MLFLOW_FINOPS_POLICY or ./finops.toml).
        self.policy = policy
        self.interval_s = interval_s or env_float(ENV_INTERVAL_S, DEFAULT_INTERVAL_S)
        self.prices = prices or resolve_prices(policy=policy)
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.log_timeseries = log_timeseries
        self.flush_timeout_s = flush_timeout_s or env_float(ENV_FLUSH_TIMEOUT_S, 15.0)
        self._offset = offset or CostBreakdown(allocation_mode=self.prices.allocation_mode)
        self._run_start_ms = run_start_ms or int(time.time() * 1000)
        gpu = gpu if gpu is not None else GpuSampler()
        self._tree = ProcessTreeSampler(pid, gpu=gpu)
        # Ray: the job's workers on every node, attached once this process is a Ray driver.
        if ray_policy is None and policy is not None:
            ray_policy = policy.ray
        self._ray = RaySampler(self.prices, ray_policy, name=f"finops-ray-{run_id[:8]}")
        self._samplers: list[Sampler[Any]] = [self._ray, self._tree]
        self._usage = RunUsage()
        self.allocation = Allocation(
            cpus=self.prices.allocated_cpus or allocated_cpus(),
            ram_gb=self.prices.allocated_ram_gb or allocated_ram_gb(),
            gpus=self.prices.allocated_gpus if self.prices.allocated_gpus is not None else len(gpu.devices),
            gpu_models=gpu.models,
        )
        # Held for a whole sample: samplers keep state between readings, and the training
        # thread samples too (sample_now, nested runs).
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox = Outbox(name=f"finops-outbox-{run_id[:8]}")
        self._listeners: list[Callable[[CostBreakdown], None]] = []
        self._segments: dict[str, CostBreakdown] = {}
        self._errors = 0  # consecutive failed samples
        self._failures = 0  # failed samples in all
        self.degraded_reason: str | None = None  # set when usage is really missing (the last sample failed)
        self.end_reason: str | None = None  # finops.end_reason, when tracking ends the run (SIGTERM)
        self._last: CostBreakdown = self._offset
        self.log_charts = env_flag(ENV_LOG_CHARTS, True) if log_charts is None else log_charts
        # Drawing the chart costs ~2 CPU-s (matplotlib import + render): only worth it on runs
        # long enough for that to be small; shorter runs have MLflow's own metric charts.
        self.chart_min_s = env_float(ENV_CHART_MIN_S, CHART_MIN_S)
        self.sampling_cpu_s = 0.0  # CPU the sampler thread used
        self._caller_cpu_s = 0.0  # CPU start() and stop() used on the training's own thread
        self.chart_cpu_s = 0.0  # CPU the timeline chart took, drawn after the run ended
        self.recovery_cpu_s = 0.0  # CPU the look for killed processes' runs took (in the background)
        # (unix time, cumulative breakdown) per sample, for the run's cost timeline chart
        self.history: list[tuple[float, CostBreakdown]] = []
        self.samples = 0
        self.running = False
        self._core = metrics_setting() == METRICS_CORE

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "CostTracker":
        cpu0 = time.thread_time()
        self._t0 = time.time()
        self._mark = _charge_mark
        if self._mark is not None:
            # A long-lived worker (the warm retrain actor): everything its process used since
            # the previous run's last reading (or its start) is this run's, idle upkeep included.
            self._t0 = self._mark.time
            self._tree.charge_from(self._t0, self._usage, self._mark.cpu_s, self._mark.rss_bytes)
        elif env_flag(ENV_CHARGE_PROCESS_START, False):
            # A process that exists only for this run (a retrain job): its start-up (imports,
            # loading data and models) is part of the run's cost too.
            self._t0 = min(self._t0, self._tree.root.create_time())
            self._tree.charge_from(self._t0, self._usage)
        self._ray.start(self._t0)
        self._tree.fold(self._tree.collect(), self._usage)  # the tree's baseline
        self._outbox.start(sync_spool_for=self.tracking_uri)
        tags = {
            TAG_TRACKED: "true",
            TAG_TRACKING_STATUS: TRACKING_LIVE,
            TAG_PRICE_PROFILE: self.prices.profile,
            TAG_ALLOCATION_MODE: self.prices.allocation_mode,
            TAG_MARKET: self.prices.market,
            TAG_INTERVAL_S: f"{self.interval_s:g}",
            TAG_ALLOCATED_CPUS: f"{self.allocation.cpus:g}",
            **run_tags(self.policy),
            **process_tags(),
        }
        self._outbox.put(Batch(self.tracking_uri, self.run_id, tags=tags))
        with _state_lock:
            self.running = True
            _running.add(self)
        self._thread = threading.Thread(target=self._loop, name=f"finops-sampler-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        _install_sigterm_handler()
        self._end_orphans_in_background()
        _log.debug("cost tracking started for run %s every %.1fs", self.run_id, self.interval_s)
        self._caller_cpu_s += time.thread_time() - cpu0
        return self

    def stop(self, status: str | None = None) -> CostBreakdown:
        """Take a last sample, log the final scalars and deliver (or spool) everything."""
        with _state_lock, self._lock:
            if not self.running:
                return self._last
            self.running = False
            _running.discard(self)
        cpu0 = time.thread_time()
        self._stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._safe_sample(final=True)  # always: the counters are cumulative, it recovers what failed before
        final = self._last
        if self._mark is not None:  # the next run starts where this one's last reading ended
            local = self._usage.local
            self._mark.time = local.last_time or self._mark.time
            self._mark.cpu_s = (self._tree.cpu_baseline_s or 0.0) + local.cpu_s
            self._mark.rss_bytes = local.last_rss
        for run_id in list(self._segments):
            self.close_segment(run_id)
        tags: dict[str, str] = {}
        final_only: dict[str, float] = {}
        missing = [self.degraded_reason] if self.degraded_reason else []
        for sampler in self._samplers:
            summary = sampler.close(self._usage)
            tags.update(summary.tags)
            final_only.update(summary.metrics)
            if summary.lost:
                missing.append(summary.lost)
        tags[TAG_TRACKING_STATUS] = TRACKING_DEGRADED if missing else TRACKING_COMPLETE
        tags[TAG_COST] = format_usd(final.cost_usd)
        if missing:
            tags[TAG_TRACKING_ERROR] = "; ".join(missing)[:500]
        if self.end_reason:
            tags[TAG_END_REASON] = self.end_reason
        self._outbox.put(
            Batch(self.tracking_uri, self.run_id, self._metric_rows(final, final=True, extra=final_only), tags)
        )
        spooled = self._outbox.close(self.flush_timeout_s)
        if not spooled:
            self._publish_cost_view(final)
        ran_s = self.history[-1][0] - self._t0 if self.history else 0.0
        if self.log_charts and not spooled and len(self.history) >= 2 and ran_s >= self.chart_min_s:
            self._log_timeline()
        self._caller_cpu_s += time.thread_time() - cpu0
        return final

    @property
    def overhead_cpu_s(self) -> float:
        """CPU seconds tracking itself used: sampling, delivery, start and stop.

        Measured per thread (``time.thread_time``), so it is exact where wall-time
        comparisons drown in noise. The timeline chart, drawn after ``end_run``
        returned, is counted apart (``chart_cpu_s``).
        """
        return self.sampling_cpu_s + self._outbox.cpu_s + self._caller_cpu_s + self.recovery_cpu_s

    def _publish_cost_view(self, final: CostBreakdown) -> None:
        """Put the cost where people look in MLflow's UI: a line in the run's description (top of
        the run page, the user's own text kept) linking to the experiment's saved runs-table view
        with the cost tag beside the run's own metrics. Four requests at run end; never raises."""
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.tracking_uri)
            run = client.get_run(self.run_id)
            exp_id = run.info.experiment_id
            view_tag = TAG_SHARED_VIEW_PREFIX + COST_VIEW_KEY
            old = client.get_experiment(exp_id).tags.get(view_tag)
            columns = json.loads(old)["selectedColumns"][1:] if old else [f"tags.`{TAG_COST}`"]
            for key in sorted(run.data.metrics):
                if not key.startswith(METRIC_PREFIX) and f"metrics.`{key}`" not in columns:
                    columns.append(f"metrics.`{key}`")
            state = cost_view_state(columns)
            if state != old:
                client.set_experiment_tag(exp_id, view_tag, state)
            line = (f"{COST_NOTE_PREFIX} {format_usd(final.cost_usd)} ({final.allocation_mode}; idle "
                    f"{format_usd(final.idle_cost_usd)}) · "
                    f"[compare runs by cost](#/experiments/{exp_id}/runs?viewStateShareKey={COST_VIEW_KEY})")
            client.set_tag(self.run_id, TAG_NOTE, cost_note(run.data.tags.get(TAG_NOTE, ""), line))
        except Exception as exc:  # the figures are logged; this is presentation only
            _log.debug("mlflow-finops: cost line / runs view not written for %s: %s", self.run_id, exc)

    def _end_orphans_in_background(self) -> None:
        """End the runs that killed processes of this host left RUNNING (:mod:`.orphans`).

        On a daemon thread, so training never waits for it; at most every
        ORPHAN_SCAN_EVERY_S per tracking URI in one process.
        """
        now = time.monotonic()
        with _state_lock:
            last = _orphan_scans.get(self.tracking_uri)
            if last is not None and now - last < ORPHAN_SCAN_EVERY_S:
                return
            _orphan_scans[self.tracking_uri] = now

        def scan() -> None:
            cpu0 = time.thread_time()
            try:
                end_orphaned_runs(self.tracking_uri, by=f"the next tracked run on this host ({self.run_id})")
            except Exception as exc:  # `mlflow-finops sync` does it too
                _log.debug("looking for runs of killed processes failed: %s", exc)
            finally:
                self.recovery_cpu_s = time.thread_time() - cpu0

        threading.Thread(target=scan, name=f"finops-orphans-{self.run_id[:8]}", daemon=True).start()

    def _log_timeline(self) -> None:
        """Log the run's cost timeline (PNG + HTML) without holding up the training code.

        A non-daemon thread: ``end_run`` returns at once, and the interpreter
        still waits for the chart before it exits.
        """
        history = list(self.history)

        def render() -> None:
            cpu0 = time.thread_time()
            try:
                from .timeline import log_cost_timeline

                log_cost_timeline(history, self.run_id, self.tracking_uri)
            except Exception as exc:
                _log.warning("mlflow-finops: cost timeline chart not logged: %s", exc)
            finally:
                self.chart_cpu_s = time.thread_time() - cpu0

        self._chart_thread = threading.Thread(target=render, name=f"finops-chart-{self.run_id[:8]}")
        self._chart_thread.start()

    def breakdown(self) -> CostBreakdown:
        """Cost so far (including what a resumed run already carried)."""
        return self._last

    @property
    def cost_usd(self) -> float:
        return self._last.cost_usd

    @property
    def ray_cluster(self) -> RayClusterSampler | None:
        """The Ray job's sampler once attached (benchmarks read its probes' CPU)."""
        return self._ray.cluster

    def on_sample(self, fn: Callable[[CostBreakdown], None]) -> None:
        """Call ``fn(breakdown)`` after every sample, on the sampler thread."""
        self._listeners.append(fn)

    def sample_now(self) -> CostBreakdown:
        self._safe_sample()
        return self._last

    # ------------------------------------------------------------ segments
    def open_segment(self, run_id: str) -> None:
        """Start accounting a nested run's own stretch of this tracker's cost."""
        self._safe_sample()
        self._segments[run_id] = self._last
        tags = {TAG_TRACKED: "true", TAG_NESTED_IN: self.run_id, TAG_TRACKING_STATUS: TRACKING_LIVE, **process_tags()}
        self._outbox.put(Batch(self.tracking_uri, run_id, tags=tags))

    def close_segment(self, run_id: str) -> CostBreakdown | None:
        start = self._segments.pop(run_id, None)
        if start is None:
            return None
        self._safe_sample()
        seg = self._last - start
        tags = {
            TAG_TRACKED: "true",
            TAG_NESTED_IN: self.run_id,
            TAG_PRICE_PROFILE: self.prices.profile,
            TAG_ALLOCATION_MODE: self.prices.allocation_mode,
            TAG_TRACKING_STATUS: TRACKING_COMPLETE,
            TAG_COST: format_usd(seg.cost_usd),
        }
        self._outbox.put(Batch(self.tracking_uri, run_id, self._metric_rows(seg, final=True), tags))
        return seg

    # --------------------------------------------------------------- thread
    def _loop(self) -> None:
        while not self._stop_event.wait(self._next_wait()):
            t = time.thread_time()
            self._safe_sample()
            self.sampling_cpu_s += time.thread_time() - t

    def _next_wait(self) -> float:
        """The interval, stretched while samples fail (retried for as long as the run lasts)."""
        if not self._errors:
            return self.interval_s
        backoff = self.interval_s * 2 ** min(self._errors, BACKOFF_DOUBLINGS)
        return min(backoff, max(self.interval_s, MAX_BACKOFF_S))

    def _safe_sample(self, final: bool = False) -> None:
        try:
            self._sample(final)
        except Exception as exc:
            self._errors += 1
            self._failures += 1
            if self._failures == 1:
                _log.warning("mlflow-finops: cost sample failed (training continues; retried): %s", exc,
                             exc_info=True)
            if final:
                self.degraded_reason = f"the last sample failed ({type(exc).__name__}: {exc})"
                _log.warning("mlflow-finops: cost tracking degraded for run %s: %s", self.run_id, exc)
            return
        if self._errors:
            _log.info("mlflow-finops: cost samples work again after %d failure(s); nothing lost", self._errors)
            self._errors = 0
        for fn in list(self._listeners):
            try:
                fn(self._last)
            except Exception:
                _log.exception("mlflow-finops: cost listener failed")

    def _sample(self, final: bool) -> None:
        with self._lock:
            for sampler in self._samplers:
                sampler.fold(sampler.collect(final), self._usage)
            local = self._usage.local
            at = local.last_time if local.last_time is not None else time.time()
            seg = local.price(self.prices, wall_s=at - self._t0, allocation=self.allocation)
            for node in self._usage.nodes.values():
                seg = seg + node
            self._last = self._offset + seg
            self.samples += 1
            self.history.append((at, self._last))
            if len(self.history) > MAX_HISTORY:  # long runs: keep every other point
                self.history = self.history[::2]
        if self.log_timeseries and not final:
            rows = self._metric_rows(self._last, at=self.history[-1][0])
            self._outbox.put(Batch(self.tracking_uri, self.run_id, rows, {TAG_COST: format_usd(self._last.cost_usd)}))

    def _metric_rows(
        self,
        b: CostBreakdown,
        final: bool = False,
        at: float | None = None,
        extra: Mapping[str, float] | None = None,
    ) -> list[tuple[str, float, int, int]]:
        """``b`` as metric rows, with ``extra`` (the samplers' final-only figures)."""
        now_ms = int((at if at is not None else time.time()) * 1000)
        # Step = seconds since the run started: monotonic across resumes, and the
        # final scalars get the highest step so they are the run's "latest" values.
        elapsed = (now_ms - self._run_start_ms) / 1000.0
        step = int(math.ceil(elapsed)) + 1 if final else int(elapsed)
        metrics = b.to_metrics()
        if self._core:
            metrics = {METRIC_PREFIX + k: metrics[METRIC_PREFIX + k] for k in CORE_METRICS}
        metrics.update(extra or {})
        peak_gpu = self._usage.local.gpu.peak_memory_bytes
        if peak_gpu:
            metrics[METRIC_GPU_PEAK_MEMORY_GB] = peak_gpu / GB
        return [(k, v, now_ms, step) for k, v in metrics.items()]


# ====================================================================== autolog
@dataclass
class _AutologConfig:
    interval_s: float | None
    prices: PriceCatalog
    log_timeseries: bool
    policy: Policy | None  # the one given to autolog(): it prices, tags and prices Ray nodes


@dataclass
class CpuMark:
    """Where a long-lived process's tracked runs left off: the wall time, its tree's cumulative
    CPU seconds and RSS at the last run's final reading (at first: its start, 0, 0)."""

    time: float
    cpu_s: float = 0.0
    rss_bytes: int = 0


_charge_mark: CpuMark | None = None


def charge_runs_from(mark: CpuMark | None) -> None:
    """Charge every run tracked from now on in this process from ``mark``, which each run moves
    to its own final reading: a warm worker's runs split its whole CPU between them (None: off)."""
    global _charge_mark
    _charge_mark = mark


_state_lock = threading.RLock()
_config: _AutologConfig | None = None
_root: CostTracker | None = None  # the one live tracker of this process
_originals: dict[str, Callable[..., Any]] = {}
_hook_errors = 0
_running: set[CostTracker] = set()  # every tracker sampling now (a SIGTERM flushes them all)
_orphan_scans: dict[str, float] = {}  # tracking URI -> when this process last looked for orphans
_sigterm_previous: Any = None  # the SIGTERM handler ours replaced and chains to


def active_tracker() -> CostTracker | None:
    """The tracker sampling this process now, if any."""
    return _root if _root is not None and _root.running else None


def autolog(
    interval_s: float | None = None,
    prices: PriceCatalog | Mapping[str, Any] | None = None,
    disable: bool = False,
    *,
    policy: Policy | str | None = None,
    log_timeseries: bool = True,
) -> None:
    """Track the cost of every MLflow run started from now on in this process.

    Like ``mlflow.sklearn.autolog()``: call it once, before ``mlflow.start_run()``.

    Args:
        interval_s: seconds between samples (default ``$MLFLOW_FINOPS_INTERVAL_S`` or 10).
        prices: overrides for the :class:`PriceCatalog` (a catalog or a dict of its fields).
        disable: turn tracking off again (a run being tracked gets its final figures).
        policy: a :class:`Policy` or the path of ``finops.toml`` (default: found as usual).
        log_timeseries: also log the cumulative figures at every sample while the run is live.

    Raises:
        PolicyError / ValueError: the policy, an ``MLFLOW_FINOPS_*`` variable or ``prices``
        holds a bad value (raised here, before training starts, naming the key).
    """
    global _config
    if disable or env_flag(ENV_DISABLE, False):
        with _state_lock:
            _config = None
            use_policy(None)
            _stop_root("FINISHED")
            _unpatch()
        return
    if interval_s is not None and interval_s <= 0:
        raise ValueError(f"interval_s={interval_s!r}: must be greater than 0")
    pol = _given_policy(policy)
    catalog = resolve_prices(prices, pol)
    metrics_setting()  # a bad MLFLOW_FINOPS_METRICS is refused here, not in the run-start hook
    if interval_s is None:
        interval_s = env_float(ENV_INTERVAL_S, DEFAULT_INTERVAL_S)
    with _state_lock:
        _config = _AutologConfig(interval_s, catalog, log_timeseries, pol)
        use_policy(pol)  # the run-context plugin tags new runs from it too
        _patch()


def _given_policy(policy: Policy | str | None) -> Policy | None:
    """The policy a caller named (read now, so a bad file fails before training); None if none was."""
    return policy if isinstance(policy, Policy) or policy is None else load_policy(policy)


def _patch() -> None:
    import mlflow.tracking.fluent as fluent

    if _originals:
        return
    _originals["start_run"] = fluent.start_run
    _originals["end_run"] = fluent.end_run

    @functools.wraps(_originals["start_run"])
    def start_run(*args: Any, **kwargs: Any) -> Any:
        active = _originals["start_run"](*args, **kwargs)
        _guard(_on_run_started, active)
        return active

    @functools.wraps(_originals["end_run"])
    def end_run(*args: Any, **kwargs: Any) -> Any:
        status = kwargs.get("status", args[0] if args else "FINISHED")
        _guard(_on_run_ending, status)
        return _originals["end_run"](*args, **kwargs)

    for module in (fluent, mlflow):
        module.start_run = start_run
        module.end_run = end_run


def _unpatch() -> None:
    import mlflow.tracking.fluent as fluent

    if not _originals:
        return
    for module in (fluent, mlflow):
        module.start_run = _originals["start_run"]
        module.end_run = _originals["end_run"]
    _originals.clear()


def _guard(fn: Callable[..., Any], *args: Any) -> None:
    """Run a hook; never let it reach the training code."""
    global _hook_errors
    try:
        fn(*args)
    except Exception:
        _hook_errors += 1
        if _hook_errors == 1:
            _log.warning("mlflow-finops: cost tracking hook failed (training continues)", exc_info=True)


def _on_run_started(active: Any) -> None:
    global _root
    with _state_lock:
        if _config is None:
            return
        run_id = active.info.run_id
        live = active_tracker()
        if live is not None:
            if live.run_id != run_id and run_id not in live._segments:
                live.open_segment(run_id)
            return
        prior = {k: v for k, v in active.data.metrics.items() if k.startswith(METRIC_PREFIX)}
        offset = CostBreakdown.from_metrics(prior, _config.prices.allocation_mode) if prior else None
        if offset is not None:
            _log.info("mlflow-finops: resuming run %s, adding to its $%.6f", run_id, offset.cost_usd)
        _root = CostTracker(
            run_id,
            interval_s=_config.interval_s,
            prices=_config.prices,
            log_timeseries=_config.log_timeseries,
            offset=offset,
            run_start_ms=active.info.start_time,
            policy=_config.policy,
        ).start()


def _on_run_ending(status: str) -> None:
    active = mlflow.active_run()
    live = active_tracker()
    if active is None or live is None:
        return
    run_id = active.info.run_id
    if run_id in live._segments:
        live.close_segment(run_id)
    elif run_id == live.run_id:
        _stop_root(status)


def _stop_root(status: str) -> None:
    global _root
    with _state_lock:
        tracker, _root = _root, None
    if tracker is not None:
        tracker.stop(status)


@atexit.register
def _flush_at_exit() -> None:
    _guard(_stop_root, "FINISHED")


def _install_sigterm_handler() -> None:
    """Flush on SIGTERM, then chain to the handler in place (once; main thread only, where Python
    allows handlers). A process that ignores SIGTERM goes on ignoring it."""
    global _sigterm_previous
    if threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm or current is None or current == signal.SIG_IGN:
        return  # None: a handler set outside Python, which we cannot chain to
    _sigterm_previous = current
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    _guard(_flush_killed)
    previous = _sigterm_previous
    if callable(previous):
        previous(signum, frame)
        return
    # SIG_DFL: die of SIGTERM, as the process would have without tracking.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _flush_killed() -> None:
    """Every live tracker: final sample, delivery (or spool), and its runs ended KILLED."""
    global _root
    for tracker in list(_running):
        tracker.end_reason = END_SIGTERM
        tracker.log_charts = False  # the process is about to end
        ours = {tracker.run_id, *tracker._segments}
        with _state_lock:
            if _root is tracker:
                _root = None
        tracker.stop("KILLED")
        ended = False
        while (active := mlflow.active_run()) is not None and active.info.run_id in ours:
            ended |= active.info.run_id == tracker.run_id
            mlflow.end_run("KILLED")
        if not ended:  # not on this thread's run stack (track_cost(run_id=...))
            mlflow.tracking.MlflowClient(tracker.tracking_uri).set_terminated(tracker.run_id, "KILLED")


# ==================================================================== track_cost
@contextlib.contextmanager
def track_cost(
    run_id: str | None = None,
    *,
    interval_s: float | None = None,
    prices: PriceCatalog | Mapping[str, Any] | None = None,
    policy: Policy | str | None = None,
    log_timeseries: bool = True,
    pid: int | None = None,
) -> Iterator[CostTracker]:
    """Track the cost of the code inside the block into an MLflow run.

    The run is ``run_id``, else the active run, else a new run started (and
    ended) here. If ``autolog()`` already tracks that run, its tracker is
    reused: there is never a second sampler for the same process. ``pid``:
    the process whose tree is tracked (default: this one).
    """
    global _root
    live = active_tracker() if pid is None else None  # another process's tree: its own tracker
    if live is not None:
        target = run_id or (mlflow.active_run().info.run_id if mlflow.active_run() else None)
        if target is None or target == live.run_id or target in live._segments:
            yield live
            return
    pol = _given_policy(policy)
    catalog = resolve_prices(prices, pol)
    started_here = False
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            start = _originals.get("start_run", mlflow.tracking.fluent.start_run)
            with policy_in_use(pol):  # the run-context plugin tags the run from it
                active = start()
            started_here = True
        run_id = active.info.run_id
        run_start_ms = active.info.start_time
        prior = active.data.metrics
    else:
        try:
            run = mlflow.tracking.MlflowClient().get_run(run_id)
            run_start_ms, prior = run.info.start_time, run.data.metrics
        except Exception as exc:  # unreachable server: track anyway, deliver later
            _log.warning("mlflow-finops: cannot read run %s (%s); tracking it anyway", run_id, exc)
            run_start_ms, prior = None, {}
    prior = {k: v for k, v in prior.items() if k.startswith(METRIC_PREFIX)}
    tracker = CostTracker(
        run_id,
        interval_s=interval_s,
        prices=catalog,
        log_timeseries=log_timeseries,
        offset=CostBreakdown.from_metrics(prior, catalog.allocation_mode) if prior else None,
        run_start_ms=run_start_ms,
        pid=pid,
        policy=pol,
    ).start()
    owns_root = False
    with _state_lock:
        if _root is None:
            _root, owns_root = tracker, True
    status = "FINISHED"
    try:
        yield tracker
    except BaseException:
        status = "FAILED"
        raise
    finally:
        with _state_lock:
            if owns_root and _root is tracker:
                _root = None
        _guard(tracker.stop, status)
        if started_here:
            end = _originals.get("end_run", mlflow.tracking.fluent.end_run)
            end(status)
