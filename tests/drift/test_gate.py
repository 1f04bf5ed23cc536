"""DriftGate against real Evidently and a real SQLite MLflow store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from drift_support import _template_db, all_runs, drift_store, frame  # noqa: F401
from mlflow import MlflowClient

from mlflow_finops import DriftDecision, DriftGate, PolicyError
from mlflow_finops.drift import DriftInputError
from mlflow_finops.policy import DriftPolicy


def runs_of(model: str) -> list:
    client = MlflowClient()
    exp = client.get_experiment_by_name(f"finops-monitoring/{model}")
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


# ------------------------------------------------------------------ decisions and logging
def test_no_drift_then_drift_are_logged_as_runs(drift_store: str) -> None:
    ref = frame(3000, seed=1)
    gate = DriftGate(ref, model="churn", min_rows=100)

    calm = gate.check(frame(2000, seed=2))
    assert isinstance(calm, DriftDecision)
    assert calm.decision == "no_drift" and not calm.retrain and calm.drifted_columns == []
    assert calm.drift_share == 0.0 and not calm.retrain

    moved = gate.check(frame(2000, seed=3, shift=0.8, levels=("a", "b", "d")))
    assert moved.retrain and moved.decision == "retrain"
    assert sorted(moved.drifted_columns) == ["plan", "x0", "x1", "x2", "x3"]
    assert moved.drift_share == 1.0
    assert "retrain recommended" in moved.reason
    # reference > 1000 rows: Evidently's defaults for large data, passed explicitly
    assert moved.columns["x0"].method == "wasserstein" and moved.columns["x0"].threshold == 0.1
    assert moved.columns["plan"].method == "jensenshannon"

    runs = runs_of("churn")
    assert [r.info.run_id for r in runs] == [calm.run_id, moved.run_id]
    run = runs[1]
    assert run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["finops.decision"] == "retrain"
    assert tags["finops.model"] == "churn"
    assert tags["finops.workload"] == "drift_check"
    assert metrics["drift/share"] == 1.0
    assert metrics["drift/columns_drifted"] == 5
    assert metrics["drift/rows_reference"] == 3000
    assert metrics["drift/rows_current"] == 2000
    assert metrics["drift/column/x0"] == pytest.approx(moved.columns["x0"].score)
    assert runs[0].data.tags["finops.decision"] == "no_drift"
    # the check's own cost, tracked into its run
    assert "finops/cost_usd" in metrics
    # Evidently's HTML report is an artifact of the retrain decision, and only of it (html_report = "retrain")
    client = MlflowClient()
    local = client.download_artifacts(run.info.run_id, "drift/drift_report.html", str(Path.cwd() / "dl"))
    html = Path(local).read_text()
    assert "<html" in html.lower() and "x0" in html
    assert [a.path for a in client.list_artifacts(calm.run_id, "drift")] == ["drift/columns.json"]


def test_html_report_always_or_never(drift_store: str) -> None:
    ref = frame(500, seed=1)
    client = MlflowClient()
    always = DriftGate(ref, model="always", min_rows=100, html_report="always").check(frame(300, seed=2))
    assert always.decision == "no_drift"
    assert "drift/drift_report.html" in [a.path for a in client.list_artifacts(always.run_id, "drift")]
    never = DriftGate(ref, model="never", min_rows=100, html_report="never").check(frame(300, seed=3, shift=2.0))
    assert never.retrain
    assert "drift/drift_report.html" not in [a.path for a in client.list_artifacts(never.run_id, "drift")]


def test_insufficient_data_is_said_and_logged(drift_store: str) -> None:
    gate = DriftGate(frame(2000, seed=1), model="small", min_rows=500)
    d = gate.check(frame(120, seed=2, shift=3.0))  # drifted, but too few rows to say
    assert d.decision == "insufficient_data" and not d.retrain
    assert "120 rows" in d.reason and "min_rows=500" in d.reason
    assert d.columns == {}
    (run,) = runs_of("small")
    assert run.data.tags["finops.decision"] == "insufficient_data"
    assert run.data.metrics["drift/rows_current"] == 120


# ------------------------------------------------------------------ verdicts = Evidently's tests
@pytest.mark.parametrize("n_ref", [400, 4000], ids=["small-reference-pvalues", "large-reference-distances"])
def test_derived_verdicts_match_evidently_test_statuses(n_ref: int) -> None:
    """Our score->verdict rule equals Evidently's own pass/fail and DriftedColumnsCount."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    ref = frame(n_ref, seed=10, numeric=6, levels=("a", "b"))
    ref["tier"] = np.random.default_rng(1).choice(["g", "s", "b"], n_ref)
    # every score clearly on one side of its threshold (checked below), so another SciPy or
    # Evidently release cannot flip a verdict and make the comparison test a rounding error
    cur = frame(n_ref, seed=11, numeric=6, shift={"x1": 0.3, "x2": 0.4},
                scale={"x3": 1.4}, levels=("a", "b"), probs=(0.42, 0.58))
    cur["tier"] = np.random.default_rng(2).choice(["g", "s", "b"], n_ref, p=[0.15, 0.3, 0.55])
    gate = DriftGate(ref, model="m", log_to_mlflow=False, min_rows=10,
                     per_column={"x5": {"method": "psi", "threshold": 0.1}, "x4": {"method": "ks", "threshold": 0.01}})
    d = gate.check(cur)
    for c, r in d.columns.items():
        assert abs(r.score - r.threshold) >= 0.25 * r.threshold, (c, r.score, r.threshold)

    names = list(ref.columns)
    numerical = [c for c in names if c.startswith("x")]
    dd = DataDefinition(numerical_columns=numerical, categorical_columns=["plan", "tier"])
    report = Report(
        [ValueDrift(column=c, method=d.columns[c].method, threshold=d.columns[c].threshold) for c in names]
        + [DriftedColumnsCount(per_column_method={c: d.columns[c].method for c in names},
                               per_column_threshold={c: d.columns[c].threshold for c in names})],
        include_tests=True,
    )
    snap = report.run(Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd))
    out = snap.dict()
    status = {t["metric_config"]["params"]["column"]: t["status"] for t in out["tests"]
              if t["metric_config"]["params"]["type"].endswith("ValueDrift")}
    assert set(status) == set(names)
    for c in names:
        assert d.columns[c].drifted == (status[c] == "FAIL"), (c, d.columns[c])
    share = next(m["value"]["share"] for m in out["metrics"] if "DriftedColumnsCount" in m["metric_name"])
    assert d.drift_share == pytest.approx(share)
    if n_ref <= 1000:
        assert {d.columns[c].method for c in numerical[:4]} == {"ks"}
        assert d.columns["plan"].method == "z" and d.columns["tier"].method == "chisquare"
    assert d.columns["x5"].method == "psi" and d.columns["x5"].threshold == 0.1
    assert d.columns["x4"].method == "ks" and d.columns["x4"].threshold == 0.01
    # a mix of verdicts, so the comparison means something
    assert 0 < len(d.drifted_columns) < len(names)


