"""The FinOps page (`mlflow server --app-name finops`) on a store with 10,000+ runs: first byte and full page.

Populates a SQLite store through MLflow's own store API (runs with finops/* metrics, team and
model tags, a model metric; retrains in finops-retrains/<model>; a policy with budgets), keeps
it under bench/out/ for the next run, starts a real `mlflow server --app-name finops` on it
(1 worker) and times ``GET /finops/``: cold (the store read and the charts drawn), then warm
(the same period again, from the page's cache), then another period (cold again).

    .venv/bin/python bench/bench_finops_page.py [--runs 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mlflow_finops.ray_cluster import free_ports

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
BIN = Path(sys.executable).parent
TEAMS = ["ml-platform", "growth", "risk", "search", "ads"]
MODELS = ["churn", "fraud", "ranker", "ltv", "pricing", "forecast", "reco", "spam"]
_API_RUNS = 200
POLICY = """
[budgets.fraud-monthly]
amount_usd = 400
period = "month"
models = ["fraud"]

[budgets.growth-monthly]
amount_usd = 900
period = "month"
team = "growth"
"""


def populate(db: Path, runs: int, seed: int = 7) -> None:
    """``runs`` training runs over 20 experiments in the last 25 days, plus 40 retrains.

    The first ``_API_RUNS`` runs go through MLflow's store API; the rest copy their rows (the
    same columns MLflow wrote, new ids, start times and figures) with SQL, in seconds instead
    of the ~8 runs/s the API manages on a busy 2-core machine.
    """
    import sqlite3
    import uuid

    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    rnd = random.Random(seed)
    client = MlflowClient(f"sqlite:///{db}")
    now_ms = int(time.time() * 1000)
    exps = [client.create_experiment(f"exp-{i:02d}-{MODELS[i % len(MODELS)]}") for i in range(20)]

    def figures(cost: float) -> dict[str, float]:
        return {"finops/cost_usd": cost, "finops/idle_cost_usd": cost * 0.1, "finops/cpu_core_hours": cost * 3,
                "finops/energy_kwh": cost * 0.4, "finops/co2e_kg": cost * 0.1, "finops/wall_hours": cost / 2,
                "accuracy": min(0.99, 0.6 + 0.08 * cost ** 0.5 + rnd.gauss(0, 0.03))}

    def tags(i: int) -> dict[str, str]:
        e = i % len(exps)
        return {"finops.team": TEAMS[e % len(TEAMS)], "finops.model": MODELS[e % len(MODELS)],
                "mlflow.runName": f"train-{i}"}

    api_runs = min(runs, _API_RUNS)
    for i in range(api_runs):
        start = now_ms - rnd.randint(0, 25 * 86_400_000)
        run = client.create_run(exps[i % len(exps)], start_time=start, tags=tags(i), run_name=f"train-{i}")
        client.log_batch(run.info.run_id,
                         metrics=[Metric(k, v, start, 0) for k, v in figures(rnd.uniform(0.05, 4.0)).items()])
    for model in MODELS[:4]:
        exp = client.create_experiment(f"finops-retrains/{model}")
        for k in range(10):
            start = now_ms - rnd.randint(0, 20 * 86_400_000)
            champion = rnd.uniform(0.7, 0.8)
            promoted = k % 2 == 0
            run = client.create_run(exp, start_time=start, tags={
                "finops.model": model, "finops.retrain_state": "promoted" if promoted else "not_promoted",
                "finops.workload": "retrain", "finops.model_version": str(k + 2)})
            client.log_batch(run.info.run_id, metrics=[
                Metric("finops/cost_usd", rnd.uniform(1, 8), start, 0),
                Metric("eval/champion_accuracy", champion, start, 0),
                Metric("eval/challenger_accuracy", champion + (0.02 if promoted else -0.01), start, 0)],
                tags=[RunTag("mlflow.runName", f"retrain-{model}-{k}")])
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    template = dict(zip(cols, con.execute("SELECT * FROM runs WHERE name = 'train-0'").fetchone()))
    run_rows, tag_rows, metric_rows = [], [], []
    for i in range(api_runs, runs):
        rid = uuid.uuid4().hex
        start = now_ms - rnd.randint(0, 25 * 86_400_000)
        row = {**template, "run_uuid": rid, "name": f"train-{i}", "start_time": start,
               "experiment_id": int(exps[i % len(exps)]),
               "artifact_uri": template["artifact_uri"].replace(template["run_uuid"], rid)}
        run_rows.append(tuple(row[c] for c in cols))
        tag_rows += [(k, v, rid) for k, v in tags(i).items()]
        metric_rows += [(k, v, start, rid) for k, v in figures(rnd.uniform(0.05, 4.0)).items()]
    with con:
        con.executemany(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", run_rows)
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tag_rows)
        con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                        "VALUES (?, ?, ?, ?, 0, 0)", metric_rows)
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                        "VALUES (?, ?, ?, 0, 0, ?)", metric_rows)
    con.close()


def _get(port: int, path: str) -> tuple[float, float, int, bytes]:
    """(seconds to the first byte of the body, seconds to the last, status, body)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", path)
    resp = conn.getresponse()
    first = resp.read1(65536)
    ttfb = time.perf_counter() - t0
    rest = resp.read()
    total = time.perf_counter() - t0
    conn.close()
    return ttfb, total, resp.status, first + rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="cold measurements (a new period each)")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    db = OUT / f"finops-page-{args.runs}.db"
    if not db.exists():
        print(f"populating {db} with {args.runs} runs (once; kept for the next run) ...", flush=True)
        scratch = db.with_suffix(".tmp")
        scratch.unlink(missing_ok=True)
        t0 = time.perf_counter()
        populate(scratch, args.runs)
        scratch.replace(db)
        print(f"  populated in {time.perf_counter() - t0:.0f} s")
    policy = OUT / "finops-page-policy.toml"
    policy.write_text(POLICY)
    port = free_ports(1)[0]
    root = OUT / "finops-page-server"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    env = {**os.environ, "MLFLOW_FINOPS_POLICY": str(policy)}
    cmd = [str(BIN / "mlflow"), "server", "--app-name", "finops", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(root / "artifacts"),
           "--workers", "1"]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(port, "/health")[2] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        colds = []
        for i in range(args.repeat):
            since = f"{30 + i}d"  # a new period each time: not from the cache
            ttfb, total, status, body = _get(port, f"/finops/?since={since}")
            assert status == 200, status
            colds.append((ttfb, total))
            read = re.search(rb"Read (\d+) run\(s\) in (\d+) page\(s\) from the tracking store in ([\d.]+) s", body)
            assert read, body[-2000:]
            print(f"cold  since={since}: first byte {ttfb * 1000:.0f} ms, full page {total:.2f} s "
                  f"({int(read[1])} runs read in {int(read[2])} page(s) + budgets: {float(read[3]):.2f} s; "
                  f"the rest is drawing charts), {len(body) / 1024:.0f} KiB")
        ttfb, total, status, _ = _get(port, f"/finops/?since={30 + args.repeat - 1}d")
        print(f"warm  (cached, same period): first byte {ttfb * 1000:.0f} ms, full page {total * 1000:.0f} ms")
        print(f"{args.runs} runs: cold first byte median {statistics.median(c[0] for c in colds) * 1000:.0f} ms, "
              f"full page median {statistics.median(c[1] for c in colds):.2f} s; warm full page {total * 1000:.0f} ms")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    main()
