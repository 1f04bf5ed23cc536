"""Retraining benchmarks (issue 4): cost-cap precision, and incremental vs full retraining.

Everything goes through the real path: ``request_retrain`` records the request
in MLflow, ``RetrainSupervisor.process`` submits ``ray_jobs/retrain.py`` as a
real Ray job (Jobs API of a ``ray.cluster_utils.Cluster`` head on 127.0.0.1,
2 CPUs) and supervises it; the job loads ``models:/<name>@champion`` from a
SQLite MLflow store in a temp folder, updates it with the newer data files, is
cost-tracked by ``mlflow_finops.autolog`` and logs ``finops/cost_usd`` and
``eval/*`` to the retrain run. The figures are read back from that run.

**cap**: a ``Pipeline(StandardScaler, SGDClassifier)`` champion, one new
Parquet file (``--cap-rows`` rows x 20 features), ``partial_fit`` for
``--cap-epochs`` epochs (``batch_rows`` 2048, so the job can stop between two
``partial_fit`` calls), ``sample_interval_s = 1.0``. One uncapped run of the
same job sizes the cap: ``per_job_usd = --cap-fraction x`` its cost. Then
``--repeats`` capped runs; printed for each: the cap, the final recorded
``finops/cost_usd``, the overspend past the cap (USD and % of the cap), and one
sampling interval's spend (the run's mean cost rate x 1 s). Target: overspend
<= 5% of the cap or <= one interval's spend.

**incremental**: a drifting stream of 20 features: a reference window
(``--ref-rows``, t = 0) on which the champion is trained, then 3 new windows of
``--window-rows`` (t = 1/3, 2/3, 1) whose feature means shift and whose
decision boundary rotates (60 degrees at t = 1). The job holds out the newest
20% of the new rows (part of the t = 1 window) for both. Two kinds of champion
(``--champions``): ``sgd``, a ``Pipeline(StandardScaler, SGDClassifier)``
updated by ``partial_fit`` (5 epochs over the new rows, the champion's scaler
kept), and ``hgb``, a ``HistGradientBoostingClassifier(max_iter=100)`` updated
by ``warm_start`` (up to 5 x 10 more boosting stages fitted on the new rows).
Full = ``strategy = "refit"``, ``memory = "all"`` (a fresh model fitted on reference + new rows,
reading the reference inside the run). Each ``--inc-repeats`` times, in
alternating order, the champion alias reset to the same v1 in between.
Printed: each one's ``finops/cost_usd``, the ratio incremental / full (target
<= 0.3), ``eval/challenger_accuracy`` on the held-out newest slice and the
accuracy difference (target <= 1 point lost).

The incremental part also measures, in this process on the same data, what a
fresh interpreter pays to import the job, the job's own ``update`` for both
paths, and one ``mlflow.sklearn.log_model``, to show where the CPU goes.
**fixed**: the fixed cost of one retrain (all the run is charged but its update)
on each runner: a ``Pipeline(StandardScaler, SGDClassifier)`` champion (skops),
``--fixed-rows`` new rows, ``partial_fit`` (5 epochs); ``--fixed-repeats``
retrains as Ray jobs (``runner = "job"``), then as many on the warm actor
(``runner = "actor"``: the first cold, on a new actor, the others warm), the
champion alias reset to v1 in between. Fixed = the run's ``finops/cpu_core_hours``
in CPU-s minus the update's own CPU-s (``job.update`` timed in this process on
the same data, best of 3). Also the warm actor's idle upkeep (CPU-s per idle
minute, charged to the next retrain). Target: <= 3 CPU-s warm.

``BENCH_JOB_LOGS=1`` prints each Ray job's log tail.

    .venv/bin/python bench/bench_retrain.py                  # all parts, ~9 min on 2 cores
    .venv/bin/python bench/bench_retrain.py --part cap
    .venv/bin/python bench/bench_retrain.py --part fixed [--fixed-repeats 4]
    .venv/bin/python bench/bench_retrain.py --part incremental [--champions sgd,hgb] [--champion-format cloudpickle]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import _local_ray  # noqa: F401  (before ray is imported: keeps Ray on loopback)

from mlflow_finops.names import (METRIC_COST_USD, METRIC_PREFIX, METRIC_ROWS_NEW, TAG_RETRAIN_RUNNER,
                                 TAG_UPDATE_PATH, eval_challenger, eval_champion)
from mlflow_finops.ray_cluster import free_ports, loopback_cluster_env, wait_until_jobs_run

N_FEATURES = 20
SAMPLE_INTERVAL_S = 1.0


def stream(n: int, t: float, seed: int, theta: float = np.pi / 3) -> pd.DataFrame:
    """One window of the drifting stream at time t in [0, 1].

    Feature means move by t x (0.2 .. 1.0); the label is the sign of a linear
    score (plus a small non-linear term and noise) whose direction rotates from
    ``a`` (features 0-3) towards ``b`` (features 4-7) by ``t x theta``.
    """
    rng = np.random.default_rng(seed)
    shift = t * np.linspace(0.2, 1.0, N_FEATURES)
    X = rng.normal(size=(n, N_FEATURES)) + shift
    a = np.zeros(N_FEATURES)
    a[:4] = [1.0, 0.8, -0.6, 0.5]
    b = np.zeros(N_FEATURES)
    b[4:8] = [1.0, -0.7, 0.6, 0.4]
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    w = np.cos(t * theta) * a + np.sin(t * theta) * b
    z = (X - shift) @ w + 0.3 * np.sin(2 * X[:, 8]) + rng.normal(scale=0.25, size=n)
    cols = [f"f{i}" for i in range(N_FEATURES)]
    return pd.DataFrame(X.astype(np.float32), columns=cols).assign(y=(z > 0).astype(np.int64))


def sgd_pipeline():
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), SGDClassifier(random_state=0))


def register_champion(model, names: list[str], fmt: str = "skops") -> None:
    """Log the fitted model once per registered name (in ``fmt``) and point @champion at it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    import mlflow_finops

    for name in names:
        with mlflow.start_run(run_name=f"champion-{name}"):
            if fmt == "skops":
                mlflow_finops.register_champion(model, name)
                continue
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name, serialization_format=fmt)
        MlflowClient().set_registered_model_alias(name, "champion", str(info.registered_model_version))
    time.sleep(0.05)  # the new data files are strictly newer than the champion versions


