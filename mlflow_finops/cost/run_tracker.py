"""The cost tracker: one sampler thread per tracked process, logging ``finops/*`` to one MLflow run.

What is sampled sits behind one interface (:mod:`mlflow_finops.cost.samplers`):
the process tree with its GPUs, and the Ray job's workers on every node.

Nothing here may break training: a failing sample is reported and retried with
backoff (the kernel's counters are cumulative, so a later reading recovers the
total; the run is ``degraded`` only when something is really missing), and
delivery to MLflow runs on its own thread (see :mod:`mlflow_finops.cost.delivery`).
Every tracker sampling is known to :mod:`.live_runs`, which flushes it on SIGTERM
and at exit.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import mlflow

from .._env import env_flag, env_float
from ..money import format_usd
from ..names import (
    CORE_METRICS,
    ENV_CHARGE_PROCESS_START,
    ENV_CHART_MIN_S,
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
    TAG_PRICE_PROFILE,
    TAG_TRACKED,
    TAG_TRACKING_ERROR,
    TAG_TRACKING_STATUS,
    TRACKING_COMPLETE,
    TRACKING_DEGRADED,
    TRACKING_LIVE,
)
from ..policy import Policy, RayPolicy, load_policy
from ..pricing import Allocation, CostBreakdown, PriceCatalog
from . import live_runs
from .context import run_tags
from .delivery import RUN_END_STATUSES, Batch, Outbox
from .gpu import GpuSampler
from .orphans import end_orphaned_runs, process_tags
from .process import ProcessTreeSampler, allocated_cpus, allocated_ram_gb
from .ray_nodes import RayClusterSampler, RaySampler
from .run_page import publish_cost_view
from .samplers import GB, RunUsage, Sampler

_log = logging.getLogger(__name__)

__all__ = ["CostTracker", "CpuMark", "charge_runs_from", "metrics_setting", "resolve_prices", "DEFAULT_INTERVAL_S"]

DEFAULT_INTERVAL_S = 10.0
# A failing sample is retried after 2, 4, then 8 intervals (at most MAX_BACKOFF_S, unless the
# interval itself is longer), for as long as the run lasts.
BACKOFF_DOUBLINGS = 3
MAX_BACKOFF_S = 60.0
ORPHAN_SCAN_EVERY_S = 300.0  # per tracking URI and process: runs of killed processes are looked for
MAX_HISTORY = 5000
CHART_MIN_S = 300.0  # runs shorter than this get no timeline chart ($MLFLOW_FINOPS_CHART_MIN_S)


def metrics_setting() -> str:
    """``$MLFLOW_FINOPS_METRICS``: ``all`` (default) or ``core`` (:data:`CORE_METRICS` only)."""
    value = os.environ.get(ENV_METRICS, METRICS_ALL).strip().lower() or METRICS_ALL
    if value not in (METRICS_ALL, METRICS_CORE):
        raise ValueError(f"{ENV_METRICS}={value!r}: must be {METRICS_ALL!r} or {METRICS_CORE!r}")
    return value


def resolve_prices(
    prices: PriceCatalog | Mapping[str, Any] | None = None, policy: Policy | str | None = None
) -> PriceCatalog:
    """Defaults < policy file ``[prices]`` < ``MLFLOW_FINOPS_*`` < ``prices`` argument."""
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    return PriceCatalog.resolve(pol.prices, os.environ, prices)


def given_policy(policy: Policy | str | None) -> Policy | None:
    """The policy a caller named (read now, so a bad file fails before training); None if none was."""
    return policy if isinstance(policy, Policy) or policy is None else load_policy(policy)


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


_orphan_scans: dict[str, float] = {}  # tracking URI -> when this process last looked for orphans


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
        with live_runs.state_lock:
            self.running = True
            live_runs.add_running(self)
        self._thread = threading.Thread(target=self._loop, name=f"finops-sampler-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        live_runs.install_sigterm_handler()
        self._end_orphans_in_background()
        _log.debug("cost tracking started for run %s every %.1fs", self.run_id, self.interval_s)
        self._caller_cpu_s += time.thread_time() - cpu0
        return self

    def stop(self, status: str | None = None) -> CostBreakdown:
        """Take a last sample, log the final scalars and deliver (or spool) everything.

        ``status``: the run ends now, so (``FINISHED``, ``FAILED``, ``KILLED``); when its last
        batches must be spooled, delivering them later also ends the run, whose own ``end_run``
        failed too. None: the run goes on (tracking stops, or another process ends it).
        """
        with live_runs.state_lock, self._lock:
            if not self.running:
                return self._last
            self.running = False
            live_runs.discard_running(self)
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
        end = (self.run_id, status, int(time.time() * 1000)) if status in RUN_END_STATUSES else None
        spooled = self._outbox.close(self.flush_timeout_s, end=end)
        if not spooled:
            publish_cost_view(self.tracking_uri, self.run_id, final)
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

    def _end_orphans_in_background(self) -> None:
        """End the runs that killed processes of this host left RUNNING (:mod:`.orphans`).

        On a daemon thread, so training never waits for it; at most every
        ORPHAN_SCAN_EVERY_S per tracking URI in one process.
        """
        now = time.monotonic()
        with live_runs.state_lock:
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
