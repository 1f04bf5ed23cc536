"""Cold commands: each `mlflow-finops` command as a cron job starts it, a fresh process every time.

    .venv/bin/python bench/bench_cold.py                 # every command, 3 runs each (~3 min)
    .venv/bin/python bench/bench_cold.py --rows 200000 --repeats 1 --no-readme   # a quick look

What a user's cron runs is the whole process: interpreter start, imports, the
store's start, reading the data, the decision, logging it. Each command runs
`--repeats` times in a fresh process; wall time, CPU (user + system) and peak
RSS come from the operating system (``os.wait4``; this process imports nothing
heavy, since Linux counts a child's peak RSS from before its ``exec``). A
command of two processes (``drift check`` logs from a second one) also gets the
peak of their RSS summed, read every 50 ms. The store is a SQLite file
(the embedded default) holding the runs the commands read; the data for
``drift check`` is two Parquet files of ``--rows`` x 20 columns (18 float, 2
string) and a label, six columns shifted; ``churn-scored`` also scores the
registered champion (a scikit-learn pipeline logged as skops, MLflow's default)
on the labels. ``retrain --no-wait`` files a request and submits it to a local
Ray cluster this script starts on free ports (and stops).

Anchors measured in the same run: ``python -c pass`` (the interpreter) and
``python -c "import mlflow"`` (the floor of anything that talks to MLflow).
Writes the section ``## Cold commands`` of bench/README.md unless ``--no-readme``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _local_ray  # noqa: F401  (keeps Ray on loopback)

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
BEGIN, END = "<!-- cold:begin (written by bench/bench_cold.py) -->", "<!-- cold:end -->"
SECTION = "## Cold commands"

POLICY = """
[tags]
team = "growth"

[drift]
min_rows = 100

[models.churn]
reference = "ref.parquet"
current = "incoming"
registered_model = "churn-cold"
drop = ["label"]

[models.churn-scored]  # the same data, and the champion's accuracy on its labels (the default with a target)
reference = "ref.parquet"
current = "incoming"
registered_model = "churn-cold"
target = "label"

[retrain]
ray_address = "{jobs}"
runner = "job"

[budgets.churn-monthly]
amount_usd = 5.0
per_job_usd = 0.5
models = ["churn"]
"""


def make_data(folder: Path, rows: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    for name, shift in (("ref.parquet", 0.0), ("incoming/cur.parquet", 0.3)):
        df = pd.DataFrame({f"f{i}": rng.normal(shift if i < 6 else 0.0, 1.0, rows) for i in range(18)})
        df["plan"] = rng.choice(["a", "b", "c"], rows)
        df["region"] = rng.choice(list("nsew"), rows)
        df["label"] = (df["f0"] - df["f7"] + rng.normal(0, 0.5, rows) > shift).astype(int)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(folder / name)


def make_champion(folder: Path) -> None:
    """``churn-cold@champion``: a scikit-learn pipeline on 20,000 reference rows, logged as MLflow
    logs scikit-learn by default (skops), its accuracy on those rows tagged as its promotion score."""
    import mlflow
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    ref = pd.read_parquet(folder / "ref.parquet").iloc[:20_000]
    X, y = ref.drop(columns=["label"]), ref["label"]
    model = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["plan", "region"]), remainder="passthrough"),
        LogisticRegression(max_iter=500),
    ).fit(X, y)
    os.chdir(folder)  # the model's artifacts go in the bench's folder
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    import mlflow_finops

    with mlflow.start_run():
        mlflow_finops.register_champion(model, "churn-cold", metric="accuracy", score=model.score(X, y))


def make_runs(folder: Path, n: int) -> None:
    """``n`` tracked-looking runs (cost metrics and finops tags) for report and budget to read."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.create_experiment("training")
    now = int(time.time() * 1000)
    for i in range(n):
        run = client.create_run(exp, start_time=now - 60_000 * i,
                                tags={"finops.model": "churn", "finops.team": "growth", "finops.tracked": "true"})
        client.log_batch(run.info.run_id, metrics=[Metric("finops/cost_usd", 0.001 * (i % 7 + 1), now, 0),
                                                   Metric("finops/cpu_core_hours", 0.01, now, 0)],
                         tags=[RunTag("finops.tracking_status", "complete")])
        client.set_terminated(run.info.run_id, end_time=now - 60_000 * i + 30_000)


def _tree_rss_peak(pid: int, done: threading.Event, out: list[float]) -> None:
    """The largest sum of RSS over ``pid`` and its descendants, read every 50 ms (MB).

    Straight from /proc (``task/*/children``, ``statm``): a psutil walk of every
    process on the machine at this rate took a good part of a core from the command.
    """
    page = os.sysconf("SC_PAGE_SIZE")

    def tree(p: int) -> list[int]:
        out, stack = [], [p]
        while stack:
            q = stack.pop()
            out.append(q)
            try:
                for task in os.listdir(f"/proc/{q}/task"):
                    with open(f"/proc/{q}/task/{task}/children") as f:
                        stack.extend(int(c) for c in f.read().split())
            except OSError:
                pass
        return out

    peak = 0
    while not done.wait(0.05):
        total = 0
        for q in tree(pid):
            try:
                with open(f"/proc/{q}/statm") as f:
                    total += int(f.read().split()[1]) * page
            except (OSError, IndexError, ValueError):
                pass
        peak = max(peak, total)
    out.append(peak / 2**20)


def measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float, float, int]:
    """Wall s, CPU s (user + sys, all its processes), peak RSS MB (its largest process; its
    processes together) and exit code of one fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done, together = threading.Event(), []
    poller = threading.Thread(target=_tree_rss_peak, args=(proc.pid, done, together), daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in (0, 10, 12):
        print(f"  ! {' '.join(cmd[1:4])} exited {proc.returncode}: {err.strip().splitlines()[-1:]}", flush=True)
    largest = usage.ru_maxrss / 1024
    return wall, usage.ru_utime + usage.ru_stime, largest, max(largest, *together, 0.0), proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=500, help="runs in the store for report and budget")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--setup", help=argparse.SUPPRESS)  # internal: build data and store in this folder
    args = ap.parse_args()
    if args.setup:  # in a child, so that this process stays small: a child's peak RSS counts its parent's
        make_data(Path(args.setup), args.rows)
        make_runs(Path(args.setup), args.runs)
        make_champion(Path(args.setup))
        return

    from mlflow_finops.ray_cluster import free_ports, start_local_cluster, stop_local_cluster

    with tempfile.TemporaryDirectory(prefix="finops-cold-") as tmp:
        folder = Path(tmp)
        print(f"data: 2 x {args.rows:,} x 20 Parquet; store: {args.runs} runs ...", flush=True)
        subprocess.run([sys.executable, __file__, "--setup", str(folder), "--rows", str(args.rows),
                        "--runs", str(args.runs)], check=True)
        gcs, dash = free_ports(2)
        os.environ["RAY_TMPDIR"] = str(folder / "ray")
        cluster = start_local_cluster(num_cpus=1, port=gcs, dashboard_port=dash)
        try:
            (folder / "finops.toml").write_text(POLICY.format(jobs=cluster.jobs_url))
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
                   "MLFLOW_FINOPS_POLICY": str(folder / "finops.toml"), "MLFLOW_FINOPS_SETTLE_S": "0",
                   "RAY_ADDRESS": cluster.jobs_url}
            cli = str(BIN / "mlflow-finops")
            commands = {
                "python -c pass (anchor)": [sys.executable, "-c", "pass"],
                "python -c 'import mlflow' (anchor)": [sys.executable, "-c", "import mlflow"],
                "drift check": [cli, "drift", "check", "--model", "churn", "--reference", "ref.parquet",
                                "--current", "incoming/cur.parquet"],
                "drift check --no-log": [cli, "drift", "check", "--model", "churn", "--reference", "ref.parquet",
                                         "--current", "incoming/cur.parquet", "--no-log"],
                "drift check, champion scored too": [cli, "drift", "check", "--model", "churn-scored",
                                                     "--reference", "ref.parquet", "--current", "incoming/cur.parquet"],
                "report": [cli, "report", "--since", "30d"],
                "budget": [cli, "budget"],
                "retrain --no-wait": [cli, "retrain", "--model", "churn", "--no-wait"],
                "prices": [cli, "prices"],
            }
            rows = []
            for name, cmd in commands.items():
                samples = [measure(cmd, folder, env) for _ in range(args.repeats)]
                wall = statistics.median(s[0] for s in samples)
                cpu = statistics.median(s[1] for s in samples)
                rss = max(s[2] for s in samples)
                together = max(s[3] for s in samples)
                codes = sorted({s[4] for s in samples})
                rows.append((name, wall, cpu, rss, together, codes))
                print(f"{name:<36} wall {wall:6.2f} s  cpu {cpu:6.2f} s  peak RSS {rss:7.0f} MB "
                      f"(processes together {together:7.0f} MB)  exit {codes}", flush=True)
        finally:
            stop_local_cluster(gcs)
    load = os.getloadavg()[0]
    table = ["| command | wall (median) | CPU user+sys | peak RSS (largest process) | peak RSS (processes together) | exit |",
             "| --- | --- | --- | --- | --- | --- |"]
    table += [f"| `{n}` | {w:.2f} s | {c:.2f} s | {r:,.0f} MB | {t:,.0f} MB | {', '.join(map(str, k))} |"
              for n, w, c, r, t, k in rows]
    text = "\n".join([
        BEGIN,
        f"`bench/bench_cold.py`: each command in a fresh process, {args.repeats} runs, median wall and CPU "
        f"(all the command's processes), the largest peak RSS: of its largest process (`wait4`), and of its "
        f"processes together (their RSS summed every 50 ms); drift data 2 x {args.rows:,} x 20 Parquet; a SQLite store with {args.runs} runs; "
        f"`retrain --no-wait` submits to a 1-CPU local Ray cluster (runner `job`). Load average {load:.1f} at the end, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        f"    .venv/bin/python bench/bench_cold.py --rows {args.rows} --runs {args.runs} --repeats {args.repeats}",
        "",
        *table,
        END,
    ])
    print("\n" + text)
    if not args.no_readme:
        readme = HERE / "README.md"
        body = readme.read_text()
        if BEGIN in body:
            head, rest = body.split(BEGIN, 1)
            body = head + text + rest.split(END, 1)[1]
        else:
            body = body.rstrip() + f"\n\n{SECTION}\n\n{text}\n"
        readme.write_text(body)
        print("bench/README.md updated")


if __name__ == "__main__":
    main()
