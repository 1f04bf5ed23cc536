"""Incremental retraining, run inside a Ray job with cost tracking on.

    python -m ray_jobs.retrain --run-id RUN --model NAME [--policy finops.toml] [--cap-usd X]

Loads ``models:/<registered>@champion``, updates it with the data that arrived
since that version was created (files of ``[models.NAME].current`` newer than
it), holding out the newest rows: ``partial_fit`` where the final estimator
has it, ``warm_start`` growth for ensembles that support it, else a full refit
on reference + new data. Stops cooperatively when the run's cost reaches the
cap. Registers the challenger (alias ``@challenger``) and moves ``@champion``
only if it beats the champion by the policy's margin on the policy's metric.
Exit codes: 0 done (promoted or not), 3 stopped at the cost cap, 4 no new data,
2 bad configuration or data.
"""

from __future__ import annotations

import argparse
import copy
import glob
import logging
import os
import signal
import sys
import threading
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

import mlflow_finops
from mlflow_finops.frames import read_frame
from mlflow_finops.policy import PolicyError, RetrainPolicy, load_policy

log = logging.getLogger("ray_jobs.retrain")
LOWER_IS_BETTER = {"rmse", "mae"}


class CapReached(Exception):
    """The run's cost reached its cap: stop training, promote nothing."""


def score(model: Any, X: pd.DataFrame, y: pd.Series, metric: str) -> float:
    from sklearn import metrics as m

    if metric == "roc_auc":
        return float(m.roc_auc_score(y, model.predict_proba(X)[:, 1]))
    pred = model.predict(X)
    return float({
        "accuracy": lambda: m.accuracy_score(y, pred),
        "f1": lambda: m.f1_score(y, pred, average="macro"),
        "rmse": lambda: m.mean_squared_error(y, pred) ** 0.5,
        "mae": lambda: m.mean_absolute_error(y, pred),
        "r2": lambda: m.r2_score(y, pred),
    }[metric]())


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


