"""Every name mlflow-finops writes into MLflow or reads from the environment, declared once.

Tags are ``finops.*`` (strings a person reads and filters on), metrics ``finops/*``
(numbers MLflow charts and sorts), experiments ``finops-*/<model>``, and settings
``MLFLOW_FINOPS_*``. Code uses these constants, never the literals, so a rename is
one edit and a grep for a constant finds every reader and writer.
"""

from __future__ import annotations

from enum import Enum

# ------------------------------------------------------------------ prefixes
TAG_PREFIX = "finops."
METRIC_PREFIX = "finops/"
ENV_PREFIX = "MLFLOW_FINOPS_"

# ------------------------------------------------------------------ attribution tags (policy [tags] / env)
TAG_TEAM = "finops.team"
TAG_COST_CENTER = "finops.cost_center"
TAG_WORKLOAD = "finops.workload"
TAG_MODEL = "finops.model"

# ------------------------------------------------------------------ cost tracking tags
TAG_PRICE_PROFILE = "finops.price_profile"
TAG_ALLOCATION_MODE = "finops.allocation_mode"
TAG_MARKET = "finops.market"
TAG_TRACKED = "finops.tracked"
TAG_TRACKING_STATUS = "finops.tracking_status"
TAG_COST = "finops.cost"  # the run's cost as a person reads it ("$0.000034"): MLflow shows tags as text
TAG_NOTE = "mlflow.note.content"  # MLflow's run description (markdown, top of the run page)
# An experiment tag MLflow's UI reads as a saved runs-table view: #/experiments/<id>?viewStateShareKey=<key>
TAG_SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
COST_VIEW_KEY = "finops-cost"
TAG_TRACKING_ERROR = "finops.tracking_error"
TAG_INTERVAL_S = "finops.interval_s"
TAG_ALLOCATED_CPUS = "finops.allocated_cpus"
TAG_NESTED_IN = "finops.nested_in"
TAG_END_REASON = "finops.end_reason"  # why the tracker ended the run: sigterm | process_died
TAG_PROCESS_PID = "finops.process.pid"  # the tracked process (with the hostname tag): a dead one is found
TAG_PROCESS_STARTED = "finops.process.started"  # its create time: a reused pid is not the same process
TAG_PROCESS_PID_NS = "finops.process.pid_ns"  # its pid namespace: containers sharing a hostname
TAG_UNACCOUNTED_PROCESSES = "finops.unaccounted_processes"  # members of the tree that could not be read
TAG_UNACCOUNTED_PIDS = "finops.unaccounted_pids"
TAG_RAY_JOB_ID = "finops.ray_job_id"
TAG_RAY_NODES = "finops.ray_nodes"
TAG_RAY_LOST_NODES = "finops.ray_lost_nodes"
TAG_RAY_READ = "finops.ray_read"  # how the nodes were read: local | agent | probe | mixed
TAG_MACHINE_HOSTNAME = "finops.machine.hostname"
TAG_MACHINE_CPU_MODEL = "finops.machine.cpu_model"
TAG_MACHINE_CPU_CORES = "finops.machine.cpu_cores"
TAG_MACHINE_RAM_GB = "finops.machine.ram_gb"
TAG_MACHINE_GPU_COUNT = "finops.machine.gpu_count"
TAG_MACHINE_GPU_MODELS = "finops.machine.gpu_models"

# ------------------------------------------------------------------ drift check tags
TAG_DECISION = "finops.decision"
TAG_DRIFT_DETECTED = "finops.drift_detected"
TAG_DRIFT_REASON = "finops.drift_reason"
TAG_TRIGGER = "finops.trigger"  # retrain | skip: whether a drift check's retrain signal was worth its cost
TAG_TRIGGER_REASON = "finops.trigger_reason"
METRIC_TRIGGER_LOSS = "trigger/loss"  # the champion's loss since promotion, metric units (positive = worse)
METRIC_TRIGGER_GAIN = "trigger/expected_gain"
METRIC_TRIGGER_COST = "trigger/expected_cost_usd"
METRIC_TRIGGER_VALUE = "trigger/expected_value_usd"
TAG_DRIFTED_COLUMNS = "finops.drifted_columns"
TAG_WINDOW_KEY = "finops.window_key"
TAG_WINDOW_FILES = "finops.window_files"
TAG_ERROR = "finops.error"
TAG_CLAIM_HOST = "finops.claim_host"
TAG_CLAIM_PID = "finops.claim_pid"
TAG_CLAIM_TIME_MS = "finops.claim_time_ms"
TAG_CLAIM_LEASE_S = "finops.claim_lease_s"  # a claim expires claim_time_ms + this

