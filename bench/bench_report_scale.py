"""Reports at scale: `mlflow-finops report` over 100,000 runs on PostgreSQL behind `mlflow server`.

Starts a PostgreSQL server (tests/postgres_support.py: initdb into a temp folder, on 127.0.0.1,
durability off) and `mlflow server --backend-store-uri postgresql://... --app-name finops` on it
(MLflow's own migrations make the schema; the finops app serves the report's projection,
``POST /finops/api/report-runs``). Experiments are created through the server; the runs are
bulk-loaded with PostgreSQL's COPY into MLflow's tables (runs, tags, params, metrics,
latest_metrics; column lists from MLflow's SQLAlchemy models), because MLflow's client API
writes ~20-60 runs/s here (100,000 runs would take an hour). A few runs are then read back
through the server and checked against what was loaded.

Each measurement runs in a fresh child process (wall and CPU time from ``wait4``, peak RSS
from the child's own VmHWM), against the same server, in the same invocation:

- the anchor: ``mlflow.search_runs`` over the same runs (MLflow's own read, into a DataFrame);
- ``build_report()`` (the library, through the projection), the same through ``search_runs``
  (``MLFLOW_FINOPS_REPORT_READ=search_runs``, what a server without the app gives), then
  ``mlflow-finops report`` (the CLI, JSON to /dev/null);
- narrowed reports (one experiment, ``--team``, ``--since``) against ``search_runs`` with the
  same filter string, to show that the narrowing happens in the server's query;
- ``build_report()`` over 25%, 50% and 100% of the runs, with its RSS after each 10,000 runs, and
  the CLI through ``search_runs`` with 10,000- and 1,000-run pages: the report's memory against the
  number of runs and the page size.

    .venv/bin/python bench/bench_report_scale.py --runs 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from postgres_support import PostgresServer, why_no_postgres  # noqa: E402

from mlflow_finops.ray_cluster import free_ports  # noqa: E402

BIN = Path(sys.executable).parent
FIGURES = ["cost_usd", "usage_cost_usd", "allocation_cost_usd", "idle_cost_usd", "cpu_core_hours",
           "cpu_allocated_core_hours", "ram_gb_hours", "gpu_hours", "energy_kwh", "co2e_kg", "cpu_efficiency",
           "wall_hours", "peak_rss_gb"]
TEAMS = 8
MODELS = 20
DAYS = 90


# ------------------------------------------------------------------ servers
def start_mlflow(backend_uri: str, folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_ports(1)[0]
    log = open(folder / "mlflow-server.log", "ab")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--backend-store-uri",
         backend_uri, "--artifacts-destination", str(folder / "artifacts"), "--workers", "1",
         "--app-name", "finops"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited: {(folder / 'mlflow-server.log').read_text()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit("mlflow server did not start in 300 s")


def stop_mlflow(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ------------------------------------------------------------------ data
def bulk_load(pg: PostgresServer, exp_ids: list[str], n: int, seed: int = 0) -> dict[str, float]:
    """COPY n runs into MLflow's tables: 90% tracked, 5% nested, 5% untracked; the expected sums."""
    import psycopg
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    def cols(model) -> list[str]:
        return [c.name for c in model.__table__.columns]

    rng = random.Random(seed)
    now = int(time.time() * 1000)
    expected = {"runs": 0, "counted": 0, "cost_usd": 0.0}
    tables = {m.__table__.name: (cols(m), []) for m in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric)}
    parent = None
    for i in range(n):
        rid = uuid.uuid4().hex
        exp = int(exp_ids[i % len(exp_ids)])
        start = now - rng.randint(0, DAYS * 86_400_000)
        run = {"run_uuid": rid, "name": f"run-{i}", "source_type": "LOCAL", "source_name": "bench",
               "entry_point_name": "", "user_id": "bench", "status": "FINISHED", "start_time": start,
               "end_time": start + 60_000, "deleted_time": None, "source_version": "",
               "lifecycle_stage": "active", "artifact_uri": f"mlflow-artifacts:/{exp}/{rid}/artifacts",
               "experiment_id": exp}
        kind = "untracked" if i % 20 == 0 else ("nested" if i % 20 == 1 and parent else "tracked")
        tags = {"mlflow.runName": f"run-{i}", "mlflow.user": "bench", "finops.team": f"team-{i % TEAMS}",
                "finops.model": f"model-{i % MODELS}", "finops.price_profile": "opencost-default"}
        params = {"alpha": str(rng.choice((0.1, 0.01, 0.001))), "max_iter": str(rng.choice((100, 200)))}
        expected["runs"] += 1
        if kind != "untracked":
            tags["finops.tracked"] = "true"
            values = {"finops/" + m: rng.uniform(0, 2) for m in FIGURES}
            cost = rng.uniform(0.01, 5.0)
            values["finops/cost_usd"] = values["finops/usage_cost_usd"] = cost
            values["accuracy"] = rng.uniform(0.6, 0.95)
            for k, v in values.items():
                row = {"key": k, "value": v, "timestamp": start, "step": 1, "is_nan": False, "run_uuid": rid}
                tables["metrics"][1].append(row)
                tables["latest_metrics"][1].append(row)
            if kind == "nested":
                tags["finops.nested_in"] = parent
            else:
                expected["counted"] += 1
                expected["cost_usd"] += cost
                parent = rid
        tables["runs"][1].append(run)
        tables["tags"][1].extend({"key": k, "value": v, "run_uuid": rid} for k, v in tags.items())
        tables["params"][1].extend({"key": k, "value": v, "run_uuid": rid} for k, v in params.items())
    with psycopg.connect(f"host=127.0.0.1 port={pg.port} user={pg.user} dbname={pg.database}") as conn:
        with conn.cursor() as cur:
            for table in ("runs", "tags", "params", "metrics", "latest_metrics"):  # runs first: foreign keys
                names, rows = tables[table]
                with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row([row[c] for c in names])
            cur.execute("ANALYZE")
    return expected


