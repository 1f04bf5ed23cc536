"""The retrain job's own work, run inside a Ray job by ``python -m ray_jobs.retrain``.

Loads ``models:/<registered>@champion``, updates it with the data that arrived
since that version was trained (files of ``[models.NAME].current`` modified
after it), holding out the newest rows: ``partial_fit`` where the final
estimator has it, ``warm_start`` growth for ensembles that support it, else a
full refit on reference + new data. Stops cooperatively when the run's cost
reaches the cap. Registers the challenger (alias ``@challenger``) and moves
``@champion`` only if it beats the champion by the policy's margin on the
policy's metric (:mod:`mlflow_finops.scoring`, the drift gate's own rule).

The job writes ``running`` and then its verdict into the request's state tag
(:class:`~mlflow_finops.retrain.state.RetrainState`); the supervisor reads it.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from ..cost.tracker import active_tracker, autolog
from ..frames import data_files, read_frame
from ..money import format_usd
from ..names import (
    TAG_CHAMPION_VERSION,
    TAG_DRIFT_RUN_ID,
    TAG_MODEL_VERSION,
    TAG_NEW_DATA_FILES,
    TAG_PARENT_VERSION,
    TAG_REASON,
    TAG_REFERENCE,
    TAG_RETRAIN_RUN_ID,
    TAG_RETRAIN_STATE,
    TAG_TRAINED_UNTIL,
    TAG_UPDATE_PATH,
    TAG_VERSION_COST_USD,
    tag,
)
from ..policy import ModelPolicy, Policy, PolicyError, RetrainPolicy, load_policy
from ..scoring import score
from .promotion import Evaluation
from .state import RetrainState

log = logging.getLogger(__name__)

__all__ = [
    "CapReached",
    "JobConfig",
    "Evaluation",
    "load_config",
    "new_data",
    "update_path",
    "update",
    "evaluate",
    "register",
    "promote",
    "run_job",
]

CHAMPION, CHALLENGER = "champion", "challenger"  # registry aliases
METRIC_ROWS_NEW = "retrain/rows_new"
METRIC_ROWS_HOLDOUT = "retrain/rows_holdout"


class CapReached(Exception):
    """The run's cost reached its cap: stop training, promote nothing."""


@dataclass(frozen=True)
class JobConfig:
    """What one retrain of one model needs from the policy file."""

    policy: Policy
    model: str
    model_policy: ModelPolicy
    retrain: RetrainPolicy
    base: str  # the folder relative paths of the policy start from

    @property
    def registered(self) -> str:
        return self.model_policy.registered_model or self.model

    @property
    def target(self) -> str:
        return self.model_policy.target or ""

    def path(self, relative: str) -> str:
        return relative if os.path.isabs(relative) else os.path.join(self.base, relative)


def load_config(policy_path: str | None, model: str) -> JobConfig:
    """The policy's settings for ``model``; :class:`PolicyError` when it cannot be retrained."""
    policy = load_policy(policy_path)
    if model not in policy.models:
        raise PolicyError(policy.source or "policy", [f"[models.{model}]: unknown model"])
    mp = policy.models[model]
    if not mp.current or not mp.target:
        raise PolicyError(policy.source or "policy", [f"[models.{model}]: current and target are needed"])
    base = os.path.dirname(os.path.abspath(policy.source)) if policy.source else os.getcwd()
    return JobConfig(policy, model, mp, policy.retrain.merged(mp.retrain), base)


def new_data(pattern: str, since_s: float) -> tuple[pd.DataFrame, list[str], float]:
    """Data files of ``pattern`` (a folder or glob) modified after ``since_s``, concatenated in time order.

    Returns the frame, the files, and the newest file's modification time (``since_s`` when none).
    """
    files = [str(f) for f in data_files(pattern) if os.path.getmtime(f) > since_s]
    if not files:
        return pd.DataFrame(), [], since_s
    return pd.concat([read_frame(f) for f in files], ignore_index=True), files, max(map(os.path.getmtime, files))


def update_path(model: Any, strategy: str) -> str:
    """Which update the model allows: partial_fit, warm_start, or refit."""
    est = model[-1] if hasattr(model, "steps") else model
    if strategy != "auto":
        return strategy
    if hasattr(est, "partial_fit"):
        return "partial_fit"
    if "warm_start" in est.get_params() and ("n_estimators" in est.get_params() or "max_iter" in est.get_params()):
        return "warm_start"
    return "refit"