def retrain(policy_path: Path, model: str, timeout_s: float = 300.0) -> dict:
    """request_retrain, then drained to its end (a real Ray job or the warm actor); what the run recorded."""
    from mlflow.tracking import MlflowClient

    import mlflow_finops
    from mlflow_finops import load_policy
    from mlflow_finops.retrain import request_retrain

    policy = load_policy(policy_path)
    t0 = time.time()
    run_id = request_retrain(policy, model, reason="bench")
    # step by step, as the scheduler does: same submit and supervision (cap backstop included),
    # with a deadline in case the cluster dies under us
    try:
        [out] = [o for o in mlflow_finops.drain(policy, model, timeout_s=timeout_s) if o.run_id == run_id]
    except TimeoutError as exc:
        raise SystemExit(str(exc)) from None
    wall = time.time() - t0
    run = MlflowClient().get_run(run_id)
    job_status = None
    if out.ray_job_id and run.data.tags.get(TAG_RETRAIN_RUNNER, "job") == "job":
        from ray.job_submission import JobStatus, JobSubmissionClient

        jobs = JobSubmissionClient(policy.retrain.ray_address)
        while not (status := jobs.get_job_status(out.ray_job_id)).is_terminal():
            if time.time() - t0 > timeout_s:
                break
            time.sleep(0.5)  # the job's process may outlive its run by a moment
        job_status = JobStatus(status).value
        if os.environ.get("BENCH_JOB_LOGS"):
            print(jobs.get_job_logs(out.ray_job_id)[-3000:])
    m, tags = run.data.metrics, run.data.tags
    wall_s = m.get(METRIC_PREFIX + "wall_hours", float("nan")) * 3600
    cost = m.get(METRIC_COST_USD, float("nan"))
    return {
        "run_id": run_id,
        "state": out.state,
        "reason": out.reason,
        "status": run.info.status,
        "path": tags.get(TAG_UPDATE_PATH),
        "cost": cost,
        "cap": out.cap_usd,
        "cpu_s": m.get(METRIC_PREFIX + "cpu_core_hours", float("nan")) * 3600,
        "wall_s": wall_s,
        "rate": cost / wall_s if wall_s else float("nan"),
        "acc": m.get(eval_challenger("accuracy")),
        "champ_acc": m.get(eval_champion("accuracy")),
        "rows": m.get(METRIC_ROWS_NEW),
        "round_trip_s": wall,
        "job_status": job_status,
        "runner": tags.get(TAG_RETRAIN_RUNNER),
    }


