"""Headline benchmark (issue 7): drift-gated, budget-limited incremental retraining vs scheduled retraining.

The claim this project exists to prove, measured on the same stream in one run.
Three policies, each in its own fresh folder with its own SQLite MLflow store
(``<out>/<policy>/mlflow.db``), each in its own process, one after the other:

- **scheduled**: retrain on a fixed schedule, every window, the way a team does
  without a gate: a full retrain from scratch (the champion's configuration) on
  all the data seen so far (reference + every window up to now), in-process
  under ``mlflow_finops.autolog()``, logged and registered
  (``mlflow.sklearn.log_model(..., registered_model_name=...)``, alias
  ``champion``);
- **never**: the champion trained on the reference, never retrained;
- **gated**: ``examples/retrain_loop.py`` itself (``run_loop``): per window
  ``mlflow_finops.run_schedule(policy, once=True)`` runs the Evidently drift
  gate and, on drift, submits a budget-limited incremental retrain as a real Ray
  job, which the loop then supervises to its end
  (``RetrainSupervisor.run_pending(model, wait=True)``: the schedule itself never
  waits for a job), promoted only when better. It uses a local Ray
  cluster: one that answers on 127.0.0.1:8265, else the bench starts one with
  ``mlflow-finops ray up`` (as the example would) before the loop and stops
  exactly that cluster's processes after it (not ``ray stop``: that stops every
  Ray cluster of the user on the machine, e.g. a test suite's running beside).
  That cluster gets its own Ray temp dir (``RAY_TMPDIR``): a job's driver connects
  to the cluster named in ``<temp dir>/ray/ray_current_cluster``, the one started
  last there, so with the shared ``/tmp/ray`` and another local cluster started
  meanwhile, the retrain job's ``ray.init()`` would go to that other cluster.

Same stream (``examples/stream.py``, seed 0, drift at windows 3 and 6), same
initial champion (``examples/retrain_loop.py``: ``train_champion``, a
RandomForest on window 0), same price policy (the example's ``finops.toml``).

Figures per policy: total cost = the sum of ``finops/cost_usd`` over every
tracked, non-nested run in that policy's store (``build_report``: champion
training, drift checks, retrains); number of retrains; and the mean
prequential accuracy over windows 1..N: the champion in production when a
window arrives, scored on that window before any retrain on it.
Target: gated cost <= 40% of scheduled, gated mean accuracy within 1 point of
scheduled and clearly above never.

Prints the table, writes ``bench/headline.png`` and the section
``## Headline: drift-gated vs scheduled retraining`` of ``bench/README.md``, and
logs the table (CSV) and chart to a run of experiment ``finops-bench`` in the
gated policy's store.

    .venv/bin/python bench/bench_headline.py            # 8 windows x 20,000 rows, ~10 min on 2 cores
    .venv/bin/python bench/bench_headline.py --windows 4 --rows 5000 --no-readme   # a quick look
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "examples"))

POLICIES = ("scheduled", "never", "gated")
LABELS = {
    "scheduled": "(a) scheduled full retrain, every window",
    "never": "(b) never retrain",
    "gated": "(c) drift-gated incremental (Ray)",
}
SECTION = "## Headline: drift-gated vs scheduled retraining"
BEGIN, END = "<!-- headline:begin (written by bench/bench_headline.py) -->", "<!-- headline:end -->"
COST_SHARE_TARGET, ACC_POINTS_TARGET = 0.40, 1.0


# ------------------------------------------------------------------ one policy, in its own process
def _setup_store(folder: Path) -> None:
    import mlflow

    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)  # artifacts next to the store
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)


def run_policy(name: str, folder: Path, windows: int, rows: int, n_estimators: int) -> dict:
    """Run one policy on the stream in ``folder``; returns its per-window figures."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    import mlflow_finops
    import retrain_loop as ex
    from stream import FEATURES, TARGET, window

    _setup_store(folder)
    root = folder / "finops-demo"
    t0 = time.perf_counter()
    out: dict = {"policy": name, "windows": windows, "rows": rows, "n_estimators": n_estimators}
    if name == "gated":
        res = ex.run_loop(root, windows, rows, n_estimators=n_estimators, echo=lambda s: print(s, flush=True))
        out["accuracy"] = res.accuracy
        out["decisions"] = res.decisions
        out["retrains"] = res.retrains
    else:
        policy = ex.prepare(root)  # the same policy file: same prices and tags
        mlflow_finops.autolog(interval_s=1.0)
        print("training the champion on window 0 ...", flush=True)
        ex.train_champion(root, policy, n_estimators)
        seen = [window(0)]  # what train_champion trained on
        client = MlflowClient()
        out["accuracy"], out["decisions"], out["retrains"] = [], [], []
        for w in range(1, windows + 1):
            df = window(w, rows)
            acc = ex.champion_accuracy(df)
            out["accuracy"].append(acc)
            seen.append(df)
            done: list[dict] = []
            if name == "scheduled":
                t = time.perf_counter()
                mlflow.set_experiment("finops-demo/training")
                with mlflow.start_run(run_name=f"scheduled-retrain-w{w}", tags={"finops.model": ex.MODEL}) as run:
                    data = pd.concat(seen, ignore_index=True)
                    model = ex.new_model(n_estimators).fit(data[FEATURES], data[TARGET])
                    info = mlflow.sklearn.log_model(
                        model, name="model", registered_model_name=ex.REGISTERED,
                        skops_trusted_types=["sklearn.tree._tree.Tree"],
                    )
                    mlflow.log_metric("train/rows", len(data))
                client.set_registered_model_alias(ex.REGISTERED, "champion", str(info.registered_model_version))
                done.append({"state": "promoted", "run_id": run.info.run_id, "rows": len(data),
                             "seconds": time.perf_counter() - t})
            out["decisions"].append("scheduled" if name == "scheduled" else "-")
            out["retrains"].append(done)
            what = f"full retrain on {done[0]['rows']:,} rows, {done[0]['seconds']:.1f} s" if done else "-"
            print(f"{w:>6}  {acc:>12.3f}  {what}", flush=True)
    out["wall_s"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------ figures read from each store
def store_costs(folder: Path) -> dict:
    """Total over counted runs (tracked, not nested) and a split by part of the lifecycle."""
    from mlflow.tracking import MlflowClient

    from mlflow_finops.spend.report import build_report

    report = build_report(MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}"))
    parts = {"champion": 0.0, "checks": 0.0, "retrains": 0.0}
    for r in report.counted:
        if r.run_name == "champion-v1":
            parts["champion"] += r.cost_usd
        elif "monitoring" in r.experiment:
            parts["checks"] += r.cost_usd
        else:
            parts["retrains"] += r.cost_usd
    total = report.total()
    return {
        "cost_usd": total.cost_usd,
        "cpu_core_hours": total.cpu_core_hours,
        "runs_counted": len(report.counted),
        "runs_untracked": len(report.untracked),
        "runs_nested": len(report.nested),
        "checks": sum(1 for r in report.counted if "monitoring" in r.experiment),
        **{f"cost_{k}_usd": v for k, v in parts.items()},
    }


def summarize(results: dict[str, dict]) -> list[dict]:
    rows = []
    for name in POLICIES:
        r = results[name]
        jobs = [d for w in r["retrains"] for d in w if d.get("ray_job_id") or name == "scheduled"]
        rows.append({
            "policy": name,
            "label": LABELS[name],
            "cost_usd": r["costs"]["cost_usd"],
            "cost_champion_usd": r["costs"]["cost_champion_usd"],
            "cost_checks_usd": r["costs"]["cost_checks_usd"],
            "cost_retrains_usd": r["costs"]["cost_retrains_usd"],
            "cpu_core_s": r["costs"]["cpu_core_hours"] * 3600,
            "checks": r["costs"]["checks"],
            "retrains": len(jobs),
            "promoted": sum(1 for d in jobs if d.get("state") == "promoted"),
            "mean_accuracy": sum(r["accuracy"]) / len(r["accuracy"]),
            "accuracy": r["accuracy"],
            "runs_counted": r["costs"]["runs_counted"],
            "runs_untracked": r["costs"]["runs_untracked"],
            "wall_s": r["wall_s"],
        })
    return rows


def verdict(rows: list[dict]) -> dict:
    by = {r["policy"]: r for r in rows}
    a, b, c = by["scheduled"], by["never"], by["gated"]
    share = c["cost_usd"] / a["cost_usd"] if a["cost_usd"] else float("nan")
    gap = (a["mean_accuracy"] - c["mean_accuracy"]) * 100
    over_never = (c["mean_accuracy"] - b["mean_accuracy"]) * 100
    return {
        "cost_share": share,
        "cost_ok": share <= COST_SHARE_TARGET,
        "acc_gap_points": gap,
        "acc_ok": gap <= ACC_POINTS_TARGET,
        "over_never_points": over_never,
        "over_never_ok": over_never >= ACC_POINTS_TARGET,  # "clearly above": at least one point
    }


def table_text(rows: list[dict], windows: int) -> str:
    head = ("| policy | total cost (USD) | of which: champion / drift checks / retrains | CPU core-s | "
            "drift checks | retrains (promoted) | mean accuracy | per window 1.." + str(windows) + " | wall |")
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['label']} | ${r['cost_usd']:.6f} | ${r['cost_champion_usd']:.6f} / ${r['cost_checks_usd']:.6f} / "
            f"${r['cost_retrains_usd']:.6f} | {r['cpu_core_s']:.0f} | {r['checks']} | {r['retrains']} ({r['promoted']}) | "
            f"{r['mean_accuracy']:.4f} | {' '.join(f'{x:.3f}' for x in r['accuracy'])} | {r['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["policy", "label", "cost_usd", "cost_champion_usd", "cost_checks_usd", "cost_retrains_usd",
              "cpu_core_s", "checks", "retrains", "promoted", "mean_accuracy", "accuracy_per_window",
              "runs_counted", "runs_untracked", "wall_s"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**{k: r[k] for k in fields if k in r},
                    "accuracy_per_window": " ".join(f"{x:.4f}" for x in r["accuracy"])})
    return buf.getvalue()


