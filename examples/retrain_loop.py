"""The whole loop on any tabular data set: cost-tracked training, a drift gate that judges harm
(and drift while labels lag), budget-limited incremental retraining on Ray, promotion only when
better, and a report of what it all cost and bought.

    python examples/retrain_loop.py                       # the synthetic demo (examples/stream.py)
    python examples/retrain_loop.py --data ../shared/data/rialto.csv.gz --target target \\
        --reference-rows 8000 --batch-rows 8000 --batches 9

The data is cut in time order: a reference (what the first champion learns from), then batches
that arrive one by one. Each batch is written into ``<root>/incoming/``, scored by the champion
in production (prequential accuracy), checked by the gate, and any retrain it asks for is driven
to its end before the next batch arrives. It writes ./mlflow.db and ./finops-demo/ (data and the
policy, from examples/retrain_loop.toml); retrains run on a local Ray cluster of its own,
stopped afterwards. Re-running it starts the loop over; earlier runs stay in mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import string
import subprocess
import sys
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier

import mlflow_finops
from mlflow_finops.frames import read_frame
from mlflow_finops.money import format_usd
from mlflow_finops.names import (METRIC_COST_USD, TAG_DRIFT_RUN_ID, TAG_MODEL, TAG_RETRAIN_STATE, TAG_UPDATE_PATH,
                                 eval_challenger, eval_champion, retrains_experiment)
from mlflow_finops.scoring import score
from mlflow_finops.streams import DRIFT_POINTS, TARGET, cut, synthetic

MODEL, REGISTERED, EXPERIMENT = "churn", "churn-demo", "finops-demo"
POLICY_TEMPLATE = Path(__file__).with_suffix(".toml")
BIN = Path(sys.executable).parent


def policy_text(*, model: str, registered: str, experiment: str, target: str, features: Sequence[str],
                drop: Sequence[str], ray_address: str | None, extra: str = "") -> str:
    """The loop's finops.toml (examples/retrain_loop.toml filled in), plus ``extra`` sections.

    Without ``ray_address`` the policy names no Ray cluster (for uses that submit no retrain job).
    """
    q = json.dumps  # a JSON string or list of strings is a TOML one
    text = string.Template(POLICY_TEMPLATE.read_text()).substitute(
        model=q(model), registered=q(registered), monitoring=q(experiment + "/monitoring"), target=q(target),
        features=q(list(features)), drop=q(list(drop)), budget=q(model + "-monthly"),
        ray_address=f"ray_address = {q(ray_address)}" if ray_address else "# no Ray cluster: no retrain job")
    if extra.strip():
        text += "\n# --- extra policy\n" + extra.strip() + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # e.g. the extra text repeats a section written above
        raise ValueError(f"the policy with the extra text is not valid TOML ({exc}); add keys in sections "
                         f"this loop does not write, e.g. [drift], [trigger], [models.{model}.retrain]") from None
    return text


def resolve_features(reference: pd.DataFrame, target: str, features: Sequence[str] | None,
                     drop: Sequence[str]) -> list[str]:
    """The columns the model learns from: ``features``, else every column but the target and ``drop``."""
    cols = list(features) if features else [c for c in reference.columns if c != target and c not in drop]
    missing = [c for c in [target, *cols] if c not in reference.columns]
    if missing:
        raise ValueError(f"the reference has no column(s) {', '.join(map(repr, missing))}")
    return cols


def train_champion(policy: mlflow_finops.Policy, reference: pd.DataFrame, features: list[str], target: str) -> None:
    """The first champion, registered as ``@champion`` with its validation score: fitted without the
    newest rows of the reference and scored on them, as a retrain validates its challenger."""
    X, y = reference[features], reference[target]
    n_hold = max(1, int(len(reference) * policy.retrain.holdout_fraction))
    new = lambda: RandomForestClassifier(n_estimators=60, random_state=0, n_jobs=2)  # noqa: E731
    validated = score(new().fit(X.iloc[:-n_hold], y.iloc[:-n_hold]), X.iloc[-n_hold:], y.iloc[-n_hold:], "accuracy")
    mlflow.set_experiment(EXPERIMENT + "/training")
    with mlflow.start_run(run_name="champion-v1", tags={TAG_MODEL: MODEL}):
        mlflow_finops.register_champion(new().fit(X, y), REGISTERED, metric="accuracy", score=validated)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a CSV or Parquet file in time order (default: the synthetic stream)")
    ap.add_argument("--target", default=TARGET, help=f"the label column (default {TARGET!r})")
    ap.add_argument("--drop", default="", help="comma-separated columns never learned from nor judged (ids)")
    ap.add_argument("--reference-rows", type=int, default=20_000)
    ap.add_argument("--batch-rows", "--window-rows", type=int, default=20_000, help="rows per batch of new data")
    ap.add_argument("--batches", "--windows", type=int, help="how many batches (default: 8; with --data: all)")
    ap.add_argument("--extra-policy", default="", help="TOML added to the policy, e.g. a [drift] section")
    ap.add_argument("--root", default="finops-demo", help="the loop's data and policy folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.data:
        reference, batches = cut(read_frame(args.data), args.reference_rows, args.batch_rows, args.batches)
    else:
        reference, batches = synthetic(args.batches or 8, args.batch_rows, args.reference_rows)
    drop = [c.strip() for c in args.drop.split(",") if c.strip()]
    features = resolve_features(reference, args.target, None, drop)
    root, started = Path(args.root).absolute(), datetime.now(timezone.utc)

    print("Ray: starting a local cluster of our own (free ports, its own temp dir) ...", flush=True)
    with mlflow_finops.local_cluster(num_cpus=2) as cluster:
        # 1. the policy: where the data lands, the registered model, the retrain's budget
        shutil.rmtree(root / "incoming", ignore_errors=True)
        shutil.rmtree(root / "references", ignore_errors=True)  # what earlier promotions learned from
        (root / "incoming").mkdir(parents=True)
        (root / "finops.toml").write_text(policy_text(
            model=MODEL, registered=REGISTERED, experiment=EXPERIMENT, target=args.target, features=features,
            drop=drop, ray_address=cluster.jobs_url, extra=args.extra_policy))
        os.environ["MLFLOW_FINOPS_POLICY"] = str(root / "finops.toml")
        os.environ.setdefault("MLFLOW_FINOPS_SETTLE_S", "0.01")  # each batch is written whole before its check
        policy = mlflow_finops.load_policy(root / "finops.toml")
        reference.to_parquet(root / "reference.parquet")

        # 2. the first champion, every run cost-tracked; the loop starts over
        mlflow_finops.autolog(interval_s=1.0)
        supervisor = mlflow_finops.RetrainSupervisor(policy)
        for run in supervisor.pending(MODEL):  # requests left by an earlier run of the loop
            supervisor.cancel(run.info.run_id, "the loop starts over")
        if MlflowClient().search_registered_models(f"name = '{REGISTERED}'"):
            MlflowClient().delete_registered_model(REGISTERED)
        print(f"training the champion on the reference ({len(reference):,} rows, {len(features)} features) ...")
        train_champion(policy, reference, features, args.target)

        # 3. batch after batch: score the champion, check, retrain when worth it, wait for the retrain
        print(f"\n{'batch':>6}  {'decision':<18} {'champion acc':>12}  what happened")
        accuracy, gates, loaded = [], {}, {}  # the drift gates are fitted once, each champion loaded once
        for i, batch in enumerate(batches, start=1):
            batch.to_parquet(root / "incoming" / f"batch-{i:02d}.parquet")
            version = MlflowClient().get_model_version_by_alias(REGISTERED, "champion").version
            if version not in loaded:
                loaded[version] = mlflow.sklearn.load_model(f"models:/{REGISTERED}/{version}")
            champion = loaded[version]
            accuracy.append(float((champion.predict(batch[features]) == batch[args.target]).mean()))
            [out] = mlflow_finops.run_schedule(policy, once=True, gates=gates)
            steps = {r.run_id: r for r in [*out.retrains, *mlflow_finops.drain(policy, MODEL, timeout_s=900)]}
            events = [f"retrain {r.state} ({format_usd(r.cost_usd or 0)}): {r.reason}" for r in steps.values()]
            marker = "  <- drift point" if not args.data and i in DRIFT_POINTS else ""
            decision = out.decision.decision if out.decision else out.status
            print(f"{i:>6}  {decision:<18} {accuracy[-1]:>12.3f}  {'; '.join(events) or '-'}{marker}")
            if out.decision:
                print(f"{'':>8}gate: {out.decision.reason}")
            if out.verdict:
                print(f"{'':>8}trigger: {out.verdict.decision}: {out.verdict.reason}", flush=True)

    # 4. what it cost and what it bought
    print(f"\nmean prequential accuracy over {len(accuracy)} batches: {sum(accuracy) / len(accuracy):.4f}")
    print("\nWhat it cost and what it bought:")
    client = MlflowClient()
    exp = client.get_experiment_by_name(retrains_experiment(MODEL))
    for r in client.search_runs([exp.experiment_id], f"attributes.start_time >= {int(started.timestamp() * 1000)}",
                                order_by=["attributes.start_time ASC"]) if exp else []:
        m, t = r.data.metrics, r.data.tags
        gain = m.get(eval_challenger("accuracy"), float("nan")) - m.get(eval_champion("accuracy"), float("nan"))
        print(f"  retrain {r.info.run_id[:8]}  {t.get(TAG_RETRAIN_STATE):<13} "
              f"cost {format_usd(m.get(METRIC_COST_USD, 0))}  accuracy {gain:+.3f} on the newest slice "
              f"(path {t.get(TAG_UPDATE_PATH, '-')}, after drift check {t.get(TAG_DRIFT_RUN_ID, '-')[:8]})")
    subprocess.run([str(BIN / "mlflow-finops"), "report", "--since", started.isoformat(timespec="seconds"),
                    "--by", "experiment"], check=False)
    print(f"\nLook at it in the MLflow UI:\n  {BIN / 'mlflow'} ui --backend-store-uri {mlflow.get_tracking_uri()}\n"
          f"  then open http://127.0.0.1:5000 (experiments {EXPERIMENT}/*, finops-retrains/{MODEL}; "
          f"model {REGISTERED})")


if __name__ == "__main__":
    main()