RETRAIN_DEFAULTS = f"""
[retrain]
ray_address = "{{jobs}}"
sample_interval_s = {SAMPLE_INTERVAL_S}
poll_s = 0.5
max_attempts = 1
backoff_s = 0
"""


def model_section(model: str, strategy: str, extra: str = "") -> str:
    """One ``[models.X]`` section on ``ref.parquet`` + ``incoming/*.parquet``, registered as bench-X."""
    return f"""
[models.{model}]
reference = "ref.parquet"
current = "incoming/*.parquet"
target = "y"
registered_model = "bench-{model}"
[models.{model}.retrain]
strategy = "{strategy}"
{extra}"""


# ---------------------------------------------------------------------------- cap
def part_cap(args: argparse.Namespace, jobs: str, root: Path) -> dict:
    from mlflow.tracking import MlflowClient

    d = root / "cap"
    (d / "incoming").mkdir(parents=True)
    ref = stream(50_000, 0.0, 11)
    ref.to_parquet(d / "ref.parquet")
    champion = sgd_pipeline().fit(ref.drop(columns="y"), ref["y"])
    register_champion(champion, ["bench-capsize", "bench-capped"])
    stream(args.cap_rows, 0.5, 12).to_parquet(d / "incoming" / "w1.parquet")

    def policy(cap: float | None) -> Path:
        text = RETRAIN_DEFAULTS.format(jobs=jobs)
        for model in ("capsize", "capped"):
            text += model_section(model, "partial_fit", f"partial_fit_epochs = {args.cap_epochs}\n")
        if cap is not None:
            text += f"""
[budgets.capped]
amount_usd = 100.0
per_job_usd = {cap:.10f}
models = ["capped"]
"""
        (d / "finops.toml").write_text(text)
        return d / "finops.toml"

    print(f"\n== cap: SGD partial_fit, {args.cap_rows:,} new rows x {N_FEATURES}, "
          f"{args.cap_epochs} epochs, sample_interval_s={SAMPLE_INTERVAL_S}", flush=True)
    size = retrain(policy(None), "capsize")
    print(f"uncapped run: {size['state']}, cost ${size['cost']:.8f}, {size['wall_s']:.1f} s tracked, "
          f"{size['cpu_s']:.1f} CPU-s, rate ${size['rate']:.3e}/s (round trip {size['round_trip_s']:.1f} s)",
          flush=True)
    if size["state"] not in ("promoted", "not_promoted"):
        raise SystemExit(f"sizing run did not finish: {size['state']}: {size['reason']}")
    cap = args.cap_fraction * size["cost"]
    path = policy(cap)
    rows = []
    print(f"cap = {args.cap_fraction:.0%} of the uncapped cost = ${cap:.8f}")
    print(f"{'#':>2} {'state':>8} {'cap $':>11} {'final $':>11} {'over $':>11} {'over %cap':>9} "
          f"{'1 interval $':>12} {'over s':>7} {'target':>6}  Ray job")
    for i in range(args.repeats):
        r = retrain(path, "capped")
        over = r["cost"] - cap
        interval_usd = r["rate"] * SAMPLE_INTERVAL_S
        ok = over <= 0.05 * cap or over <= interval_usd
        rows.append({**r, "over": over, "over_pct": 100 * over / cap, "interval_usd": interval_usd, "ok": ok})
        print(f"{i + 1:>2} {r['state']:>8} {cap:>11.3e} {r['cost']:>11.3e} {over:>11.3e} {100 * over / cap:>8.1f}% "
              f"{interval_usd:>12.3e} {over / r['rate']:>7.2f} {'met' if ok else 'MISSED':>6}  {r['job_status']}",
              flush=True)
        if r["state"] != "capped":
            print(f"   (not capped: {r['reason']})")
    worst = max(rows, key=lambda r: r["over_pct"])
    print(f"worst: overspend ${worst['over']:.3e} = {worst['over_pct']:.1f}% of the cap "
          f"(one interval = ${worst['interval_usd']:.3e} = {100 * worst['interval_usd'] / cap:.1f}% of the cap); "
          f"target {'met' if all(r['ok'] for r in rows) else 'MISSED'} in {sum(r['ok'] for r in rows)}/{len(rows)}")
    versions = MlflowClient().search_model_versions("name = 'bench-capped'")
    print(f"versions of bench-capped after the capped runs: {len(versions)} (1 = nothing promoted)")
    return {"size": size, "cap": cap, "runs": rows}