def new_data(pattern: str, since_s: float) -> tuple[pd.DataFrame, list[str], float]:
    """Files of ``pattern`` (a folder or glob) modified after ``since_s``, concatenated in time order."""
    files = glob.glob(os.path.join(pattern, "*")) if os.path.isdir(pattern) else glob.glob(pattern)
    files = sorted((f for f in files if os.path.getmtime(f) > since_s), key=os.path.getmtime)
    if not files:
        return pd.DataFrame(), [], since_s
    return pd.concat([read_frame(f) for f in files], ignore_index=True), files, max(map(os.path.getmtime, files))


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(143)  # unwinds through `with mlflow.start_run()`: the run ends with its cost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--cap-usd", type=float, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ray's stop_job sends SIGTERM: end the run cleanly so its partial cost is logged.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    try:
        policy = load_policy(args.policy)
        if args.model not in policy.models:
            raise PolicyError(policy.source or "policy", [f"[models.{args.model}]: unknown model"])
        mp = policy.models[args.model]
        rp = policy.retrain.merged(mp.retrain)
        if not mp.current or not mp.target:
            raise PolicyError(policy.source or "policy", [f"[models.{args.model}]: current and target are needed"])
    except PolicyError as exc:
        log.error("%s", exc)
        return 2

    base = os.path.dirname(os.path.abspath(policy.source)) if policy.source else os.getcwd()
    current = mp.current if os.path.isabs(mp.current) else os.path.join(base, mp.current)
    client = MlflowClient()
    name = mp.registered_model or args.model
    champion_version = client.get_model_version_by_alias(name, "champion")
    champion = mlflow.sklearn.load_model(f"models:/{name}@champion")
    since = float(champion_version.tags.get("finops.trained_until", champion_version.creation_timestamp / 1000))
    data, files, newest = new_data(current, since)

    # Fan-out to Ray (if the training uses it) is charged to this run, on every node.
    try:
        import ray

        ray.init(log_to_driver=False)
    except Exception as exc:
        log.info("not connected to Ray (%s); tracking this process tree only", exc)

    mlflow_finops.autolog(interval_s=rp.sample_interval_s, policy=policy)
    with mlflow.start_run(run_id=args.run_id) as run:
        if data.empty:
            mlflow.set_tags({"finops.retrain_state": "no_new_data",
                             "finops.reason": f"no file in {current} newer than champion v{champion_version.version}"})
            return 4
        if mp.target not in data.columns:
            mlflow.set_tags({"finops.retrain_state": "failed",
                             "finops.reason": f"new data has no target column {mp.target!r}"})
            log.error("new data in %s has no target column %r", current, mp.target)
            mlflow.end_run("FAILED")
            return 2
        n_hold = max(1, int(len(data) * rp.holdout_fraction))
        train, hold = data.iloc[:-n_hold], data.iloc[-n_hold:]  # newest rows held out
        X, y = train.drop(columns=[mp.target]), train[mp.target]
        Xh, yh = hold.drop(columns=[mp.target]), hold[mp.target]
        path = update_path(champion, rp.strategy)
        reference = read_frame(os.path.join(base, mp.reference)) if (path == "refit" and mp.reference) else None
        mlflow.set_tags({
            "finops.retrain_state": "running",
            "finops.update_path": path,
            "finops.champion_version": str(champion_version.version),
            "finops.new_data_files": str(len(files)),
        })
        mlflow.log_metrics({"retrain/rows_new": len(train), "retrain/rows_holdout": len(hold)})

        tracker = mlflow_finops.active_tracker()
        stop = threading.Event()
        if args.cap_usd is not None and tracker is not None:
            cap = args.cap_usd
            tracker.on_sample(lambda b: b.cost_usd >= cap and stop.set())
        try:
            challenger = update(champion, X, y, path, rp, stop, reference, mp.target)
        except CapReached:
            spent = tracker.sample_now().cost_usd if tracker else float("nan")
            mlflow.set_tags({
                "finops.retrain_state": "capped",
                "finops.reason": f"stopped at the cost cap: ${spent:.6f} >= ${args.cap_usd:.6f}; nothing promoted",
            })
            log.warning("cost cap reached ($%.6f >= $%.6f): stopped, nothing promoted", spent, args.cap_usd)
            mlflow.end_run("KILLED")
            return 3

        champ_score, chall_score = score(champion, Xh, yh, rp.metric), score(challenger, Xh, yh, rp.metric)
        mlflow.log_metrics({f"eval/champion_{rp.metric}": champ_score, f"eval/challenger_{rp.metric}": chall_score})
        info = mlflow.sklearn.log_model(challenger, name="model", registered_model_name=name,
                                        **_serialization(challenger, f"models:/{name}@champion"))
        version = str(info.registered_model_version)
        client.set_registered_model_alias(name, "challenger", version)
        gain = (champ_score - chall_score) if rp.metric in LOWER_IS_BETTER else (chall_score - champ_score)
        better = gain > rp.margin
        version_tags = {
            "finops.retrain_run_id": run.info.run_id,
            "finops.update_path": path,
            "finops.trained_until": f"{newest:.3f}",
            "finops.parent_version": str(champion_version.version),
            f"finops.{rp.metric}": f"{chall_score:.6f}",
        }
        drift_run = mlflow.get_run(run.info.run_id).data.tags.get("finops.drift_run_id")
        if drift_run:
            version_tags["finops.drift_run_id"] = drift_run
        for k, v in version_tags.items():
            client.set_model_version_tag(name, version, k, v)
        verdict = (f"challenger v{version} {rp.metric}={chall_score:.4f} vs champion "
                   f"v{champion_version.version} {champ_score:.4f} (margin {rp.margin})")
        if better:
            # what the new champion learned from becomes the drift gate's reference
            ref_dir = os.path.join(base, "references")
            os.makedirs(ref_dir, exist_ok=True)
            ref_path = os.path.join(ref_dir, f"{name}-v{version}.parquet")
            data.to_parquet(ref_path)
            client.set_model_version_tag(name, version, "finops.reference", ref_path)
            client.set_registered_model_alias(name, "champion", version)
        mlflow.set_tags({
            "finops.retrain_state": "promoted" if better else "not_promoted",
            "finops.model_version": version,
            "finops.reason": ("promoted: " if better else "not promoted: ") + verdict,
        })
        log.info("%s: %s", "promoted" if better else "not promoted", verdict)
        if tracker is not None:
            client.set_model_version_tag(name, version, "finops.cost_usd", f"{tracker.sample_now().cost_usd:.8f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
