"""The whole loop on the embedded defaults: cost-tracked training, drift-gated,
budget-limited incremental retraining on Ray, promotion only when better, and
a report of what it all cost and bought.

    python examples/retrain_loop.py [--windows 8] [--rows 20000]

It writes ./mlflow.db (the SQLite MLflow store) and ./finops-demo/ (data and
policy), starts a local Ray cluster (`mlflow-finops ray up`) unless one
answers on 127.0.0.1:8265, and stops the cluster it started. Re-running it in
the same folder starts the demo over: the demo's data folder is rewritten and
its registered model recreated; earlier runs stay in mlflow.db.

The stream (examples/stream.py) drifts at windows 3 and 6; each window is
checked by the drift gate on the policy's schedule, and only drift leads to a
retrain job.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import mlflow
import requests
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier

sys.path.insert(0, str(Path(__file__).parent))
import mlflow_finops  # noqa: E402
from mlflow_finops.money import format_usd  # noqa: E402
from stream import DRIFT_POINTS, FEATURES, TARGET, window  # noqa: E402

MODEL = "churn"
REGISTERED = "churn-demo"
JOBS = "http://127.0.0.1:8265"
BIN = Path(sys.executable).parent
N_ESTIMATORS = 60  # the champion: RandomForestClassifier(N_ESTIMATORS, random_state=0, n_jobs=2)
REFERENCE_ROWS = 20_000  # window 0, what the champion is trained on

POLICY = f"""
# finops.toml of the demo (data only; see README.md for every key)
[tags]
team = "growth"
cost_center = "cc-demo"

[models.{MODEL}]
reference = "reference.parquet"
current = "incoming/*.parquet"
target = "{TARGET}"
schedule = "*/15 * * * *"          # cron: how `mlflow-finops schedule` would run it
experiment = "finops-demo/monitoring"
registered_model = "{REGISTERED}"

[drift]
drift_share = 0.3                  # retrain when 30% of the columns drifted
min_rows = 1000

[retrain]
ray_address = "{JOBS}"
metric = "accuracy"
margin = 0.0                       # promote only when strictly better on the newest slice
sample_interval_s = 1.0
poll_s = 1.0
warm_start_step = 20               # incremental: grow the forest by 20 trees per step
warm_start_steps = 2

[windows]
min_free_cpus = 1                  # opportunistic: only when the Ray cluster has a free CPU

[budgets.churn-monthly]
amount_usd = 0.05
per_job_usd = 0.01
period = "month"
priority = "standard"
models = ["{MODEL}"]
"""


def ray_up() -> bool:
    """Start a local Ray cluster unless one answers; True when this script started it."""
    from mlflow_finops.ray_cluster import ray_auth_headers

    try:  # with Ray's token authentication (2.59+) an answer without the token is a 401
        if requests.get(JOBS + "/api/version", headers=ray_auth_headers(), timeout=2).ok:
            return False
    except requests.RequestException:
        pass
    print("starting a local Ray cluster (mlflow-finops ray up) ...", flush=True)
    subprocess.run([str(BIN / "mlflow-finops"), "ray", "up", "--num-cpus", "2"], check=True)
    return True


def new_model(n_estimators: int = N_ESTIMATORS) -> RandomForestClassifier:
    """The champion's configuration (also what a from-scratch retrain fits)."""
    return RandomForestClassifier(n_estimators=n_estimators, random_state=0, n_jobs=2)