# ------------------------------------------------------------------ gate controls
def test_cooldown_blocks_a_second_trigger_until_it_expires(drift_store: str) -> None:
    ref = frame(2000, seed=1)
    gate = DriftGate(ref, model="cool", min_rows=100, cooldown_hours=24)
    t0 = datetime.now(timezone.utc)
    first = gate.check(frame(1000, seed=2, shift=1.0), now=t0)
    assert first.decision == "retrain"
    second = gate.check(frame(1000, seed=3, shift=1.0), now=t0 + timedelta(hours=2))
    assert second.decision == "cooldown" and not second.retrain and second.drift_detected
    assert first.run_id in second.reason and "24 h cooldown" in second.reason
    later = gate.check(frame(1000, seed=4, shift=1.0), now=datetime.now(timezone.utc) + timedelta(hours=25))
    assert later.decision == "retrain"
    assert [r.data.tags["finops.decision"] for r in runs_of("cool")] == ["retrain", "cooldown", "retrain"]


def test_persistence_needs_k_of_the_last_n_checks(drift_store: str) -> None:
    ref = frame(2000, seed=1)
    gate = DriftGate(ref, model="pers", min_rows=100, persistence_k=2, persistence_n=3)
    seq = [gate.check(frame(1000, seed=s, shift=sh)) for s, sh in [(2, 1.0), (3, 0.0), (4, 1.0)]]
    assert [d.decision for d in seq] == ["pending", "no_drift", "retrain"]
    assert "persistence needs 2 of 3" in seq[0].reason
    # a fresh gate (another process) reads the same history from MLflow
    again = DriftGate(ref, model="pers", min_rows=100, persistence_k=2, persistence_n=3).check(
        frame(1000, seed=5, shift=1.0))
    assert again.decision == "retrain"


