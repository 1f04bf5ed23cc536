"""Quickstart: what did this training run cost?

Runs on the embedded defaults: a SQLite MLflow store (./mlflow.db) in the
current folder. Run it twice and compare the runs in the MLflow UI.

    python examples/quickstart.py
"""

from __future__ import annotations

import logging

import mlflow
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

import mlflow_finops

logging.basicConfig(level=logging.WARNING)


def main() -> None:
    mlflow.set_tracking_uri(mlflow.get_tracking_uri())  # default: sqlite:///mlflow.db here
    mlflow.set_experiment("finops-quickstart")
    mlflow_finops.autolog(interval_s=1)  # the one line: every run from here on is cost-tracked

    X, y = make_classification(n_samples=30_000, n_features=30, n_informative=12, random_state=0)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, random_state=0)
    for n_trees in (50, 200):
        with mlflow.start_run(run_name=f"forest-{n_trees}") as run:
            model = RandomForestClassifier(n_estimators=n_trees, n_jobs=2, random_state=0)
            model.fit(X_tr, y_tr)  # joblib workers are charged to this run too
            mlflow.log_param("n_estimators", n_trees)
            mlflow.log_metric("accuracy", model.score(X_te, y_te))
        m = mlflow.get_run(run.info.run_id).data.metrics
        print(
            f"forest-{n_trees:<4} accuracy {m['accuracy']:.3f}  cost ${m['finops/cost_usd']:.6f}  "
            f"CPU {m['finops/cpu_core_hours'] * 3600:6.1f} core-s  "
            f"efficiency {m['finops/cpu_efficiency']:.0%}  CO2e {m['finops/co2e_kg'] * 1000:.3f} g"
        )
    print(
        f"\nCompare the runs by cost next to accuracy:\n"
        f"  mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}   # then open http://127.0.0.1:5000\n"
        f"  experiment 'finops-quickstart', columns finops/cost_usd and accuracy"
    )


if __name__ == "__main__":
    main()