# ------------------------------------------------------------------ retrain request / job tags
TAG_RETRAIN_STATE = "finops.retrain_state"
TAG_REASON = "finops.reason"
TAG_PRIORITY = "finops.priority"
TAG_ATTEMPTS = "finops.attempts"
TAG_REQUESTED_AT = "finops.requested_at"
TAG_DEADLINE = "finops.deadline"
TAG_RETRY_AT = "finops.retry_at"
TAG_RAY_SUBMISSION_ID = "finops.ray_submission_id"
TAG_CAP_USD = "finops.cap_usd"
TAG_STOPPED_FOR_CAP = "finops.stopped_for_cap"
TAG_STOPPED_FOR_TIME = "finops.stopped_for_time"
TAG_UPDATE_PATH = "finops.update_path"
TAG_UPDATE_WHY = "finops.update_why"  # why a retrain took another path than its model's usual one
TAG_MEMORY = "finops.memory"  # what a refit learned: everything the champion learned + the new rows, or these alone
TAG_CHAMPION_VERSION = "finops.champion_version"
TAG_NEW_DATA_FILES = "finops.new_data_files"
TAG_RUN_ID = "finops.run_id"  # Ray job metadata: the retrain run
TAG_RETRAIN_RUNNER = "finops.retrain_runner"  # what ran the attempt: "actor" (warm) or "job" (a Ray job)

# ------------------------------------------------------------------ the warm retrain actor (Ray)
RETRAIN_ACTOR_NAME = "finops-retrainer"
RETRAIN_ACTOR_NAMESPACE = "mlflow-finops"
RETRAIN_ACTOR_CLASS = "RetrainWorker"  # its retrains' runs track it; a driver's Ray sampler leaves it out

# ------------------------------------------------------------------ lineage (runs and model versions)
TAG_DRIFT_RUN_ID = "finops.drift_run_id"
TAG_RETRAIN_RUN_ID = "finops.retrain_run_id"
TAG_MODEL_VERSION = "finops.model_version"
TAG_PARENT_VERSION = "finops.parent_version"
TAG_LEARNED = "finops.learned"  # a version's ledger (JSON path): every file and row it learned
TAG_REFERENCE = "finops.reference"
# a version's metric on its first labelled window, the baseline of its loss when no retrain promoted it
TAG_BASELINE_PREFIX = "finops.baseline."
TAG_VERSION_COST_USD = "finops.cost_usd"
# on a retrain run whose champion lost to the version it replaced on the next labelled window: why it was rolled back
TAG_ROLLED_BACK = "finops.rolled_back"

# ------------------------------------------------------------------ reports
TAG_REPORT = "finops.report"

# ------------------------------------------------------------------ workloads (values of finops.workload)
WORKLOAD_DRIFT_CHECK = "drift_check"
WORKLOAD_RETRAIN = "retrain"

# ------------------------------------------------------------------ values of finops.retrain_state
class RetrainState(str, Enum):
    """The value of ``finops.retrain_state``; compares equal to its text (``"promoted"``)."""

    PENDING = "pending"
    WAITING = "waiting"
    RETRY = "retry"
    SUBMITTED = "submitted"
    RUNNING = "running"  # written by the job once its run has started
    PROMOTED = "promoted"
    NOT_PROMOTED = "not_promoted"
    CAPPED = "capped"
    FAILED = "failed"
    OUT_OF_BUDGET = "out_of_budget"
    DROPPED = "dropped"
    NO_NEW_DATA = "no_new_data"

    def __str__(self) -> str:  # the tag's text, wherever the state is shown or written
        return self.value

    @property
    def terminal(self) -> bool:
        """The request is over: nothing more will happen to it."""
        return self not in _OPEN


_OPEN = frozenset(
    {RetrainState.PENDING, RetrainState.WAITING, RetrainState.RETRY, RetrainState.SUBMITTED, RetrainState.RUNNING}
)


# ------------------------------------------------------------------ values of finops.tracking_status
TRACKING_LIVE = "live"  # a tracker samples the run now (a dead process's run is ended by the next one)
TRACKING_COMPLETE = "complete"
TRACKING_DEGRADED = "degraded"  # some usage is missing: finops.tracking_error says what