def test_multiple_testing_correction_on_pvalue_columns() -> None:
    ref = frame(600, seed=20, numeric=12, categorical=False)
    shifts = {f"x{i}": s for i, s in enumerate([0.0, 0.0, 0.12, 0.14, 0.16, 0.18, 0.2, 0.0, 0.0, 0.0, 0.5, 0.0])}
    cur = frame(600, seed=21, numeric=12, categorical=False, shift=shifts)
    decisions = {
        c: DriftGate(ref, model="mt", log_to_mlflow=False, min_rows=10, correction=c).check(cur)
        for c in ("none", "bonferroni", "bh")
    }
    p = {c: r.score for c, r in decisions["none"].columns.items()}
    assert {r.method for r in decisions["none"].columns.values()} == {"ks"}
    m = len(p)
    assert set(decisions["none"].drifted_columns) == {c for c, v in p.items() if v <= 0.05}
    assert set(decisions["bonferroni"].drifted_columns) == {c for c, v in p.items() if v <= 0.05 / m}
    ranked = sorted(p, key=p.get)
    k_max = max([k for k, c in enumerate(ranked, 1) if p[c] <= k * 0.05 / m], default=0)
    assert set(decisions["bh"].drifted_columns) == set(ranked[:k_max])
    n_none, n_bh, n_bonf = (len(decisions[c].drifted_columns) for c in ("none", "bh", "bonferroni"))
    assert n_none >= n_bh >= n_bonf >= 1
    assert n_none > n_bonf  # the correction changed something on this data


def test_columns_and_ignore(drift_store: str) -> None:
    ref = frame(2000, seed=1)
    ref["id"] = np.arange(len(ref))
    cur = frame(1000, seed=2, shift={"x0": 2.0})
    cur["id"] = np.arange(len(cur)) + 10_000
    cur["debug"] = "x"
    gate = DriftGate(ref, model="cols", min_rows=10, ignore=["id", "debug"], drift_share=0.2)
    d = gate.check(cur)
    assert set(d.columns) == {"x0", "x1", "x2", "x3", "plan"}
    assert d.drifted_columns == ["x0"] and d.drift_share == pytest.approx(0.2) and d.retrain
    watched = DriftGate(ref, model="cols", min_rows=10, columns=["x1", "x2"], log_to_mlflow=False)
    assert set(watched.check(cur.drop(columns=["debug", "id"]).assign(id=1)).columns) == {"x1", "x2"}


def test_data_definition_sets_column_types() -> None:
    from evidently import DataDefinition

    ref = frame(3000, seed=1, categorical=False)
    ref["stars"] = np.random.default_rng(1).integers(1, 40, len(ref))  # int, inferred numerical
    cur = frame(3000, seed=2, categorical=False)
    cur["stars"] = np.random.default_rng(2).integers(1, 40, len(cur))
    inferred = DriftGate(ref, model="dd", log_to_mlflow=False, min_rows=10).check(cur)
    assert inferred.columns["stars"].type == "numerical" and inferred.columns["stars"].method == "wasserstein"
    dd = DataDefinition(numerical_columns=["x0", "x1"], categorical_columns=["stars"])
    declared = DriftGate(ref, model="dd", log_to_mlflow=False, min_rows=10, data_definition=dd).check(cur)
    assert set(declared.columns) == {"x0", "x1", "stars"}
    assert declared.columns["stars"].type == "categorical"
    assert declared.columns["stars"].method == "jensenshannon"