def update(model: Any, X: pd.DataFrame, y: pd.Series, path: str, rp: RetrainPolicy,
           stop: threading.Event, reference: pd.DataFrame | None, target: str) -> Any:
    """Return the updated (challenger) model; raises CapReached when ``stop`` is set."""
    challenger = copy.deepcopy(model)
    is_pipe = hasattr(challenger, "steps")
    est = challenger[-1] if is_pipe else challenger
    # the fitted preprocessing is kept: the estimator was trained on its output
    Xt = challenger[:-1].transform(X) if is_pipe and len(challenger.steps) > 1 else X
    if path == "partial_fit":
        n = len(y)
        for _ in range(rp.partial_fit_epochs):
            for i in range(0, n, rp.batch_rows):
                if stop.is_set():
                    raise CapReached()
                est.partial_fit(Xt[i : i + rp.batch_rows], y.iloc[i : i + rp.batch_rows])
        return challenger
    if path == "warm_start":
        size_param = "n_estimators" if "n_estimators" in est.get_params() else "max_iter"
        est.set_params(warm_start=True)
        for _ in range(rp.warm_start_steps):
            if stop.is_set():
                raise CapReached()
            est.set_params(**{size_param: est.get_params()[size_param] + rp.warm_start_step})
            est.fit(Xt, y)
        return challenger
    # refit: from scratch on what the model knew (the reference) plus the new data
    from sklearn.base import clone

    frames = [X.assign(**{target: y.values})]
    if reference is not None:
        frames.insert(0, reference)
    full = pd.concat(frames, ignore_index=True)
    if stop.is_set():
        raise CapReached()
    return clone(model).fit(full.drop(columns=[target]), full[target])


def evaluate(champion: Any, challenger: Any, X: pd.DataFrame, y: pd.Series, rp: RetrainPolicy) -> Evaluation:
    return Evaluation(rp.metric, score(champion, X, y, rp.metric), score(challenger, X, y, rp.metric), rp.margin)


def _serialization(model: Any, champion_uri: str) -> dict[str, Any]:
    """How to log the challenger: in the champion's own format (skops with the types we built
    trusted, or the champion's pickle flavour), with the champion's pip requirements
    (inferring them again costs seconds of CPU per retrain)."""
    out: dict[str, Any] = {}
    fmt = None
    try:
        fmt = mlflow.models.get_model_info(champion_uri).flavors.get("sklearn", {}).get("serialization_format")
    except Exception as exc:
        log.info("champion's serialization format unknown (%s); MLflow's default", exc)
    if fmt and fmt != "skops":
        out["serialization_format"] = fmt  # and skops, which imports all of scikit-learn, is not needed
    else:
        try:
            import skops.io as sio

            out["skops_trusted_types"] = sio.get_untrusted_types(data=sio.dumps(model))
        except Exception:  # no skops here: MLflow's default format
            pass
    try:
        out["pip_requirements"] = mlflow.artifacts.download_artifacts(f"{champion_uri}/requirements.txt")
    except Exception as exc:
        log.info("champion's requirements not reused (%s); MLflow infers them", exc)
    return out


def register(client: MlflowClient, challenger: Any, name: str, tags: dict[str, str]) -> str:
    """Log and register the challenger (alias ``@challenger``) in the champion's format; its version."""
    info = mlflow.sklearn.log_model(challenger, name="model", registered_model_name=name,
                                    **_serialization(challenger, f"models:/{name}@{CHAMPION}"))
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    return version


def promote(client: MlflowClient, name: str, version: str, learned: pd.DataFrame, base: str) -> str:
    """Make ``version`` the champion; what it learned from becomes the drift gate's reference (its path)."""
    ref_dir = os.path.join(base, "references")
    os.makedirs(ref_dir, exist_ok=True)
    ref_path = os.path.join(ref_dir, f"{name}-v{version}.parquet")
    learned.to_parquet(ref_path)
    client.set_model_version_tag(name, version, TAG_REFERENCE, ref_path)
    client.set_registered_model_alias(name, CHAMPION, version)
    return ref_path


def _connect_ray() -> None:
    """Fan-out to Ray (if the training uses it) is charged to this run, on every node."""
    try:
        import ray

        ray.init(log_to_driver=False)
    except Exception as exc:
        log.info("not connected to Ray (%s); tracking this process tree only", exc)