def _cpu_s() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def breakdown(d: Path, champion, path: str) -> dict:
    """CPU of the job's pieces, run here with the job's own functions on the same data."""
    import subprocess
    import threading

    import mlflow
    import skops.io as sio

    from mlflow_finops.frames import read_frame
    from mlflow_finops.policy import RetrainPolicy
    from mlflow_finops.retrain.job import new_data, update
    from mlflow_finops.retrain.ledger import Ledger

    out = {}
    c = _cpu_s()  # a fresh interpreter importing the job module: what every job pays first
    subprocess.run([sys.executable, "-c", "import ray, ray_jobs.retrain"], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    out["job_imports"] = _cpu_s() - c
    data = new_data(str(d / "incoming" / "*.parquet"), Ledger()).frame
    n_hold = max(1, int(len(data) * RetrainPolicy().holdout_fraction))
    train = data.iloc[:-n_hold]
    X, y = train.drop(columns=["y"]), train["y"]
    c = _cpu_s()
    challenger = update(champion, X, y, path, RetrainPolicy(), threading.Event(), None, "y")
    out["inc_update"] = _cpu_s() - c
    c = _cpu_s()
    ref = read_frame(d / "ref.parquet")
    out["ref_read"] = _cpu_s() - c
    update(champion, X, y, "refit", RetrainPolicy(), threading.Event(), ref, "y")
    out["full_update"] = _cpu_s() - c
    trusted = sio.get_untrusted_types(data=sio.dumps(challenger))
    mlflow.set_experiment("bench-breakdown")
    with mlflow.start_run():
        c = _cpu_s()
        mlflow.sklearn.log_model(challenger, name="m1", skops_trusted_types=trusted)
        out["log_model"] = _cpu_s() - c
        c = _cpu_s()
        mlflow.sklearn.log_model(challenger, name="m2", pip_requirements=["scikit-learn", "skops"],
                                 skops_trusted_types=trusted)
        out["log_model_no_infer"] = _cpu_s() - c
    return out


# -------------------------------------------------------------------------- fixed
def part_fixed(args: argparse.Namespace, jobs: str, root: Path, gcs: str) -> dict:
    import threading

    import ray
    from mlflow.tracking import MlflowClient

    from mlflow_finops.names import RETRAIN_ACTOR_NAME, RETRAIN_ACTOR_NAMESPACE
    from mlflow_finops.policy import RetrainPolicy
    from mlflow_finops.retrain.job import new_data, update
    from mlflow_finops.retrain.ledger import Ledger

    os.environ["RAY_ADDRESS"] = gcs  # the actor runner's ray.init: this cluster's GCS
    d = root / "fixed"
    (d / "incoming").mkdir(parents=True)
    ref = stream(20_000, 0.0, 31)
    ref.to_parquet(d / "ref.parquet")
    champion = sgd_pipeline().fit(ref.drop(columns="y"), ref["y"])
    register_champion(champion, ["bench-fixed-job", "bench-fixed-actor"])
    stream(args.fixed_rows, 0.5, 32).to_parquet(d / "incoming" / "w1.parquet")
    text = RETRAIN_DEFAULTS.format(jobs=jobs)
    text += model_section("fixed-job", "partial_fit", 'runner = "job"\n')
    text += model_section("fixed-actor", "partial_fit", 'runner = "actor"\nwarm_idle_s = 600\n')
    (d / "finops.toml").write_text(text)

    data = new_data(str(d / "incoming" / "*.parquet"), Ledger()).frame
    train = data.iloc[:-max(1, int(len(data) * RetrainPolicy().holdout_fraction))]
    X, y = train.drop(columns=["y"]), train["y"]
    update_s = []
    for _ in range(3):
        c = _cpu_s()
        update(champion, X, y, "partial_fit", RetrainPolicy(), threading.Event(), None, "y")
        update_s.append(_cpu_s() - c)
    upd = min(update_s)
    print(f"\n== fixed cost per retrain: SGD partial_fit, {args.fixed_rows:,} new rows x {N_FEATURES}; "
          f"the update alone {upd:.2f} CPU-s (best of 3 here)", flush=True)
    client = MlflowClient()
    res: dict[str, list[dict]] = {"job": [], "actor": []}
    for runner in ("job", "actor"):
        for i in range(args.fixed_repeats):
            r = retrain(d / "finops.toml", f"fixed-{runner}")
            client.set_registered_model_alias(f"bench-fixed-{runner}", "champion", "1")  # same start next time
            if r["state"] not in ("promoted", "not_promoted"):
                raise SystemExit(f"fixed-{runner}: {r['state']}: {r['reason']}")
            r["fixed_s"] = r["cpu_s"] - upd
            res[runner].append(r)
            label = runner if runner == "job" else ("actor, cold" if i == 0 else "actor, warm")
            print(f"{i + 1} {label:>11}: {r['state']:>12} run {r['cpu_s']:.2f} CPU-s, fixed {r['fixed_s']:.2f} CPU-s, "
                  f"cost ${r['cost']:.8f}, round trip {r['round_trip_s']:.1f} s", flush=True)
    pid = ray.get(ray.get_actor(RETRAIN_ACTOR_NAME, namespace=RETRAIN_ACTOR_NAMESPACE).pid.remote())
    import psutil

    def used() -> float:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system

    c, t = used(), time.time()
    time.sleep(args.idle_s)
    upkeep = (used() - c) / (time.time() - t) * 60
    job_fixed = float(np.median([r["fixed_s"] for r in res["job"]]))
    warm = [r["fixed_s"] for r in res["actor"][1:]]
    warm_fixed = float(np.median(warm)) if warm else float("nan")
    print(f"fixed cost: Ray job {job_fixed:.2f} CPU-s (median of {len(res['job'])}); actor cold "
          f"{res['actor'][0]['fixed_s']:.2f}, warm {warm_fixed:.2f} CPU-s (median of {len(warm)}; target <= 3: "
          f"{'met' if warm_fixed <= 3 else 'MISSED'}); the idle warm actor uses {upkeep:.3f} CPU-s per minute "
          f"(measured over {args.idle_s:.0f} s; charged to its next retrain)")
    ray.kill(ray.get_actor(RETRAIN_ACTOR_NAME, namespace=RETRAIN_ACTOR_NAMESPACE))
    ray.shutdown()  # this process was a Ray driver (the actor runner's connection): the cluster can go
    return {"update_s": upd, "job": res["job"], "actor": res["actor"], "upkeep_per_min": upkeep}


# -------------------------------------------------------------------- incremental
CHAMPIONS = {
    # kind: (what it is, the job's incremental path)
    "sgd": ("Pipeline(StandardScaler, SGDClassifier)", "partial_fit"),
    "hgb": ("HistGradientBoostingClassifier(max_iter=100)", "warm_start"),
}


def champion_model(kind: str):
    if kind == "sgd":
        return sgd_pipeline()
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0)