# ------------------------------------------------------------------ bad input
def _bad_cases(tmp: Path) -> list[tuple[str, object, str]]:
    ok = frame(500, seed=2)
    (tmp / "broken.parquet").write_bytes(b"not parquet at all")
    (tmp / "data.xlsx").write_text("x")
    nan = ok.copy()
    nan["x2"] = np.nan
    return [
        ("missing column", ok.drop(columns=["x1"]), "'x1'"),
        ("extra column", ok.assign(bonus=1.0), "'bonus'"),
        ("dtype change", ok.assign(x3=ok["x3"].astype(str)), "'x3': dtype changed from float64"),
        ("all NaN", nan, "'x2' is all NaN in the current"),
        ("empty frame", ok.iloc[:0], "current data is empty"),
        ("re-encoded levels", ok.assign(plan=ok["plan"].map({"a": 1, "b": 2, "c": 3}).astype(str)), "'plan'"),
        ("unreadable file", tmp / "broken.parquet", "broken.parquet: cannot read"),
        ("unknown file type", tmp / "data.xlsx", "data.xlsx: unsupported file type"),
        ("missing file", tmp / "nope.csv", "nope.csv: file not found"),
    ]


def test_bad_input_is_named_and_nothing_is_logged(drift_store: str, tmp_path: Path) -> None:
    gate = DriftGate(frame(2000, seed=1), model="bad", min_rows=10)
    for name, data, needle in _bad_cases(tmp_path):
        with pytest.raises(DriftInputError) as err:
            gate.check(data)  # type: ignore[arg-type]
        assert needle in str(err.value), (name, str(err.value))
    assert all_runs() == []
    assert MlflowClient().get_experiment_by_name("finops-monitoring/bad") is None


def test_bad_reference_is_named() -> None:
    ref = frame(100, seed=1)
    with pytest.raises(DriftInputError, match="reference data is empty"):
        DriftGate(ref.iloc[:0], log_to_mlflow=False)
    with pytest.raises(DriftInputError, match="'x0' is all NaN in the reference"):
        DriftGate(ref.assign(x0=np.nan), log_to_mlflow=False)
    with pytest.raises(DriftInputError, match="'nope'"):
        DriftGate(ref, log_to_mlflow=False, columns=["nope"])
    with pytest.raises(DriftInputError, match="'when'.*datetime"):
        DriftGate(ref.assign(when=pd.Timestamp("2026-01-01")), log_to_mlflow=False)


# ------------------------------------------------------------------ large data
def test_sampling_keeps_the_full_data_verdicts() -> None:
    """Sampled checks decide like unsampled ones, and near-threshold columns are refined."""
    n = 120_000
    ref = frame(n, seed=30, numeric=5)
    # x0: far from the threshold; x1: normed W1 = 0.1 exactly, on the threshold; x2: no drift
    cur = frame(n, seed=31, numeric=5, shift={"x0": 0.5, "x1": 0.1, "x3": 0.04}, levels=("a", "b", "c"),
                probs=(0.2, 0.4, 0.4))
    sampled = DriftGate(ref, model="big", log_to_mlflow=False, sample_rows=10_000, min_rows=10,
                        progress=True).check(cur)  # the rich progress bar path, on stderr
    full = DriftGate(ref, model="big", log_to_mlflow=False, sample_rows=n, min_rows=10).check(cur)
    assert sampled.sampled_rows_reference == 10_000 and sampled.sampled_rows_current == 10_000
    assert full.sampled_rows_current == n
    for c in full.columns:
        assert sampled.columns[c].method == full.columns[c].method  # sampling never changes the method
        assert sampled.columns[c].drifted == full.columns[c].drifted, c
    assert sampled.columns["x1"].refined  # its score was inside the sampling-error band
    assert not sampled.columns["x0"].refined and not sampled.columns["x2"].refined
    assert abs(sampled.columns["x0"].score - full.columns["x0"].score) < 0.03
    assert sampled.decision == full.decision