def run_job(cfg: JobConfig, run_id: str, cap_usd: float | None = None) -> RetrainState:
    """The whole retrain inside the request's run ``run_id``; the state it ended in.

    ``no_new_data``, ``failed`` (new data without the target column), ``capped``,
    ``promoted`` or ``not_promoted``; each is also the run's state tag.
    """
    rp, mp, name = cfg.retrain, cfg.model_policy, cfg.registered
    current = cfg.path(mp.current or "")
    client = MlflowClient()
    champion_version = client.get_model_version_by_alias(name, CHAMPION)
    champion = mlflow.sklearn.load_model(f"models:/{name}@{CHAMPION}")
    since = float(champion_version.tags.get(TAG_TRAINED_UNTIL, champion_version.creation_timestamp / 1000))
    data, files, newest = new_data(current, since)
    _connect_ray()
    autolog(interval_s=rp.sample_interval_s, policy=cfg.policy)
    with mlflow.start_run(run_id=run_id):
        if data.empty:
            mlflow.set_tags({TAG_RETRAIN_STATE: RetrainState.NO_NEW_DATA.value,
                             TAG_REASON: f"no file in {current} newer than champion v{champion_version.version}"})
            return RetrainState.NO_NEW_DATA
        if cfg.target not in data.columns:
            mlflow.set_tags({TAG_RETRAIN_STATE: RetrainState.FAILED.value,
                             TAG_REASON: f"new data has no target column {cfg.target!r}"})
            log.error("new data in %s has no target column %r", current, cfg.target)
            mlflow.end_run("FAILED")
            return RetrainState.FAILED
        n_hold = max(1, int(len(data) * rp.holdout_fraction))
        train, hold = data.iloc[:-n_hold], data.iloc[-n_hold:]  # newest rows held out
        X, y = train.drop(columns=[cfg.target]), train[cfg.target]
        path = update_path(champion, rp.strategy)
        reference = read_frame(cfg.path(mp.reference)) if (path == "refit" and mp.reference) else None
        mlflow.set_tags({
            TAG_RETRAIN_STATE: RetrainState.RUNNING.value,
            TAG_UPDATE_PATH: path,
            TAG_CHAMPION_VERSION: str(champion_version.version),
            TAG_NEW_DATA_FILES: str(len(files)),
        })
        mlflow.log_metrics({METRIC_ROWS_NEW: len(train), METRIC_ROWS_HOLDOUT: len(hold)})

        challenger = _train(cfg, champion, X, y, path, reference, cap_usd)
        if challenger is None:
            mlflow.end_run("KILLED")
            return RetrainState.CAPPED
        return _judge(cfg, client, champion, champion_version, challenger, hold, data, path=path, newest=newest)


def _train(cfg: JobConfig, champion: Any, X: pd.DataFrame, y: pd.Series, path: str,
           reference: pd.DataFrame | None, cap_usd: float | None) -> Any | None:
    """The update, stopped when the run's cost reaches ``cap_usd``: the challenger, or None (tagged capped)."""
    tracker = active_tracker()
    stop = threading.Event()
    if cap_usd is not None and tracker is not None:
        tracker.on_sample(lambda b: b.cost_usd >= cap_usd and stop.set())
    try:
        return update(champion, X, y, path, cfg.retrain, stop, reference, cfg.target)
    except CapReached:
        spent = tracker.sample_now().cost_usd if tracker else None
        mlflow.set_tags({
            TAG_RETRAIN_STATE: RetrainState.CAPPED.value,
            TAG_REASON: f"stopped at the cost cap: {format_usd(spent)} >= {format_usd(cap_usd)}; nothing promoted",
        })
        log.warning("cost cap reached (%s >= %s): stopped, nothing promoted", format_usd(spent), format_usd(cap_usd))
        return None


def _judge(cfg: JobConfig, client: MlflowClient, champion: Any, champion_version: Any, challenger: Any,
           hold: pd.DataFrame, data: pd.DataFrame, *, path: str, newest: float) -> RetrainState:
    """Evaluate, register the challenger with its lineage, promote it when better; the verdict."""
    rp, name = cfg.retrain, cfg.registered
    run_id = mlflow.active_run().info.run_id
    Xh, yh = hold.drop(columns=[cfg.target]), hold[cfg.target]
    ev = evaluate(champion, challenger, Xh, yh, rp)
    mlflow.log_metrics({f"eval/champion_{ev.metric}": ev.champion, f"eval/challenger_{ev.metric}": ev.challenger})
    version_tags = {
        TAG_RETRAIN_RUN_ID: run_id,
        TAG_UPDATE_PATH: path,
        TAG_TRAINED_UNTIL: f"{newest:.3f}",
        TAG_PARENT_VERSION: str(champion_version.version),
        tag(ev.metric): f"{ev.challenger:.6f}",
    }
    drift_run = mlflow.get_run(run_id).data.tags.get(TAG_DRIFT_RUN_ID)
    if drift_run:
        version_tags[TAG_DRIFT_RUN_ID] = drift_run
    version = register(client, challenger, name, version_tags)
    verdict = (f"challenger v{version} {ev.metric}={ev.challenger:.4f} vs champion "
               f"v{champion_version.version} {ev.champion:.4f} (margin {ev.margin})")
    if ev.better:
        promote(client, name, version, data, cfg.base)
    state = RetrainState.PROMOTED if ev.better else RetrainState.NOT_PROMOTED
    mlflow.set_tags({
        TAG_RETRAIN_STATE: state.value,
        TAG_MODEL_VERSION: version,
        TAG_REASON: ("promoted: " if ev.better else "not promoted: ") + verdict,
    })
    log.info("%s: %s", "promoted" if ev.better else "not promoted", verdict)
    tracker = active_tracker()
    if tracker is not None:
        client.set_model_version_tag(name, version, TAG_VERSION_COST_USD, f"{tracker.sample_now().cost_usd:.8f}")
    return state
