"""Large-store report benchmark: `mlflow-finops report` over 10,000+ runs.

Fills a fresh SQLite MLflow store with N tracked runs (plus nested and
untracked ones), then times the report the way a user runs it (the CLI, in a
subprocess, JSON to /dev/null) and the library call alone (paging + roll-up).

Runs are written with MLflow's own API for a small sample (to show its rate)
and in bulk with SQL inserts into MLflow's schema for the rest: MLflow's API
does ~30-60 runs/s here, which would make 12,000 runs take minutes.

    python bench/bench_report.py --runs 12000
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

METRICS = ["cost_usd", "usage_cost_usd", "allocation_cost_usd", "idle_cost_usd", "cpu_core_hours",
           "cpu_allocated_core_hours", "ram_gb_hours", "gpu_hours", "energy_kwh", "co2e_kg", "cpu_efficiency",
           "wall_hours", "peak_rss_gb"]


def api_rate(client: MlflowClient, exp_id: str, n: int) -> float:
    """Runs per second through MLflow's client API (create_run + log_batch + set_terminated)."""
    from mlflow.entities import Metric

    t0 = time.perf_counter()
    for i in range(n):
        run = client.create_run(exp_id, tags={"finops.tracked": "true", "finops.team": "api"})
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[Metric("finops/" + m, random.random(), now, 1) for m in METRICS])
        client.set_terminated(run.info.run_id)
    return n / (time.perf_counter() - t0)


def bulk_fill(db: Path, exp_ids: list[str], n: int, seed: int = 0) -> None:
    """Insert n runs into MLflow's tables: 90% tracked, 5% nested, 5% untracked."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    runs, tags, metrics, latest = [], [], [], []
    for i in range(n):
        rid = uuid.uuid4().hex
        exp = exp_ids[i % len(exp_ids)]
        start = now - rng.randint(0, 60 * 86400_000)
        runs.append((rid, f"run-{i}", "LOCAL", "bench", "", "bench", "FINISHED", start, start + 60_000, None, "",
                     "active", f"/tmp/artifacts/{rid}", exp))
        kind = "untracked" if i % 20 == 0 else ("nested" if i % 20 == 1 else "tracked")
        t = {"mlflow.runName": f"run-{i}", "finops.team": f"team-{i % 4}", "finops.model": f"model-{i % 7}"}
        if kind != "untracked":
            t["finops.tracked"] = "true"
            cost = rng.uniform(0.01, 5.0)
            values = {m: rng.uniform(0, 2) for m in METRICS}
            values["cost_usd"] = values["usage_cost_usd"] = cost
            vals = [("finops/" + m, v) for m, v in values.items()] + [("accuracy", rng.uniform(0.6, 0.95))]
            for k, v in vals:
                metrics.append((k, v, start, 1, 0, rid))
                latest.append((k, v, start, 1, 0, rid))
        if kind == "nested":
            t["finops.nested_in"] = runs[-2][0]
        tags.extend((k, v, rid) for k, v in t.items())
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
            "start_time, end_time, deleted_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        con.executemany("INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)",
                        metrics)
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                        "VALUES (?,?,?,?,?,?)", latest)
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12_000)
    ap.add_argument("--experiments", type=int, default=3)
    ap.add_argument("--api-sample", type=int, default=100, help="runs written through MLflow's API to time it")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    db = tmp / "mlflow.db"
    uri = f"sqlite:///{db}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp_ids = [client.create_experiment(f"bench-{i}") for i in range(args.experiments)]
    rate = api_rate(client, exp_ids[0], args.api_sample) if args.api_sample else float("nan")
    t0 = time.perf_counter()
    bulk_fill(db, exp_ids, args.runs)
    fill_s = time.perf_counter() - t0
    total = args.runs + args.api_sample
    print(f"store: {total:,} runs in {args.experiments} experiments ({db})")
    print(f"MLflow API write rate: {rate:.0f} runs/s -> {args.runs / rate:.0f} s for {args.runs:,} runs; "
          f"bulk SQL fill: {fill_s:.1f} s")

    from mlflow_finops.spend.report import build_report

    t0 = time.perf_counter()
    rep = build_report(client)
    lib_s = time.perf_counter() - t0
    print(f"build_report (library): {len(rep.runs):,} runs in {rep.pages} page(s), {lib_s:.1f} s; "
          f"total ${rep.total().cost_usd:,.2f} over {rep.total().runs:,} counted runs")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    for fmt in ("table", "json"):
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "mlflow-finops"), "report", "--format", fmt, "-o", os.devnull],
                              env=env, capture_output=True, text=True)
        cli_s = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"report failed: {proc.stderr[-2000:]}")
        print(f"mlflow-finops report --format {fmt}: {cli_s:.1f} s wall (process start and imports included)")


if __name__ == "__main__":
    main()