# ------------------------------------------------------------------ metrics
METRIC_COST_USD = "finops/cost_usd"
METRIC_GPU_PEAK_MEMORY_GB = "finops/gpu_peak_memory_gb"
METRIC_RAY_CPU_CORE_HOURS = "finops/ray_cpu_core_hours"
METRIC_NODE_PREFIX = "finops/node/"
# a retrain run's evaluation: champion and challenger on the same held-out rows, in the policy's metric
METRIC_EVAL_CHAMPION_PREFIX = "eval/champion_"
METRIC_EVAL_CHALLENGER_PREFIX = "eval/challenger_"
METRIC_ROWS_NEW = "retrain/rows_new"  # rows a retrain learned
METRIC_ROWS_HOLDOUT = "retrain/rows_holdout"  # the newest rows it held out to judge the challenger
# what a promoted retrain realized: the new champion's metric minus the version it replaced, both scored on
# the first labelled window after the promotion (rows neither learned); metric units, positive = better
METRIC_REALIZED_GAIN = "eval/realized_gain"


def eval_champion(metric: str) -> str:
    """``eval/champion_<metric>``: the champion's score on a retrain's held-out rows."""
    return METRIC_EVAL_CHAMPION_PREFIX + metric


def eval_challenger(metric: str) -> str:
    """``eval/challenger_<metric>``: the challenger's score on the same rows."""
    return METRIC_EVAL_CHALLENGER_PREFIX + metric


def node_metric(node: str, figure: str) -> str:
    """``finops/node/<node>/<figure>``: one Ray node's share of a run."""
    return f"{METRIC_NODE_PREFIX}{node}/{figure}"


def tag(name: str) -> str:
    """``finops.<name>``, for tags named by data (the policy's extra tags, a metric name)."""
    return TAG_PREFIX + name


# ------------------------------------------------------------------ artifacts
ARTIFACT_TIMELINE_PNG = "finops/cost_timeline.png"
ARTIFACT_TIMELINE_HTML = "finops/cost_timeline.html"

# ------------------------------------------------------------------ experiments
MONITORING_EXPERIMENT = "finops-monitoring/{model}"
RETRAINS_EXPERIMENT = "finops-retrains/{model}"
REPORTS_EXPERIMENT = "finops-reports"
CLAIMS_PREFIX = "finops-claims"


def monitoring_experiment(model: str) -> str:
    """Where a model's drift checks are logged."""
    return MONITORING_EXPERIMENT.format(model=model)


def retrains_experiment(model: str) -> str:
    """Where a model's retrain requests (and their Ray jobs' runs) live."""
    return RETRAINS_EXPERIMENT.format(model=model)


# ------------------------------------------------------------------ environment variables
ENV_POLICY = "MLFLOW_FINOPS_POLICY"
ENV_DISABLE = "MLFLOW_FINOPS_DISABLE"
ENV_INTERVAL_S = "MLFLOW_FINOPS_INTERVAL_S"
ENV_LOG_INTERVAL_S = "MLFLOW_FINOPS_LOG_INTERVAL_S"
ENV_FLUSH_TIMEOUT_S = "MLFLOW_FINOPS_FLUSH_TIMEOUT_S"
ENV_HTTP_TIMEOUT_S = "MLFLOW_FINOPS_HTTP_TIMEOUT_S"
ENV_SPOOL_DIR = "MLFLOW_FINOPS_SPOOL_DIR"
ENV_LOG_CHARTS = "MLFLOW_FINOPS_LOG_CHARTS"
ENV_CHART_MIN_S = "MLFLOW_FINOPS_CHART_MIN_S"
ENV_RAY_DISCOVERY_S = "MLFLOW_FINOPS_RAY_DISCOVERY_S"
ENV_RAY_READ_LOCAL = "MLFLOW_FINOPS_RAY_READ_LOCAL"
ENV_RAY_READ_AGENT = "MLFLOW_FINOPS_RAY_READ_AGENT"  # false: probe actors, not the dashboard agents' reports
ENV_CHARGE_PROCESS_START = "MLFLOW_FINOPS_CHARGE_PROCESS_START"
ENV_CLAIM_LEASE_S = "MLFLOW_FINOPS_CLAIM_LEASE_S"  # a drift window claim older than this may be taken over
ENV_SETTLE_S = "MLFLOW_FINOPS_SETTLE_S"  # a data file younger than this is not judged yet
ENV_REPORT_READ = "MLFLOW_FINOPS_REPORT_READ"  # auto (default) | search_runs: how a report reads runs from a server
ENV_METRICS = "MLFLOW_FINOPS_METRICS"  # all (default) | core: which finops/* metrics a run gets
METRICS_ALL = "all"
METRICS_CORE = "core"
# What `core` logs: the cost and what a resumed run, budgets and reports need to add up.
CORE_METRICS = ("cost_usd", "usage_cost_usd", "allocation_cost_usd", "idle_cost_usd", "cpu_core_hours",
                "wall_hours", "gpu_hours", "energy_kwh")


def env_var(key: str) -> str:
    """``MLFLOW_FINOPS_<KEY>`` for a setting named by data (a price key, a tag name)."""
    return ENV_PREFIX + key.upper()
