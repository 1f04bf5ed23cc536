"""What bench_headline.py's policies share, built on the package's loop API: the loop's policy
(examples/retrain_loop.toml, the demo's, read as a file), the first champion with its validation
score, the champion in production scored on each window, and policy (c), the loop itself.

The loop here is the one ``examples/retrain_loop.py`` runs: ``mlflow_finops.run_schedule`` once
per window, then ``mlflow_finops.drain`` until the window's retrains have ended.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path
from typing import Any, Callable, Sequence

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier

import mlflow_finops
from mlflow_finops.names import TAG_MODEL
from mlflow_finops.scoring import score

POLICY_TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "retrain_loop.toml"
MODEL, REGISTERED, EXPERIMENT = "churn", "churn-demo", "finops-demo"
DRAIN_TIMEOUT_S = 1800.0


def new_model(n_estimators: int = 60) -> RandomForestClassifier:
    """The first champion (the demo's): RandomForestClassifier(n_estimators, random_state=0, n_jobs=2)."""
    return RandomForestClassifier(n_estimators=n_estimators, random_state=0, n_jobs=2)


def features_of(reference: pd.DataFrame, target: str) -> list[str]:
    """Every column but the target."""
    return [c for c in reference.columns if c != target]


def prepare(root: Path, *, target: str, features: Sequence[str], ray_address: str | None,
            extra: str = "") -> mlflow_finops.Policy:
    """The loop's folder: an empty incoming/, the demo's policy written and in force (``extra``: TOML
    appended to it, e.g. a ``[trigger]`` value of a point); the policy."""
    q = json.dumps
    text = string.Template(POLICY_TEMPLATE.read_text()).substitute(
        model=q(MODEL), registered=q(REGISTERED), monitoring=q(EXPERIMENT + "/monitoring"), target=q(target),
        features=q(list(features)), drop=q([]), budget=q(MODEL + "-monthly"),
        ray_address=f"ray_address = {q(ray_address)}" if ray_address else "# no Ray cluster: no retrain job")
    shutil.rmtree(root / "incoming", ignore_errors=True)
    shutil.rmtree(root / "references", ignore_errors=True)
    (root / "incoming").mkdir(parents=True)
    (root / "finops.toml").write_text(text + extra)
    os.environ["MLFLOW_FINOPS_POLICY"] = str(root / "finops.toml")
    os.environ.setdefault("MLFLOW_FINOPS_SETTLE_S", "0.01")  # each window is written whole before its check
    return mlflow_finops.load_policy(root / "finops.toml")


def train_champion(policy: mlflow_finops.Policy, reference: pd.DataFrame, *, target: str, features: Sequence[str],
                   model_factory: Callable[[], Any]) -> None:
    """The first champion on the reference, ``@champion`` with its validation score (fitted without
    the newest ``holdout_fraction`` of the reference, scored on them)."""
    metric = policy.retrain.metric
    X, y = reference[list(features)], reference[target]
    n_hold = max(1, int(len(reference) * policy.retrain.holdout_fraction))
    validated = score(model_factory().fit(X.iloc[:-n_hold], y.iloc[:-n_hold]), X.iloc[-n_hold:], y.iloc[-n_hold:],
                      metric)
    mlflow.set_experiment(EXPERIMENT + "/training")
    with mlflow.start_run(run_name="champion-v1", tags={TAG_MODEL: MODEL}):
        mlflow.log_metric(f"validation_{metric}", validated)
        mlflow_finops.register_champion(model_factory().fit(X, y), REGISTERED, metric=metric, score=validated)


class ChampionScorer:
    """Accuracy of ``@champion`` on a window; a version is loaded once."""

    def __init__(self, features: Sequence[str], target: str) -> None:
        self.features, self.target = list(features), target
        self._loaded: dict[str, Any] = {}

    def __call__(self, df: pd.DataFrame) -> float:
        version = str(MlflowClient().get_model_version_by_alias(REGISTERED, "champion").version)
        if version not in self._loaded:
            self._loaded = {version: mlflow.sklearn.load_model(f"models:/{REGISTERED}/{version}")}
        return float((self._loaded[version].predict(df[self.features]) == df[self.target]).mean())


def retrain_row(r: Any) -> dict:
    """A retrain step as the headline's JSON keeps it."""
    return {"state": str(r.state), "cost_usd": r.cost_usd, "ray_job_id": r.ray_job_id, "run_id": r.run_id,
            "model_version": r.model_version}


def gated(root: Path, reference: pd.DataFrame, windows: Sequence[pd.DataFrame], *, target: str, extra: str = "",
          model_factory: Callable[[], Any], drift_points: Sequence[int] = (),
          echo: Callable[[str], None] = print) -> dict:
    """Policy (c): the loop on a local Ray cluster of its own; its figures, window by window."""
    features = features_of(reference, target)
    out: dict = {"features": features, "accuracy": [], "decisions": [], "reasons": [], "triggers": [], "retrains": []}
    with mlflow_finops.local_cluster(num_cpus=2) as cluster:
        echo(f"Ray: our own local cluster, Jobs API {cluster.jobs_url}")
        policy = prepare(root, target=target, features=features, ray_address=cluster.jobs_url, extra=extra)
        reference.to_parquet(root / "reference.parquet")
        mlflow_finops.autolog(interval_s=1.0)
        echo(f"training the champion on the reference ({len(reference):,} rows, {len(features)} features) ...")
        train_champion(policy, reference, target=target, features=features, model_factory=model_factory)
        scorer = ChampionScorer(features, target)
        gates: dict[str, Any] = {}
        for w, df in enumerate(windows, start=1):
            df.to_parquet(root / "incoming" / f"window-{w:02d}.parquet")
            acc = scorer(df)
            [res] = mlflow_finops.run_schedule(policy, once=True, gates=gates)
            steps = {r.run_id: r for r in [*res.retrains, *mlflow_finops.drain(policy, MODEL, timeout_s=DRAIN_TIMEOUT_S)]}
            decision = res.decision.decision if res.decision else res.status
            out["accuracy"].append(acc)
            out["decisions"].append(str(decision))
            out["reasons"].append(res.decision.reason if res.decision else "")
            out["triggers"].append(f"{res.verdict.decision}: {res.verdict.reason}" if res.verdict else "")
            out["retrains"].append([retrain_row(r) for r in steps.values()])
            events = "; ".join(f"retrain {r.state} (${r.cost_usd or 0:.6f}): {r.reason}" for r in steps.values())
            marker = "  <- drift point" if w in drift_points else ""
            echo(f"{w:>6}  {decision!s:<18} {acc:>12.3f}  {events or '-'}{marker}")
            for label, text in (("gate", out["reasons"][-1]), ("trigger", out["triggers"][-1])):
                if text:
                    echo(f"{'':>8}{label}: {text}")
    return out