def train_champion(root: Path, policy, n_estimators: int = N_ESTIMATORS, rows: int = REFERENCE_ROWS) -> None:
    client = MlflowClient()
    supervisor = mlflow_finops.RetrainSupervisor(policy)
    for run in supervisor.pending(MODEL):  # requests left by an earlier demo run
        supervisor.cancel(run.info.run_id, "the demo starts over")
    if client.search_registered_models(f"name = '{REGISTERED}'"):
        client.delete_registered_model(REGISTERED)  # the demo starts over: no duplicate models
    ref = window(0, rows)
    ref.to_parquet(root / "reference.parquet")
    mlflow.set_experiment("finops-demo/training")
    with mlflow.start_run(run_name="champion-v1", tags={"finops.model": MODEL}):
        model = new_model(n_estimators)
        model.fit(ref[FEATURES], ref[TARGET])
        info = mlflow.sklearn.log_model(
            model, name="model", registered_model_name=REGISTERED,
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    client.set_registered_model_alias(REGISTERED, "champion", str(info.registered_model_version))


def champion_accuracy(df) -> float:
    model = mlflow.sklearn.load_model(f"models:/{REGISTERED}@champion")
    return float((model.predict(df[FEATURES]) == df[TARGET]).mean())


def prepare(root: Path):
    """The demo folder: an empty incoming/, the policy written and in force; returns the policy."""
    shutil.rmtree(root / "incoming", ignore_errors=True)
    (root / "incoming").mkdir(parents=True)
    (root / "finops.toml").write_text(POLICY)
    os.environ["MLFLOW_FINOPS_POLICY"] = str(root / "finops.toml")
    os.environ.setdefault("MLFLOW_FINOPS_SETTLE_S", "0.01")  # each window is written whole before its check
    return mlflow_finops.load_policy(root / "finops.toml")


@dataclass
class LoopResult:
    """What the loop did, window by window (windows 1..N)."""

    started: datetime
    accuracy: list[float] = field(default_factory=list)  # the champion in production, on the window, before any retrain
    decisions: list[str] = field(default_factory=list)
    retrains: list[list[dict]] = field(default_factory=list)  # per window: the retrain outcomes


def run_loop(root: Path, windows: int = 8, rows: int = 20_000, *, n_estimators: int = N_ESTIMATORS,
             echo: Callable[[str], None] = print) -> LoopResult:
    """The whole loop in ``root`` (data and policy) on the current tracking URI.

    Starts a local Ray cluster unless one answers on 127.0.0.1:8265 (and stops the one it started).
    """
    started = datetime.now(timezone.utc)
    policy = prepare(root)
    mlflow_finops.autolog(interval_s=1.0)  # every run below, training included, knows its cost
    result = LoopResult(started)

    our_ray = ray_up()
    try:
        echo("training the champion on window 0 ...")
        train_champion(root, policy, n_estimators)
        echo(f"\n{'window':>6}  {'drift':<8} {'champion acc':>12}  what happened")
        for w in range(1, windows + 1):
            df = window(w, rows)
            path = root / "incoming" / f"window-{w:02d}.parquet"
            df.to_parquet(path)
            acc = champion_accuracy(df)  # how the model in production does on the new window
            latest: dict[str, mlflow_finops.RetrainOutcome] = {}  # per request, its last outcome

            def on_retrain(r) -> None:
                latest[r.run_id] = r

            outcomes = mlflow_finops.run_schedule(policy, once=True, on_retrain=on_retrain)
            # The schedule never waits for a Ray job (it submits, then returns): the demo
            # supervises this window's retrains to their end before the next window arrives.
            for r in mlflow_finops.RetrainSupervisor(policy).run_pending(MODEL, wait=True):
                on_retrain(r)
            events = [f"retrain {r.state} ({format_usd(r.cost_usd or 0)}): {r.reason}" for r in latest.values()]
            done = [{"state": str(r.state), "cost_usd": r.cost_usd, "ray_job_id": r.ray_job_id,
                     "run_id": r.run_id, "model_version": r.model_version} for r in latest.values()]
            decision = outcomes[0].decision.decision if outcomes and outcomes[0].decision else outcomes[0].status
            result.accuracy.append(acc)
            result.decisions.append(decision)
            result.retrains.append(done)
            marker = "  <- drift point" if w in DRIFT_POINTS else ""
            echo(f"{w:>6}  {decision:<8} {acc:>12.3f}  {'; '.join(events) or '-'}{marker}")
            time.sleep(0.01)
    finally:
        if our_ray:
            subprocess.run([str(BIN / "mlflow-finops"), "ray", "down"], check=False)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--rows", type=int, default=20_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    mlflow.set_tracking_uri(mlflow.get_tracking_uri())  # default: sqlite:///mlflow.db here
    result = run_loop(Path("finops-demo").absolute(), args.windows, args.rows,
                      echo=lambda line: print(line, flush=True))
    started = result.started

    print("\nWhat it cost and what it bought:")
    client = MlflowClient()
    exp = client.get_experiment_by_name(f"finops-retrains/{MODEL}")
    for r in client.search_runs([exp.experiment_id], f"attributes.start_time >= {int(started.timestamp() * 1000)}",
                                order_by=["attributes.start_time ASC"]) if exp else []:
        m, t = r.data.metrics, r.data.tags
        gain = m.get("eval/challenger_accuracy", float("nan")) - m.get("eval/champion_accuracy", float("nan"))
        print(f"  retrain {r.info.run_id[:8]}  {t.get('finops.retrain_state'):<13} "
              f"cost {format_usd(m.get('finops/cost_usd', 0))}  accuracy {gain:+.3f} on the newest slice "
              f"(path {t.get('finops.update_path', '-')}, after drift check {t.get('finops.drift_run_id', '-')[:8]})")
    subprocess.run([str(BIN / "mlflow-finops"), "report", "--since", started.isoformat(timespec="seconds"),
                    "--by", "experiment"], check=False)
    print("\nLook at it in the MLflow UI:\n"
          f"  {BIN / 'mlflow'} ui --backend-store-uri {mlflow.get_tracking_uri()}\n"
          "  then open http://127.0.0.1:5000 (experiments finops-demo/*, finops-retrains/churn; "
          f"model {REGISTERED})")


if __name__ == "__main__":
    main()