def chart(rows: list[dict], path: Path, v: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.4]})
    names = ["(a) scheduled", "(b) never", "(c) gated"]
    colors = ["#c44e52", "#8c8c8c", "#4c72b0"]
    x = range(len(rows))
    bottom = [0.0] * len(rows)
    for key, label, hatch in (("cost_champion_usd", "champion", ""), ("cost_checks_usd", "drift checks", ".."),
                              ("cost_retrains_usd", "retrains", "//")):
        vals = [r[key] * 1000 for r in rows]
        ax1.bar(x, vals, bottom=bottom, color=colors, hatch=hatch, edgecolor="white", label=label)
        bottom = [b + y for b, y in zip(bottom, vals)]
    for i, r in enumerate(rows):
        ax1.text(i, bottom[i], f"${r['cost_usd'] * 1000:.2f}m", ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(list(x), names, fontsize=8)
    ax1.set_ylabel("total cost, milli-USD (finops/cost_usd)")
    ax1.set_title(f"cost: (c) = {v['cost_share']:.0%} of (a)", fontsize=10)
    from matplotlib.patches import Patch

    ax1.legend(handles=[Patch(facecolor="white", edgecolor="k", hatch=h, label=lab)
                        for h, lab in (("", "champion"), ("..", "drift checks"), ("//", "retrains"))],
               fontsize=7, loc="upper center")
    ax1.set_ylim(0, max(bottom) * 1.3)
    accs = [r["mean_accuracy"] for r in rows]
    ax2.bar(x, accs, color=colors)
    for i, a in enumerate(accs):
        ax2.text(i, a, f"{a:.3f}", ha="center", va="bottom", fontsize=8)
    lo = min(accs)
    ax2.set_ylim(max(0.0, lo - 0.05), min(1.0, max(accs) + 0.02))
    ax2.set_xticks(list(x), names, fontsize=8)
    ax2.set_ylabel("mean prequential accuracy")
    ax2.set_title(f"accuracy: (c) {-v['acc_gap_points']:+.2f} pt vs (a)", fontsize=10)
    for r, c, n in zip(rows, colors, names):
        ax3.plot(range(1, len(r["accuracy"]) + 1), r["accuracy"], marker="o", color=c, label=n)
    for d in (3, 6):
        if d <= len(rows[0]["accuracy"]):
            ax3.axvline(d, color="k", lw=0.6, ls=":")
    ax3.set_xticks(range(1, len(rows[0]["accuracy"]) + 1))
    ax3.set_xlabel("window (drift at 3 and 6)")
    ax3.set_ylabel("accuracy of the champion in production")
    ax3.legend(fontsize=7)
    ax3.set_title("per window, before any retrain on it", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def write_readme(readme: Path, block: str) -> None:
    text = readme.read_text() if readme.exists() else ""
    generated = f"{BEGIN}\n{block.strip()}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + generated + text[text.index(END) + len(END):]
    elif SECTION in text:
        i = text.index(SECTION) + len(SECTION)
        text = text[:i] + "\n\n" + generated + "\n" + text[i:]
    else:  # the headline goes first: before the first section (after a title and its intro, if any)
        m = re.search(r"^## ", text, flags=re.M)
        i = m.start() if m else len(text)
        text = text[:i] + f"{SECTION}\n\n{generated}\n\n" + text[i:]
    readme.write_text(text)


def readme_block(rows: list[dict], v: dict, args: argparse.Namespace, load: tuple[float, float]) -> str:
    by = {r["policy"]: r for r in rows}
    a, c = by["scheduled"], by["gated"]
    ok = lambda b: "met" if b else "**missed**"  # noqa: E731
    checks_share = c["cost_checks_usd"] / c["cost_usd"] if c["cost_usd"] else float("nan")
    per_check = c["cost_checks_usd"] / c["checks"] if c["checks"] else float("nan")
    per_full = a["cost_retrains_usd"] / a["retrains"] if a["retrains"] else float("nan")
    per_inc = c["cost_retrains_usd"] / c["retrains"] if c["retrains"] else float("nan")
    cmd = "    .venv/bin/python bench/bench_headline.py"
    if (args.windows, args.rows, args.n_estimators) != (8, 20_000, 60):
        cmd += f" --windows {args.windows} --rows {args.rows} --n-estimators {args.n_estimators}"
    return f"""\
`bench/bench_headline.py`: the same stream (`examples/stream.py`, seed 0, {args.windows} windows of
{args.rows:,} rows after a 20,000-row reference window, drift at windows 3 and 6), the same
initial champion (`RandomForestClassifier({args.n_estimators}, n_jobs=2)` on the reference,
`train_champion` of `examples/retrain_loop.py`) and the same price policy, three policies, each
in its own process and fresh SQLite store, one after the other. **(a)** a full retrain from
scratch on everything seen so far after every window, in-process under `autolog()`, logged and
registered as the new champion; **(b)** never retrain; **(c)** the example's loop itself
(`run_loop`): per window `run_schedule(policy, once=True)` = the Evidently drift gate and, on
drift, a budget-limited incremental retrain (warm start: +2 x 20 trees on the data since the
champion) as a real Ray job on a local cluster (`mlflow-finops ray up`, 2 CPUs), promoted only
when better on the newest held-out slice. Cost = sum of `finops/cost_usd` over every tracked,
non-nested run of the policy's store; accuracy = the champion in production when a window
arrives, scored on that window before any retrain on it, averaged over windows 1..{args.windows}.
Machine: {os.cpu_count()} cores, load average {load[0]:.1f} before / {load[1]:.1f} after, {datetime.now():%Y-%m-%d}.

{cmd}

{table_text(rows, args.windows)}

![cost and accuracy per policy](headline.png)

| target | figure | |
| --- | --- | --- |
| (c) cost <= 40% of (a) | {v['cost_share']:.1%} | {ok(v['cost_ok'])} |
| (c) mean accuracy within 1 point of (a) | {-v['acc_gap_points']:+.2f} points | {ok(v['acc_ok'])} |
| (c) clearly above (b) | {v['over_never_points']:+.2f} points | {ok(v['over_never_ok'])} |

Where (c)'s money goes: drift checks {checks_share:.0%} of its cost ({c['checks']} checks,
${per_check:.6f} each); an incremental retrain ${per_inc:.6f} on average vs ${per_full:.6f} for one
of (a)'s full retrains (growing with the data: {a['retrains']} fits on {(20_000 + args.rows) / 1000:g}k..{(20_000 + args.windows * args.rows) / 1000:g}k rows).
Not in any policy's figure: what runs outside a tracked run (process start and imports,
the drift gate's construction, the scheduler, the prequential scoring) and the Ray cluster's own
processes while idle.
"""


# ------------------------------------------------------------------ the local Ray cluster of policy (c)
JOBS = "http://127.0.0.1:8265"


def _jobs_api_answers() -> bool:
    import requests

    from mlflow_finops.ray_cluster import ray_auth_headers

    try:
        return requests.get(JOBS + "/api/version", headers=ray_auth_headers(), timeout=2).ok
    except requests.RequestException:
        return False


@contextlib.contextmanager
def local_ray() -> Iterator[str]:
    """The cluster policy (c) submits its retrain jobs to (the example's Jobs API address).

    If one answers on 127.0.0.1:8265 it is used as it is (the example does the same). Else
    ``mlflow-finops ray up`` starts one, as the example would, and ``mlflow-finops ray down``
    stops it afterwards (that cluster's processes only, not other Ray clusters on the machine).
    """
    if _jobs_api_answers():
        yield "an existing cluster on 127.0.0.1:8265"
        return
    # Its own temp dir: a Ray job's driver gets RAY_ADDRESS from <temp dir>/ray/ray_current_cluster,
    # the cluster started last there, which under the shared /tmp/ray can be another one on the machine.
    tmp = tempfile.mkdtemp(prefix="rhl-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    exe = str(Path(sys.executable).parent / "mlflow-finops")
    subprocess.run([exe, "ray", "up", "--num-cpus", "2"], check=True, env={**os.environ, "RAY_TMPDIR": tmp})
    deadline = time.monotonic() + 120
    while not _jobs_api_answers() and time.monotonic() < deadline:  # the dashboard comes up last
        time.sleep(1.0)
    try:
        yield "a cluster started for this bench (GCS 127.0.0.1:6379)"
    finally:
        down = subprocess.run([exe, "ray", "down"], capture_output=True, text=True)
        print(f"the bench's Ray cluster: {down.stdout.strip()}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--n-estimators", type=int, default=60, help="the champion's forest size (the example's: 60)")
    ap.add_argument("--out", default=None, help="folder for the three stores (default: a temp folder, kept)")
    ap.add_argument("--only", choices=POLICIES, action="append", help=argparse.SUPPRESS)
    ap.add_argument("--no-readme", action="store_true", help="don't write bench/README.md and bench/headline.png")
    ap.add_argument("--run-policy", choices=POLICIES, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.run_policy:
        res = run_policy(args.run_policy, Path(args.folder), args.windows, args.rows, args.n_estimators)
        Path(args.json).write_text(json.dumps(res))
        return

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-headline-")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    print(f"stores under {out}", flush=True)
    load0 = os.getloadavg()[0]
    results: dict[str, dict] = {}
    for name in args.only or POLICIES:
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\n=== {LABELS[name]} ===", flush=True)
        cmd = [sys.executable, __file__, "--run-policy", name, "--folder", str(folder), "--json",
               str(out / f"{name}.json"), "--windows", str(args.windows), "--rows", str(args.rows),
               "--n-estimators", str(args.n_estimators)]
        t = time.perf_counter()
        with local_ray() if name == "gated" else contextlib.nullcontext("-") as ray_cluster:
            if name == "gated":
                print(f"Ray: {ray_cluster}", flush=True)
            subprocess.run(cmd, check=True)
        res = json.loads((out / f"{name}.json").read_text())
        res["costs"] = store_costs(folder)
        results[name] = res
        print(f"--- {name}: {time.perf_counter() - t:.0f} s, cost ${res['costs']['cost_usd']:.6f}", flush=True)
    if args.only:
        return
    load1 = os.getloadavg()[0]

    rows = summarize(results)
    v = verdict(rows)
    print("\n" + table_text(rows, args.windows))
    print(f"\n(c) cost = {v['cost_share']:.1%} of (a) (target <= {COST_SHARE_TARGET:.0%}: "
          f"{'met' if v['cost_ok'] else 'missed'}); (c) accuracy {-v['acc_gap_points']:+.2f} points vs (a) "
          f"(target within {ACC_POINTS_TARGET:g}: {'met' if v['acc_ok'] else 'missed'}); "
          f"{v['over_never_points']:+.2f} points vs (b)")

    png = out / "headline.png"
    chart(rows, png, v)
    csv_text = to_csv(rows)
    (out / "headline.csv").write_text(csv_text)
    if not args.no_readme:
        shutil.copyfile(png, HERE / "headline.png")
        write_readme(HERE / "README.md", readme_block(rows, v, args, (load0, load1)))
        print(f"wrote {HERE / 'headline.png'} and the headline section of {HERE / 'README.md'}")

    # the table and chart, as artifacts of a run in the gated policy's store
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'gated' / 'mlflow.db'}")
    mlflow.set_experiment("finops-bench")
    with mlflow.start_run(run_name=f"headline-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}",
                          tags={"bench": "headline", "host": platform.node()}):
        mlflow.log_params({"windows": args.windows, "rows": args.rows, "n_estimators": args.n_estimators})
        for r in rows:
            p = re.sub(r"\W", "_", r["policy"])
            mlflow.log_metrics({f"{p}/cost_usd": r["cost_usd"], f"{p}/mean_accuracy": r["mean_accuracy"],
                                f"{p}/retrains": r["retrains"]})
        mlflow.log_metrics({"gated_cost_share": v["cost_share"], "gated_acc_gap_points": v["acc_gap_points"]})
        mlflow.log_artifact(str(out / "headline.csv"))
        mlflow.log_artifact(str(png))
    print(f"logged to experiment finops-bench of sqlite:///{out / 'gated' / 'mlflow.db'}")


if __name__ == "__main__":
    main()