def part_incremental(args: argparse.Namespace, jobs: str, root: Path) -> dict:
    d = root / "inc"
    (d / "incoming").mkdir(parents=True)
    ref = stream(args.ref_rows, 0.0, 21)
    ref.to_parquet(d / "ref.parquet")
    champions = {}
    for kind in args.champions:
        t = time.process_time()
        champions[kind] = champion_model(kind).fit(ref.drop(columns="y"), ref["y"])
        print(f"champion {kind}: {CHAMPIONS[kind][0]} fitted here on the reference in "
              f"{time.process_time() - t:.1f} CPU-s", flush=True)
        register_champion(champions[kind], [f"bench-inc-{kind}", f"bench-full-{kind}"], args.champion_format)
    for k, (tt, seed) in enumerate([(1 / 3, 22), (2 / 3, 23), (1.0, 24)], start=1):
        stream(args.window_rows, tt, seed).to_parquet(d / "incoming" / f"w{k}.parquet")
        time.sleep(0.02)  # files in time order by mtime
    text = RETRAIN_DEFAULTS.format(jobs=jobs)
    for kind in args.champions:
        text += model_section(f"inc-{kind}", CHAMPIONS[kind][1])
        text += model_section(f"full-{kind}", "refit", 'memory = "all"\n')  # everything, as measured
    (d / "finops.toml").write_text(text)
    print(f"\n== incremental vs full: reference {args.ref_rows:,} rows, 3 new windows x {args.window_rows:,} "
          f"rows, drift t = 1/3, 2/3, 1, champions saved as {args.champion_format}", flush=True)
    return {kind: _compare(args, d, kind, champions[kind]) for kind in args.champions}