# ------------------------------------------------------------------ policy and performance
def test_from_policy_reads_model_section_and_unknown_model_is_named(drift_store: str, tmp_path: Path) -> None:
    frame(1500, seed=1).to_parquet(tmp_path / "ref.parquet")
    (tmp_path / "finops.toml").write_text(
        """
[drift]
min_rows = 50
drift_share = 0.9
[models.churn]
reference = "ref.parquet"
experiment = "monitoring/churn-prod"
[models.churn.drift]
drift_share = 0.2
cooldown_hours = 6
"""
    )
    gate = DriftGate.from_policy(tmp_path / "finops.toml", model="churn")
    assert gate.policy.drift_share == 0.2 and gate.policy.min_rows == 50 and gate.policy.cooldown_hours == 6
    d = gate.check(frame(400, seed=2, shift={"x0": 1.5}))
    assert d.retrain  # 1 of 5 columns >= 0.2
    assert MlflowClient().get_run(d.run_id).info.experiment_id == (
        MlflowClient().get_experiment_by_name("monitoring/churn-prod").experiment_id
    )
    with pytest.raises(PolicyError, match=r"\[models\.fraud\]: unknown model \(models in this policy: churn\)"):
        DriftGate.from_policy(tmp_path / "finops.toml", model="fraud")


def test_performance_signal_retrains_without_feature_drift(drift_store: str) -> None:
    from sklearn.linear_model import LogisticRegression

    def labelled(n: int, seed: int, flip: float) -> pd.DataFrame:
        df = frame(n, seed=seed, categorical=False)
        y = (df["x0"] + 0.5 * df["x1"] > 0).astype(int)
        rng = np.random.default_rng(seed + 100)
        mask = rng.random(n) < flip
        df["churned"] = np.where(mask, 1 - y, y)  # concept drift: same features, different labels
        return df

    ref = labelled(3000, 1, 0.02)
    model = LogisticRegression().fit(ref.drop(columns=["churned"]), ref["churned"])
    policy = DriftPolicy(min_rows=100, performance={"metric": "accuracy", "margin": 0.05})
    gate = DriftGate(ref, model="perf", target="churned", policy=policy, performance_model=model)
    ok = gate.check(labelled(1500, 2, 0.02))
    assert ok.decision == "no_drift" and ok.performance is not None and not ok.performance.degraded
    bad = gate.check(labelled(1500, 3, 0.30))
    assert bad.drifted_columns == []  # the features did not move
    assert bad.performance is not None and bad.performance.degraded
    assert bad.performance.reference - bad.performance.current > 0.05
    assert bad.retrain and "accuracy" in bad.reason
    run = MlflowClient().get_run(bad.run_id)
    assert run.data.metrics["drift/performance/accuracy_current"] == pytest.approx(bad.performance.current)
    # unlabelled windows skip the performance signal instead of failing
    unlabelled = gate.check(labelled(1500, 4, 0.3).drop(columns=["churned"]))
    assert unlabelled.performance is None and unlabelled.decision == "no_drift"