# ------------------------------------------------------------------ measuring
# Peak RSS is the child's own VmHWM (per address space, reset at exec): wait4's ru_maxrss also
# counts the forked, not yet exec'd copy of this process, which holds the bulk-load data.
HWM = """
def hwm(field="VmHWM"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
"""

CHILD_ANCHOR = HWM + """
import json, sys, time
import mlflow
from mlflow.tracking import MlflowClient
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
ids = [e.experiment_id for e in MlflowClient().search_experiments() if e.name.startswith("bench-")]
if args.get("experiment"):
    ids = [MlflowClient().get_experiment_by_name(args["experiment"]).experiment_id]
df = mlflow.search_runs(ids, filter_string=args.get("filter", ""), max_results=args["max"])
top = df["tags.finops.nested_in"].isna() if "tags.finops.nested_in" in df else slice(None)  # absent: none nested
cost = df.loc[top, "metrics.finops/cost_usd"].sum()
print(json.dumps({"runs": len(df), "cost_usd": float(cost), "read_s": time.perf_counter() - t0, "rss_mib": hwm()}))
"""

CHILD_REPORT = HWM + """
import json, sys, time
from mlflow_finops.spend.report import build_report
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
rss = []  # RSS after each page: flat when the report keeps nothing per run in memory
rep = build_report(experiments=args.get("experiments", ()), team=args.get("team"),
                   on_page=lambda n: rss.append(round(hwm("VmRSS"))))
t = rep.total()
print(json.dumps({"runs": len(rep.runs), "cost_usd": t.cost_usd, "pages": rep.pages,
                  "read_s": time.perf_counter() - t0, "rss_after_pages_mib": rss, "rss_mib": hwm()}))
"""