def _compare(args: argparse.Namespace, d: Path, kind: str, champion) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    res: dict[str, list[dict]] = {"inc": [], "full": []}
    order = ["inc", "full"]
    print(f"\n-- {kind}: {CHAMPIONS[kind][0]}, incremental = {CHAMPIONS[kind][1]}", flush=True)
    for i in range(args.inc_repeats):
        for how in order if i % 2 == 0 else order[::-1]:
            model = f"{how}-{kind}"
            r = retrain(d / "finops.toml", model)
            client.set_registered_model_alias(f"bench-{model}", "champion", "1")  # same start next time
            res[how].append(r)
            print(f"{i + 1} {how:>4}: {r['state']:>12} path={r['path']} cost ${r['cost']:.8f} "
                  f"({r['cpu_s']:.2f} CPU-s, {r['wall_s']:.1f} s tracked, round trip {r['round_trip_s']:.1f} s) "
                  f"challenger acc {r['acc']:.4f} (champion {r['champ_acc']:.4f}), {r['rows']:.0f} new rows",
                  flush=True)
            if r["state"] not in ("promoted", "not_promoted"):
                raise SystemExit(f"{model}: {r['state']}: {r['reason']}")
    inc_cost = float(np.mean([r["cost"] for r in res["inc"]]))
    full_cost = float(np.mean([r["cost"] for r in res["full"]]))
    inc_acc, full_acc = res["inc"][0]["acc"], res["full"][0]["acc"]
    ratio = inc_cost / full_cost
    diff = 100 * (inc_acc - full_acc)
    where = breakdown(d, champion, CHAMPIONS[kind][1])
    print(f"where the CPU goes (same data and code, in this process, CPU-s incl. children): "
          f"a fresh interpreter importing the job: {where['job_imports']:.2f}; "
          f"update alone: incremental {where['inc_update']:.2f}, full {where['full_update']:.2f} "
          f"(reference read {where['ref_read']:.2f} + fit); one mlflow.sklearn.log_model of the challenger: "
          f"{where['log_model']:.2f} ({where['log_model_no_infer']:.2f} with pip_requirements given, "
          f"as the job does)")
    print(f"cost: incremental ${inc_cost:.8f} / full ${full_cost:.8f} = {ratio:.3f} "
          f"(target <= 0.3: {'met' if ratio <= 0.3 else 'MISSED'}); per repeat: "
          + ", ".join(f"{a['cost'] / b['cost']:.3f}" for a, b in zip(res["inc"], res["full"])))
    print(f"accuracy on the newest held-out slice: incremental {inc_acc:.4f}, full {full_acc:.4f}, "
          f"champion {res['inc'][0]['champ_acc']:.4f}; incremental - full = {diff:+.2f} points "
          f"(target >= -1: {'met' if diff >= -1 else 'MISSED'})")
    return {"inc": res["inc"], "full": res["full"], "ratio": ratio, "diff": diff, "where": where}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["cap", "incremental", "fixed", "all"], default="all")
    ap.add_argument("--repeats", type=int, default=3, help="capped runs")
    ap.add_argument("--cap-rows", type=int, default=200_000)
    ap.add_argument("--cap-epochs", type=int, default=40)
    ap.add_argument("--cap-fraction", type=float, default=0.25)
    ap.add_argument("--ref-rows", type=int, default=1_000_000)
    ap.add_argument("--window-rows", type=int, default=10_000)
    ap.add_argument("--inc-repeats", type=int, default=2)
    ap.add_argument("--fixed-rows", type=int, default=5_000)
    ap.add_argument("--fixed-repeats", type=int, default=3, help="retrains per runner")
    ap.add_argument("--idle-s", type=float, default=30.0, help="how long the warm actor's idle upkeep is measured")
    ap.add_argument("--champions", type=lambda v: v.split(","), default=list(CHAMPIONS),
                    help="Champion kinds for the incremental part, comma-separated: sgd,hgb")
    ap.add_argument("--champion-format", choices=["skops", "cloudpickle"], default="skops",
                    help="How the champions are saved (MLflow 3's default is skops); the job keeps it")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    tmp = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_FINOPS_SPOOL_DIR"] = str(tmp / "spool")
    os.environ["MLFLOW_FINOPS_LOG_CHARTS"] = "false"
    os.environ.pop("MLFLOW_FINOPS_POLICY", None)
    os.environ.pop("RAY_ADDRESS", None)
    import mlflow
    from ray.cluster_utils import Cluster

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    port, agent_port = free_ports(2)
    t0 = time.time()
    with loopback_cluster_env():  # the cluster's processes stay on loopback, as `ray up` starts them
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": port,
            # not Ray's fixed default 52365: another local cluster (`ray start --head`) may hold it,
            # and then this head's job agent never comes up ("No available agent to submit job")
            "dashboard_agent_listen_port": agent_port,
        })
    jobs = f"http://127.0.0.1:{port}"
    wait_until_jobs_run(jobs)
    print(f"Ray head (2 CPUs) up in {time.time() - t0:.1f} s, Jobs API {jobs}; MLflow store {tmp / 'mlflow.db'}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    try:
        if args.part in ("cap", "all"):
            part_cap(args, jobs, tmp)
        if args.part in ("incremental", "all"):
            part_incremental(args, jobs, tmp)
        if args.part in ("fixed", "all"):
            part_fixed(args, jobs, tmp, cluster.address)
    finally:
        cluster.shutdown()
    print(f"\ntotal {time.time() - t0:.0f} s, load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