@pytest.mark.parametrize("n", [500, 3000])
def test_default_methods_are_the_ones_evidently_picks(n: int) -> None:
    """The gate resolves Evidently's default method itself (to pin it before sampling): same choice."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType
    from evidently.metrics import ValueDrift

    rng = np.random.default_rng(n)

    def make() -> pd.DataFrame:
        return pd.DataFrame({
            "x": rng.normal(size=n), "d": rng.integers(0, 4, n).astype(float),
            "b": rng.integers(0, 2, n).astype(float), "c": rng.choice(list("abc"), n), "z": rng.choice(list("ab"), n),
        })

    ref, cur = make(), make()
    dd = DataDefinition(numerical_columns=["x", "d", "b"], categorical_columns=["c", "z"])
    ours = DriftGate(ref, log_to_mlflow=False, min_rows=10, data_definition=dd).check(cur)
    snap = Report([ValueDrift(column=c) for c in ref.columns]).run(
        Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd))
    for m in snap.dict()["metrics"]:
        col = m["config"]["column"]
        r = ours.columns[col]
        # chi-square / Z are registered for categorical columns only, yet Evidently picks them
        # for numerical columns with <= 5 values on a small reference
        ctype = ColumnType.Numerical if r.method not in ("chisquare", "z") else ColumnType.Categorical
        assert get_registered_stattest(r.method, ctype).display_name == m["config"]["method"], col
        assert r.threshold == m["config"]["threshold"]
        assert r.score == pytest.approx(m["value"])  # unsampled: the very same score


def test_policy_errors_name_the_key(tmp_path: Path) -> None:
    from mlflow_finops import load_policy

    cases = {
        "[drift]\npersistence_k = 3\n": "persistence_k (3) must be <= persistence_n (1)",
        '[drift]\nmethod = "kss"\n': "unsupported drift method 'kss'",
        "[drift]\ncorrection = \"holm\"\n": "[drift].correction",
        '[models.churn]\nschedule = "every day"\n': "not a valid cron expression",
        "[models.churn]\nrefrence = \"x\"\n": "[models].churn.refrence: unknown key (expected one of: reference",
        "[models.churn.drift]\nshare = 1\n": "[models].churn.drift.share: unknown key",
    }
    for text, needle in cases.items():
        (tmp_path / "p.toml").write_text(text)
        with pytest.raises(PolicyError) as err:
            load_policy(tmp_path / "p.toml")
        assert needle in str(err.value), (text, str(err.value))
    # a model may override one persistence key when the merged pair is consistent
    (tmp_path / "p.toml").write_text("[drift]\npersistence_n = 3\n[models.churn.drift]\npersistence_k = 2\n")
    assert load_policy(tmp_path / "p.toml").models["churn"].drift.persistence_k == 2
    with pytest.raises(PolicyError, match="persistence_k"):
        DriftGate(frame(100), log_to_mlflow=False, persistence_k=2)


def test_performance_without_target_or_model_is_a_config_error() -> None:
    ref = frame(200)
    perf = {"metric": "accuracy", "margin": 0.05}
    with pytest.raises(PolicyError, match="label column"):
        DriftGate(ref, log_to_mlflow=False, performance=perf)
    with pytest.raises(PolicyError, match="needs a model"):
        DriftGate(ref.assign(y=1), log_to_mlflow=False, target="y", performance=perf)


def test_performance_model_from_an_mlflow_model_uri(drift_store: str, tmp_path: Path) -> None:
    """[drift.performance].model_uri: the model is loaded with mlflow.pyfunc, as a scheduler would."""
    import mlflow
    from sklearn.linear_model import LogisticRegression

    ref = frame(2000, seed=1, categorical=False)
    ref["y"] = (ref["x0"] > 0).astype(int)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LogisticRegression().fit(ref.drop(columns=["y"]), ref["y"]), name="model",
                                        pip_requirements=["scikit-learn"])  # no slow requirement inference
    ref.to_parquet(tmp_path / "ref.parquet")
    (tmp_path / "finops.toml").write_text(
        f'[drift]\nmin_rows = 100\n[drift.performance]\nmetric = "f1"\nmargin = 0.1\nmodel_uri = "{info.model_uri}"\n'
        '[models.m]\nreference = "ref.parquet"\ntarget = "y"\n'
    )
    cur = frame(1000, seed=2, categorical=False)
    cur["y"] = (cur["x0"] < 0).astype(int)  # the label flipped: the model is now always wrong
    d = DriftGate.from_policy(tmp_path / "finops.toml", model="m").check(cur)
    assert d.performance is not None and d.performance.metric == "f1"
    assert d.performance.reference > 0.95 and d.performance.current < 0.1
    assert d.retrain and d.drifted_columns == []


def test_a_retrain_report_shows_the_drifted_columns(drift_store: str) -> None:
    gate = DriftGate(frame(500, seed=1), model="some", min_rows=100, drift_share=0.2)
    d = gate.check(frame(300, seed=4, shift={"x1": 3.0}))
    assert d.retrain and "x1" in d.drifted_columns and len(d.drifted_columns) < 5
    client = MlflowClient()
    local = client.download_artifacts(d.run_id, "drift/drift_report.html", str(Path.cwd() / "dl-some"))
    html = Path(local).read_text()
    for column in d.columns:
        assert (f"Drift in column '{column}'" in html) == (column in d.drifted_columns), column