CHILD_CLI = HWM + """
import json, sys
from mlflow_finops.cli import cli
try:
    cli(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps({"rss_mib": hwm()}))
"""


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float | dict]:
    """Run cmd to completion: wall s, CPU s (user+sys), peak RSS MiB, and its JSON stdout if any."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {err[-3000:]}")
    try:
        result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    except json.JSONDecodeError:
        result = {}
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": result.pop("rss_mib", float("nan")),
            "out": result}


def py(code: str, args: dict) -> list[str]:
    return [sys.executable, "-c", code, json.dumps(args)]


def cli(*args: str) -> list[str]:
    """`mlflow-finops report ARGS`, run by a Python that prints its peak RSS after."""
    return [sys.executable, "-c", CHILD_CLI, "report", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--experiments", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="times each full-store measurement is taken")
    ap.add_argument("--skip", default="", help="comma list of steps to skip: full,narrow,cli,memory")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    reason = why_no_postgres()
    if reason:
        raise SystemExit(f"cannot run: {reason}")

    folder = Path(tempfile.mkdtemp(prefix="bench-report-scale-"))
    pg = PostgresServer()
    pg.start()
    server = None
    try:
        t0 = time.perf_counter()
        server, url = start_mlflow(pg.uri, folder)
        print(f"PostgreSQL {pg.uri}; mlflow server {url} (started in {time.perf_counter() - t0:.1f} s)")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(url)
        names = [f"bench-{i}" for i in range(args.experiments)]
        exp_ids = [client.create_experiment(n) for n in names]
        t0 = time.perf_counter()
        expected = bulk_load(pg, exp_ids, args.runs)
        print(f"loaded {args.runs:,} runs into {args.experiments} experiments with COPY in "
              f"{time.perf_counter() - t0:.1f} s; expected total ${expected['cost_usd']:,.2f} over "
              f"{expected['counted']:,} counted runs")
        sample = client.search_runs(exp_ids[:1], max_results=3)
        assert all(r.data.metrics.get("finops/cost_usd") is not None or "finops.tracked" not in r.data.tags
                   for r in sample), "bulk-loaded runs do not read back"

        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_TIMEOUT": "600"}
        rows: list[tuple[str, dict]] = []

        def record(label: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> dict:
            best = None
            for _ in range(args.repeat):
                m = measure(cmd, {**env, **(extra_env or {})})
                best = m if best is None or m["wall_s"] < best["wall_s"] else best
            rows.append((label, best))
            o = best["out"]
            print(f"{label:58s} wall {best['wall_s']:6.1f} s  CPU {best['cpu_s']:6.1f} s  "
                  f"peak RSS {best['rss_mib']:7.0f} MiB  {json.dumps(o) if o else ''}", flush=True)
            return best

        biggest = args.runs + 1000
        if "full" not in skip:
            anchor = record("mlflow.search_runs, all runs (anchor)", py(CHILD_ANCHOR, {"max": biggest}))
            lib = record("build_report(), all runs", py(CHILD_REPORT, {}))
            slow = record("build_report() through search_runs, all runs", py(CHILD_REPORT, {}),
                          {"MLFLOW_FINOPS_REPORT_READ": "search_runs"})
            for got in (lib, slow):
                assert got["out"]["runs"] == anchor["out"]["runs"] == expected["runs"], (got, anchor, expected)
                assert abs(got["out"]["cost_usd"] - expected["cost_usd"]) < 1e-6 * expected["cost_usd"]
            assert abs(anchor["out"]["cost_usd"] - expected["cost_usd"]) < 1e-6 * expected["cost_usd"]
        if "narrow" not in skip:
            record("mlflow.search_runs -e bench-0", py(CHILD_ANCHOR, {"max": biggest, "experiment": names[0]}))
            record("build_report -e bench-0", py(CHILD_REPORT, {"experiments": [names[0]]}))
            team = "tags.\"finops.team\" = 'team-3'"
            record("mlflow.search_runs team-3", py(CHILD_ANCHOR, {"max": biggest, "filter": team}))
            record("build_report --team team-3", py(CHILD_REPORT, {"team": "team-3"}))
            since_ms = int((time.time() - 7 * 86400) * 1000)
            record("mlflow.search_runs last 7 days",
                   py(CHILD_ANCHOR, {"max": biggest, "filter": f"attributes.start_time >= {since_ms}"}))
            record("mlflow-finops report --since 7d --format json", cli("--since", "7d", "--format", "json", "-o",
                                                                        os.devnull))
        if "cli" not in skip:
            record("mlflow-finops report --format json, all runs", cli("--format", "json", "-o", os.devnull))
        if "memory" not in skip:
            if args.experiments >= 4:
                quarter = args.experiments // 4
                for share in (1, 2):
                    record(f"build_report over {share * 25}% of the runs",
                           py(CHILD_REPORT, {"experiments": names[: share * quarter]}))
            if "full" in skip:  # the RSS after each page of a whole-store report
                record("build_report(), all runs", py(CHILD_REPORT, {}))
            via = {"MLFLOW_FINOPS_REPORT_READ": "search_runs"}
            record("search_runs path: report --format json, all runs", cli("--format", "json", "-o", os.devnull),
                   via)
            record("search_runs path: report --format json --page-size 1000, all runs",
                   cli("--format", "json", "--page-size", "1000", "-o", os.devnull), via)
        (folder / "results.json").write_text(json.dumps(rows, indent=1))
        print(f"results: {folder / 'results.json'}")
    finally:
        if server is not None:
            stop_mlflow(server)
        pg.stop()


if __name__ == "__main__":
    main()
