"""Headline benchmark: is harm- and cost-aware retraining worth it, on real drifting data?

Streams, each cut in time order into a reference window (the first champion's
training data) and windows that arrive one by one:

- **synthetic**: ``examples/stream.py`` (drift at windows 3 and 6);
- **rialto**: ``shared/data/rialto.csv.gz`` (82,250 rows, 27 features, 10 classes; daylight and weather);
- **insects**: ``shared/data/insects_gradual.csv.gz`` (24,150 rows, 33 features, 6 classes; temperature);
- **rialto-shuffled**: rialto's rows in random order (seed 0), cut the same way: a control with no
  drift, where retraining should buy little after the first windows;
- a stream of your own: ``--data PATH.csv[.gz]|.parquet --target COL --reference-rows N
  --window-rows N --windows K [--name NAME]`` (rows in time order).

Policies, each in its own process with its own fresh SQLite MLflow store
(``<out>/<stream>/<policy>/mlflow.db``), one after the other, all starting from
the same champion (``train_champion`` of ``bench/_harness.py``, as the demo trains it:
RandomForestClassifier(60) on the reference) and the same policy file:

- **(a) scheduled**: after every window a full retrain from scratch on everything
  seen so far, in-process under ``mlflow_finops.autolog()``, logged and registered
  as the new ``@champion``;
- **(b) never**: the first champion stays;
- **(c) gated**: the loop of ``examples/retrain_loop.py`` (``bench/_harness.py``) with its defaults (the
  gate on every window, the project's retrain trigger, retrains on Ray driven to
  their end, promoted only when better);
- **(d) every**: the same retrain every window, no gate, no trigger: per window
  ``request_retrain`` then ``RetrainSupervisor.run_pending(model, wait=True)``, the same
  jobs as (c) on the same kind of cluster;
- **(e) anchor**: the classic accuracy alarm: a full retrain like (a) when the champion's
  accuracy on a window is more than 2 points below its baseline: its accuracy on the
  first window it served (a from-scratch retrain has no held-out score of its own).

(c) and (d) use a Ray cluster of their own (free ports, their own ``RAY_TMPDIR``,
stopped after; ``mlflow_finops.local_cluster``); no policy uses a cluster that
happens to answer on the default port.

Per stream and policy: total cost = the sum of ``finops/cost_usd`` over every
tracked, non-nested run of its store; CPU core-s; drift checks; retrains
(promoted); mean prequential accuracy (the champion in production scored on
each window before any retrain on it); wall time. Per stream, also the net value of each policy (value of a point x accuracy points x windows - cost) at
three values of a point (the policy's default, $0.0001, x0.01, x1 and x100) and the loop's regret
against the best of (a), (b), (e), (f) in hindsight. Targets per stream: 1. (c) accuracy >= the
more accurate of (a) and (e) - 0.5 pt; 2. (c) cost <= 60% of (a); 3. where (b) is within 0.5 pt of
the most accurate policy, (c) cost <= 40% of (a); 4. no baseline both cheaper by > 5% and more
accurate by > 0.2 pt; 5. regret <= 0 at each value.

Prints the tables and the targets, writes ``bench/headline-<stream>.png`` (cost
vs accuracy) and the Headline section of ``bench/README.md``, and logs every
figure, the CSV and the charts to a run of experiment ``finops-bench`` in
``<out>/bench.db``.

    .venv/bin/python bench/bench_headline.py                                     # all streams, all policies
    .venv/bin/python bench/bench_headline.py --streams insects --scale 0.25 --windows 3 --no-readme   # a quick look
    .venv/bin/python bench/bench_headline.py --data my.parquet --target y --reference-rows 5000 \
        --window-rows 5000 --windows 8 --policies abcef --no-readme                              # your own stream
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = REPO.parent / "shared" / "data"

POLICIES = ("scheduled", "never", "gated", "every", "anchor", "second")
LETTER = dict(zip(POLICIES, "abcdef"))
BASELINES = ("scheduled", "never", "anchor", "second")  # what the loop's regret is measured against
LABELS = {
    "scheduled": "(a) full retrain every window",
    "never": "(b) never retrain",
    "gated": "(c) the loop (gate + trigger, retrains on Ray)",
    "every": "(d) the loop's retrain every window (Ray)",
    "anchor": "(e) full retrain when accuracy drops > 2 pt",
    "second": "(f) full retrain every 2nd window",
}
COLORS = {"scheduled": "#c44e52", "never": "#8c8c8c", "gated": "#4c72b0", "every": "#55a868", "anchor": "#dd8452", "second": "#937860"}
ANCHOR_DROP = 0.02  # (e): a drop of more than 2 points below the baseline
SECTION = "## Headline: is retraining worth its cost? (six policies, four streams)"
BEGIN, END = "<!-- headline:begin (written by bench/bench_headline.py) -->", "<!-- headline:end -->"
ACC_BELOW_BEST_POINTS = 0.5  # 1. (c) >= the more accurate of (a) and (e) - 0.5 pt
COST_SHARE_TARGET = 0.60  # 2. (c) <= 60% of (a)
IDLE_POINTS, IDLE_SHARE = 0.5, 0.40  # 3. where (b) is within 0.5 pt of the best, (c) <= 40% of (a)
DOMINATED_COST, DOMINATED_POINTS = 0.05, 0.2  # 4. no baseline cheaper by > 5% and more accurate by > 0.2 pt
VALUE_SCALES = {"low": 0.01, "default": 1.0, "high": 100.0}  # x the policy's value of a point


@dataclass(frozen=True)
class Stream:
    """A data set and how it is cut: a reference, then ``windows`` windows of ``window_rows``."""

    name: str
    file: str | None  # in DATA; None = the synthetic stream
    reference_rows: int
    window_rows: int
    windows: int
    target: str = "target"
    drift_points: tuple[int, ...] = ()
    shuffle_seed: int | None = None  # a control: the rows shuffled (no drift left), with this seed
    base: str | None = None  # the built-in stream this one is cut like (the shuffled control's)

    def scaled(self, scale: float, windows: int | None) -> "Stream":
        from dataclasses import replace

        return replace(self, reference_rows=max(200, int(self.reference_rows * scale)),
                       window_rows=max(200, int(self.window_rows * scale)),
                       windows=min(windows or self.windows, self.windows))

    def load(self):
        """(reference, windows) in time order (the synthetic stream and the time-order cut: the demo's data)."""
        from mlflow_finops.frames import read_frame
        from mlflow_finops.streams import DRIFT_POINTS, cut, synthetic

        if self.file is None:
            assert self.drift_points == DRIFT_POINTS
            return synthetic(self.windows, self.window_rows, self.reference_rows)
        data = read_frame(DATA / self.file)  # an absolute path (--data) stays itself
        if self.shuffle_seed is not None:
            data = data.sample(frac=1.0, random_state=self.shuffle_seed).reset_index(drop=True)
        return cut(data, self.reference_rows, self.window_rows, self.windows)

    def describe(self) -> str:
        return (f"{self.reference_rows:,}-row reference + {self.windows} windows of {self.window_rows:,} rows"
                + (f", drift at windows {' and '.join(map(str, self.drift_points))}" if self.drift_points else "")
                + (f", rows shuffled (seed {self.shuffle_seed}): a control with no drift" if self.shuffle_seed is not None
                   else ""))

    def to_json(self) -> str:
        from dataclasses import asdict

        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Stream":
        d = json.loads(text)
        d["drift_points"] = tuple(d.get("drift_points") or ())
        return cls(**d)


STREAMS = {  # the real streams first
    "rialto": Stream("rialto", "rialto.csv.gz", 8_000, 8_000, 9),
    "insects": Stream("insects", "insects_gradual.csv.gz", 2_400, 2_400, 9),
    "synthetic": Stream("synthetic", None, 5_000, 5_000, 8, target="churned", drift_points=(3, 6)),
    # the control: rialto's rows in random order, cut the same way (retraining should buy little after the first windows)
    "rialto-shuffled": Stream("rialto-shuffled", "rialto.csv.gz", 8_000, 8_000, 9, shuffle_seed=0),
}


# ------------------------------------------------------------------ one policy on one stream, in its own process
def _setup_store(folder: Path) -> None:
    import mlflow

    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)  # artifacts next to the store
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)


def run_policy(name: str, stream: Stream, folder: Path, n_estimators: int, loop_point_usd: float | None = None) -> dict:
    """Run policy ``name`` on ``stream`` in ``folder``; its per-window figures."""
    import functools

    import mlflow
    import pandas as pd

    import _harness as h
    import mlflow_finops
    from mlflow_finops.names import TAG_MODEL

    _setup_store(folder)
    root = folder / "loop"
    reference, windows = stream.load()
    factory = functools.partial(h.new_model, n_estimators)
    t0 = time.perf_counter()
    out: dict = {"policy": name, "stream": stream.name, "n_estimators": n_estimators, "reasons": [], "triggers": []}
    if name == "gated":
        extra = f"\n[trigger]\nvalue_per_point_usd = {loop_point_usd!r}\n" if loop_point_usd is not None else ""
        out.update(h.gated(root, reference, windows, target=stream.target, model_factory=factory, extra=extra,
                           drift_points=stream.drift_points, echo=lambda s: print(s, flush=True)))
        out["wall_s"] = time.perf_counter() - t0
        return out

    features = h.features_of(reference, stream.target)
    out.update(features=features, accuracy=[], decisions=[], retrains=[])

    def setup(ray_address: str | None):
        policy = h.prepare(root, target=stream.target, features=features, ray_address=ray_address)
        reference.to_parquet(root / "reference.parquet")
        mlflow_finops.autolog(interval_s=1.0)
        print(f"training the champion on the reference ({len(reference):,} rows) ...", flush=True)
        h.train_champion(policy, reference, target=stream.target, features=features, model_factory=factory)
        return policy, h.ChampionScorer(features, stream.target)

    if name == "every":
        with mlflow_finops.local_cluster(num_cpus=2) as cluster:
            policy, scorer = setup(cluster.jobs_url)
            for w, df in enumerate(windows, start=1):
                df.to_parquet(root / "incoming" / f"window-{w:02d}.parquet")
                acc = scorer(df)
                mlflow_finops.request_retrain(policy, h.MODEL, reason=f"every window: window {w}")
                done = [h.retrain_row(r) for r in mlflow_finops.drain(policy, h.MODEL, timeout_s=h.DRAIN_TIMEOUT_S)]
                out["accuracy"].append(acc)
                out["decisions"].append("every")
                out["retrains"].append(done)
                what = "; ".join(f"retrain {d['state']} (${d['cost_usd'] or 0:.6f})" for d in done) or "-"
                print(f"{w:>6}  {acc:>12.3f}  {what}", flush=True)
        out["wall_s"] = time.perf_counter() - t0
        return out

    policy, scorer = setup(None)  # (a), (b), (e): no Ray
    seen = [reference]
    baseline: float | None = None  # (e): the champion's accuracy on the first window it served
    for w, df in enumerate(windows, start=1):
        acc = scorer(df)
        out["accuracy"].append(acc)
        seen.append(df)
        retrain = name == "scheduled" or (name == "second" and w % 2 == 0)
        if name == "anchor":
            if baseline is None:
                baseline = acc
            elif acc < baseline - ANCHOR_DROP:
                retrain = True
        done: list[dict] = []
        if retrain:
            t = time.perf_counter()
            mlflow.set_experiment(h.EXPERIMENT + "/training")
            with mlflow.start_run(run_name=f"{name}-retrain-w{w}", tags={TAG_MODEL: h.MODEL}) as run:
                data = pd.concat(seen, ignore_index=True)
                model = factory().fit(data[features], data[stream.target])
                version = mlflow_finops.register_champion(model, h.REGISTERED)
                mlflow.log_metric("train/rows", len(data))
            done.append({"state": "promoted", "run_id": run.info.run_id, "rows": len(data), "model_version": version,
                         "seconds": time.perf_counter() - t})
            if name == "anchor":
                baseline = None  # the new champion's baseline: its accuracy on the next window
        out["decisions"].append(name if retrain else "-")
        out["retrains"].append(done)
        what = f"full retrain on {done[0]['rows']:,} rows, {done[0]['seconds']:.1f} s" if done else "-"
        base = f" (baseline {baseline:.3f})" if name == "anchor" and baseline is not None else ""
        print(f"{w:>6}  {acc:>12.3f}  {what}{base}", flush=True)
    out["wall_s"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------ figures read from each store
def store_costs(folder: Path) -> dict:
    """Total over counted runs (tracked, not nested) and a split by part of the lifecycle."""
    from mlflow.tracking import MlflowClient

    from mlflow_finops.spend.report import build_report

    report = build_report(MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}"))
    parts = {"champion": 0.0, "checks": 0.0, "retrains": 0.0}
    each: dict[str, list[tuple[float, float]]] = {"checks": [], "retrains": []}  # (start, CPU core-s) per run
    for r in report.counted:
        part = "champion" if r.run_name == "champion-v1" else "checks" if "monitoring" in r.experiment else "retrains"
        parts[part] += r.cost_usd
        if part in each:
            each[part].append((r.start_time or 0, (r.cpu_core_hours or 0.0) * 3600))
    total = report.total()
    return {
        "cost_usd": total.cost_usd,
        "cpu_core_hours": total.cpu_core_hours,
        "runs_counted": len(report.counted),
        "runs_untracked": len(report.untracked),
        "checks": sum(1 for r in report.counted if "monitoring" in r.experiment),
        **{f"cost_{k}_usd": v for k, v in parts.items()},
        **{f"cpu_s_{k}": [c for _, c in sorted(v)] for k, v in each.items()},  # in start order
    }


def realized_record(folder: Path) -> dict:
    """(c)'s retrains as the store has them, oldest first: in-window gain, realized gain on the next
    labelled window, memory kept, rolled back."""
    from mlflow.tracking import MlflowClient

    from mlflow_finops.names import METRIC_REALIZED_GAIN, TAG_MEMORY, TAG_RETRAIN_STATE, TAG_ROLLED_BACK

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith("finops-retrains/")]
    out = []
    for run in (client.search_runs(exps, order_by=["attributes.start_time ASC"], max_results=1000) if exps else []):
        m, t = run.data.metrics, run.data.tags
        ch, cp = m.get("eval/challenger_accuracy"), m.get("eval/champion_accuracy")
        out.append({"state": t.get(TAG_RETRAIN_STATE), "in_window": None if ch is None or cp is None else ch - cp,
                    "realized": m.get(METRIC_REALIZED_GAIN), "memory": (t.get(TAG_MEMORY) or "").split(":")[0],
                    "rolled_back": bool(t.get(TAG_ROLLED_BACK))})
    return {"retrains": out}


def realized_text(record: dict) -> str:
    rs = [r for r in record.get("retrains", []) if r["state"] in ("promoted", "not_promoted", "capped")]
    if not rs:
        return ""
    cells = []
    for r in rs:
        iw = "-" if r["in_window"] is None else f"{r['in_window'] * 100:+.1f}"
        re_ = "-" if r["realized"] is None else f"{r['realized'] * 100:+.1f}"
        cells.append(f"{r['state'].replace('not_promoted', 'not promoted')} {iw} / {re_}"
                     + (f" [{r['memory']}]" if r["memory"] else "") + (" **rolled back**" if r["rolled_back"] else ""))
    return ("(c)'s retrains in order, in-window gain / realized on the next labelled window (pt) [memory kept]: "
            + "; ".join(cells))


def run_parts(results: dict[str, dict]) -> str:
    """(c)'s checks and retrains one by one, in CPU core-s: what a floor of its cost is built from."""
    costs = results.get("gated", {}).get("costs", {})
    checks, retrains = costs.get("cpu_s_checks") or [], costs.get("cpu_s_retrains") or []
    if not checks and not retrains:
        return ""

    def spread(xs: list[float]) -> str:
        return f"{min(xs):.2f}-{max(xs):.2f} (median {statistics.median(xs):.2f})" if xs else "-"

    return (f"(c)'s runs, CPU core-s each: {len(checks)} drift checks {spread(checks)}; {len(retrains)} retrains "
            f"{spread(retrains)}, the first (the warm actor's start) {retrains[0]:.2f}" if retrains else
            f"(c)'s runs, CPU core-s each: {len(checks)} drift checks {spread(checks)}; no retrain")


def summarize(results: dict[str, dict]) -> list[dict]:
    rows = []
    for name in POLICIES:
        if name not in results:
            continue
        r = results[name]
        if name in ("scheduled", "anchor", "second"):
            jobs = [d for w in r["retrains"] for d in w]
        else:  # an open request is seen again at each window until it ends: one per attempt (Ray job / actor task)
            jobs = list({d["ray_job_id"]: d for w in r["retrains"] for d in w if d.get("ray_job_id")}.values())
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
            "retrain_windows": [w for w, done in enumerate(r["retrains"], start=1) if done],
            "mean_accuracy": sum(r["accuracy"]) / len(r["accuracy"]),
            "accuracy": r["accuracy"],
            "runs_counted": r["costs"]["runs_counted"],
            "runs_untracked": r["costs"]["runs_untracked"],
            "wall_s": r["wall_s"],
        })
    return rows


def point_value_usd() -> float:
    """The value of a point at the policy's defaults (the example's policy has no ``[trigger]`` keys)."""
    from mlflow_finops.policy import TriggerPolicy

    return TriggerPolicy().point_value_usd()


def net_value(r: dict, point_usd: float) -> float:
    """value x accuracy points x windows - cost: a point served for one window is worth ``point_usd``."""
    return point_usd * 100 * sum(r["accuracy"]) - r["cost_usd"]


def regrets(rows: list[dict]) -> list[dict]:
    """Per value setting: each policy's net value, the best baseline's in hindsight, and (c)'s regret."""
    by = {r["policy"]: r for r in rows}
    base = [n for n in BASELINES if n in by]
    out = []
    for label, scale in VALUE_SCALES.items():
        point = point_value_usd() * scale
        nets = {n: net_value(r, point) for n, r in by.items()}
        best = max(base, key=lambda n: nets[n]) if base else None
        regret = nets[best] - nets["gated"] if best and "gated" in nets else None
        out.append({"setting": label, "point_usd": point, "nets": nets, "best": best, "regret": regret})
    return out


def targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """(target, figure, met) per target of the issue; met None where it does not apply; a target whose
    policies were not run is left out."""
    by = {r["policy"]: r for r in rows}
    c = by.get("gated")
    out: list[tuple[str, str, bool | None]] = []
    if c is None:
        return out
    pt = 100.0

    def need(*names: str) -> bool:
        return all(n in by for n in names)

    if need("scheduled", "anchor"):
        best = max(by["scheduled"]["mean_accuracy"], by["anchor"]["mean_accuracy"])
        gap = (c["mean_accuracy"] - best) * pt
        out.append(("1. (c) accuracy >= the more accurate of (a), (e) - 0.5 pt", f"{gap:+.2f} pt",
                    gap >= -ACC_BELOW_BEST_POINTS))
    if need("scheduled"):
        a = by["scheduled"]
        share = c["cost_usd"] / a["cost_usd"] if a["cost_usd"] else float("nan")
        out.append(("2. (c) cost <= 60% of (a)", f"{share:.1%}", share <= COST_SHARE_TARGET))
        if "never" in by:
            top = max(r["mean_accuracy"] for r in rows)
            idle = (top - by["never"]["mean_accuracy"]) * pt
            if idle <= IDLE_POINTS:
                out.append(("3. (b) within 0.5 pt of the best: (c) cost <= 40% of (a)",
                            f"(b) {idle:.2f} pt below the best; (c) {share:.1%} of (a)", share <= IDLE_SHARE))
            else:
                out.append(("3. (b) within 0.5 pt of the best: (c) cost <= 40% of (a)",
                            f"does not apply: retraining buys {idle:.2f} pt over (b)", None))
    dominated = []
    for n in BASELINES:
        if n in by:
            r = by[n]
            cheaper = r["cost_usd"] < c["cost_usd"] * (1 - DOMINATED_COST)
            better = (r["mean_accuracy"] - c["mean_accuracy"]) * pt > DOMINATED_POINTS
            if cheaper and better:
                dominated.append(f"({LETTER[n]}) {r['cost_usd'] / c['cost_usd']:.0%} of the cost, "
                                 f"{(r['mean_accuracy'] - c['mean_accuracy']) * pt:+.2f} pt")
    out.append(("4. no baseline cheaper by > 5% and more accurate by > 0.2 pt", "; ".join(dominated) or "none",
                not dominated))
    for g in regrets(rows):
        if g["regret"] is None:
            continue
        out.append((f"5. regret <= 0 at the {g['setting']} value (${g['point_usd']:.6g} a point a window)",
                    f"${g['regret']:+.6f} (best baseline ({LETTER[g['best']]}))", g["regret"] <= 0))
    return out


def _ok(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "**missed**"


def values_text(rows: list[dict]) -> str:
    """Net value of each policy at the three value settings, and (c)'s regret against the best baseline."""
    gs = regrets(rows)
    lines = ["| policy | " + " | ".join(f"net value, {g['setting']} (${g['point_usd']:.6g}/pt)" for g in gs) + " |",
             "| --- |" + " --- |" * len(gs)]
    for r in rows:
        cells = []
        for g in gs:
            mark = " (best baseline)" if g["best"] == r["policy"] else ""
            cells.append(f"${g['nets'][r['policy']]:.6f}{mark}")
        lines.append(f"| ({LETTER[r['policy']]}) {r['policy']} | " + " | ".join(cells) + " |")
    if any(g["regret"] is not None for g in gs):
        lines.append("| **(c)'s regret** | " + " | ".join(
            "-" if g["regret"] is None else f"**${g['regret']:+.6f}**" for g in gs) + " |")
    return "\n".join(lines)


def table_text(rows: list[dict]) -> str:
    n = len(rows[0]["accuracy"])
    lines = ["| policy | total cost | champion / checks / retrains | CPU core-s | drift checks | retrain attempts (promoted) "
             f"| retrained after window | mean accuracy | per window 1..{n} | wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['label']} | ${r['cost_usd']:.6f} | ${r['cost_champion_usd']:.6f} / ${r['cost_checks_usd']:.6f} / "
            f"${r['cost_retrains_usd']:.6f} | {r['cpu_core_s']:.0f} | {r['checks']} | {r['retrains']} ({r['promoted']}) | "
            f"{' '.join(map(str, r['retrain_windows'])) or '-'} | {r['mean_accuracy']:.4f} | "
            f"{' '.join(f'{x:.3f}' for x in r['accuracy'])} | {r['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def targets_text(ts: list[tuple[str, str, bool | None]]) -> str:
    return "\n".join(["| target | figure | |", "| --- | --- | --- |",
                      *(f"| {t} | {fig} | {_ok(m)} |" for t, fig, m in ts)])


def to_csv(all_rows: dict[str, list[dict]]) -> str:
    buf = io.StringIO()
    fields = ["stream", "policy", "label", "cost_usd", "cost_champion_usd", "cost_checks_usd", "cost_retrains_usd",
              "cpu_core_s", "checks", "retrains", "promoted", "mean_accuracy", "accuracy_per_window",
              "runs_counted", "runs_untracked", "wall_s"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for stream, rows in all_rows.items():
        for r in rows:
            w.writerow({**{k: r[k] for k in fields if k in r}, "stream": stream,
                        "accuracy_per_window": " ".join(f"{x:.4f}" for x in r["accuracy"])})
    return buf.getvalue()


def chart(stream: Stream, rows: list[dict], path: Path) -> None:
    """Cost vs mean accuracy per policy, and accuracy window by window."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.3), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    for r in rows:
        ax1.scatter(r["cost_usd"] * 1000, r["mean_accuracy"], s=60, color=COLORS[r["policy"]], zorder=3)
        ax1.annotate(f"({LETTER[r['policy']]}) {r['policy']}\n{r['retrains']} retrains",
                     (r["cost_usd"] * 1000, r["mean_accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax1.set_xlabel("total cost, milli-USD (sum of finops/cost_usd)")
    ax1.set_ylabel("mean prequential accuracy")
    ax1.set_xlim(left=0, right=max(r["cost_usd"] for r in rows) * 1000 * 1.35)
    lo, hi = min(r["mean_accuracy"] for r in rows), max(r["mean_accuracy"] for r in rows)
    ax1.set_ylim(lo - 0.1 * (hi - lo + 0.01), hi + 0.2 * (hi - lo + 0.01))  # room for the labels
    ax1.grid(alpha=0.3)
    ax1.set_title(f"{stream.name}: cost vs accuracy (up and left is better)", fontsize=10)
    for r in rows:
        ax2.plot(range(1, len(r["accuracy"]) + 1), r["accuracy"], marker="o", ms=3, color=COLORS[r["policy"]],
                 label=LABELS[r["policy"]])
    for d in stream.drift_points:
        ax2.axvline(d, color="k", lw=0.6, ls=":")
    ax2.set_xticks(range(1, len(rows[0]["accuracy"]) + 1))
    ax2.set_xlabel("window" + (f" (drift at {', '.join(map(str, stream.drift_points))})" if stream.drift_points else ""))
    ax2.set_ylabel("accuracy of the champion in production")
    ax2.legend(fontsize=7)
    ax2.set_title("per window, before any retrain on it", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def write_readme(readme: Path, block: str) -> None:
    text = readme.read_text() if readme.exists() else ""
    generated = f"{BEGIN}\n{block.strip()}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + generated + text[text.index(END) + len(END):]
    else:  # the headline goes first: before the first section
        m = re.search(r"^## ", text, flags=re.M)
        i = m.start() if m else len(text)
        text = text[:i] + f"{SECTION}\n\n{generated}\n\n" + text[i:]
    readme.write_text(text)


def trigger_notes(results: dict[str, dict]) -> str:
    """(c)'s gate and trigger, window by window: what the lead of the trigger tunes from."""
    g = results.get("gated")
    if not g:
        return ""
    lines = []
    for w, (dec, reason, trig, done) in enumerate(zip(g["decisions"], g["reasons"], g["triggers"], g["retrains"]),
                                                  start=1):
        verdict, _, rest = trig.partition(":")  # the trigger's reason repeats the gate's signal first
        # from why it was weighed: a retrain the gate did not ask for says so, else the expectation
        start = next((i for i in (rest.find("the last retrain bought"), rest.find("expected")) if i >= 0), 0)
        weighed = rest[start:]
        lines.append(f"  {w}. {dec}: {reason}" + (f"\n     trigger: {verdict}: {weighed.strip()}" if trig else "")
                     + (f"\n     retrain: {', '.join(d['state'] for d in done)}" if done else ""))
    return "\n".join(lines)


def readme_block(streams: list[Stream], all_rows: dict[str, list[dict]], all_results: dict[str, dict],
                 all_targets: dict[str, list], cmd: str, load: tuple[float, float], minutes: float) -> str:
    parts = [f"""\
`bench/bench_headline.py`, the policies on each stream, each policy in its own process and fresh
SQLite store, one after the other, all from the same first champion (`RandomForestClassifier(60,
n_jobs=2)` on the stream's reference, as `examples/retrain_loop.py` trains it) and the same
policy file (the example's, `examples/retrain_loop.toml`: prices, tags, budget, `[retrain]` warm start +2 x 20 trees past
`refit_max_rows`, no `[drift]` or `[trigger]` keys, so the project's defaults). The first champion's
version carries its validation score (fitted without the newest 20% of the reference, scored on
them), as a retrained version carries its held-out score. **(a)** a full retrain from scratch on
everything seen after every window, in-process under `autolog()`, registered as the new champion;
**(b)** never; **(c)** the example's loop (`run_schedule` then `drain` per window): the drift gate on every window (the champion's
loss since promotion on the labelled window; drift only while labels lag), the project's retrain
trigger (its expected gain learned from what past retrains realized on the window after them, at
the default value of a point, $0.0001; it also follows a retrain that realized more than the
tolerated loss), promote-then-verify (a promotion that loses to the version it replaced by more
than the tolerated loss on the next labelled window is rolled back), and retrains on
Ray (the project's default `[retrain] runner`: a warm actor; `auto` update: a full refit while
learned + new rows <= 100,000, as here; default `memory = "adaptive"`: also fitted on the new rows
alone, forgetting the rest, kept when better on the held-out rows), promoted only when better on
the newest held-out rows, then fitted once more with them; **(d)** the same retrain requested after every window
(`request_retrain` + `run_pending(wait=True)`), no gate; **(e)** the classic alarm: a full retrain
like (a) when the champion's accuracy on a window is more than 2 points below its accuracy on the
first window it served; **(f)** a full retrain like (a) after every 2nd window. (c) and (d) each start their own 2-CPU Ray cluster on free ports with their
own `RAY_TMPDIR` and stop it after. Cost = sum of `finops/cost_usd` over every tracked, non-nested
run of the policy's store; accuracy = the champion in production scored on each window before
any retrain on it (prequential), averaged. Machine: {os.cpu_count()} cores, load average
{load[0]:.1f} before / {load[1]:.1f} after, {datetime.now():%Y-%m-%d}, {minutes:.0f} min
of policy processes in all.

    {cmd}
"""]
    for s in streams:
        if s.name not in all_rows:
            continue
        parts.append(f"""\
### {s.name}: {s.describe()}

{table_text(all_rows[s.name])}

![{s.name}: cost vs accuracy](headline-{s.name}.png)

Net value (value of a point x accuracy points x windows - cost) at three values of a point, and
the loop's regret against the best baseline ((a), (b), (e), (f)) in hindsight:

{values_text(all_rows[s.name])}

{targets_text(all_targets[s.name])}
""")
        rec = realized_text(all_results[s.name].get("gated", {}).get("record", {}))
        if rec:
            parts.append(rec + ".\n")
        notes = trigger_notes(all_results[s.name])
        if notes:
            parts.append(f"(c)'s gate and trigger, window by window:\n\n```\n{notes}\n```\n")
        each = run_parts(all_results[s.name])
        if each:
            parts.append(each + ".\n")
    parts.append("""\
Not in any policy's figure: what runs outside a tracked run (process start and imports, the
gate's construction, the scheduler, the prequential scoring) and the Ray cluster's own processes
while idle.
""")
    return "\n".join(parts)


# ------------------------------------------------------------------ driver
def _choose(text: str | None, known: tuple[str, ...], what: str) -> list[str]:
    if not text:
        return list(known)
    by_letter = {LETTER.get(k, k): k for k in known}
    out = []
    items = [x.strip() for x in text.split(",") if x.strip()]
    if len(items) == 1 and items[0] not in known and all(ch in by_letter for ch in items[0]):
        items = list(items[0])  # letters run together: "abcef"
    for item in items:
        name = item if item in known else by_letter.get(item)
        if name is None:
            raise SystemExit(f"unknown {what} {item!r}: choose from {', '.join(known)}")
        out.append(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", help=f"comma-separated, of {', '.join(STREAMS)} (default: all, unless --data)")
    ap.add_argument("--policies", help="comma-separated names or letters a-f, or letters run together: acef "
                                       "(default: all)")
    ap.add_argument("--data", help="a stream of your own: a CSV (.csv, .csv.gz) or Parquet file, rows in time order")
    ap.add_argument("--target", help="--data's label column")
    ap.add_argument("--reference-rows", type=int, help="--data: rows of the first champion's training data")
    ap.add_argument("--window-rows", type=int, help="--data: rows of each window after it")
    ap.add_argument("--name", help="--data: the stream's name in the tables (default: the file's name)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stream's row counts (a quick look: 0.25)")
    ap.add_argument("--windows", type=int, help="at most this many windows per stream")
    ap.add_argument("--n-estimators", type=int, default=60, help="the champion's forest size (the example's: 60)")
    ap.add_argument("--out", default=None, help="folder for the stores (default: a temp folder, kept)")
    ap.add_argument("--no-readme", action="store_true", help="don't write bench/README.md and bench/headline-*.png")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the results already in --out (a policy's JSON and store) instead of running it again")
    ap.add_argument("--loop-point-usd", type=float, help="(c)'s [trigger] value_per_point_usd (default: the "
                    "policy's default value of a point); the tables still score every policy at the three values")
    ap.add_argument("--run-policy", choices=POLICIES, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--stream-spec", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.run_policy:
        stream = Stream.from_json(args.stream_spec)
        res = run_policy(args.run_policy, stream, Path(args.folder), args.n_estimators, args.loop_point_usd)
        Path(args.json).write_text(json.dumps(res))
        return

    streams = [] if args.data and not args.streams else [
        STREAMS[s].scaled(args.scale, args.windows) for s in _choose(args.streams, tuple(STREAMS), "stream")]
    if args.data:
        missing = [k for k in ("target", "reference_rows", "window_rows", "windows") if getattr(args, k) is None]
        if missing:
            raise SystemExit(f"--data needs {', '.join('--' + k.replace('_', '-') for k in missing)}")
        path = Path(args.data).expanduser().absolute()
        name = args.name or re.sub(r"\.(csv(\.gz)?|parquet|pq)$", "", path.name)
        streams.append(Stream(name, str(path), args.reference_rows, args.window_rows, args.windows, target=args.target))
    policies = _choose(args.policies, POLICIES, "policy")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-headline-")).absolute()
    out.mkdir(parents=True, exist_ok=True)
    print(f"stores under {out}", flush=True)
    t_all = time.perf_counter()
    load0 = os.getloadavg()[0]
    all_results: dict[str, dict] = {}
    all_rows: dict[str, list[dict]] = {}
    all_targets: dict[str, list] = {}
    for stream in streams:
        results: dict[str, dict] = {}
        for name in policies:
            folder = out / stream.name / name
            done = out / f"{stream.name}-{name}.json"
            if args.reuse and done.exists():
                res = json.loads(done.read_text())
                res["costs"] = store_costs(folder)
                if name == "gated":
                    res["record"] = realized_record(folder)
                results[name] = res
                print(f"--- {stream.name}/{name}: kept from {done}", flush=True)
                continue
            shutil.rmtree(folder, ignore_errors=True)
            print(f"\n=== {stream.name} ({stream.describe()}): {LABELS[name]} ===", flush=True)
            cmd = [sys.executable, __file__, "--run-policy", name, "--stream-spec", stream.to_json(),
                   "--folder", str(folder), "--json", str(out / f"{stream.name}-{name}.json"),
                   "--n-estimators", str(args.n_estimators)]
            if args.loop_point_usd is not None and name == "gated":
                cmd += ["--loop-point-usd", str(args.loop_point_usd)]
            t = time.perf_counter()
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                print(f"--- {stream.name}/{name}: FAILED (exit {proc.returncode}); left out", flush=True)
                continue
            res = json.loads(done.read_text())
            res["process_s"] = time.perf_counter() - t  # start-up, the policy, the Ray cluster's start and stop
            done.write_text(json.dumps(res))
            res["costs"] = store_costs(folder)
            if name == "gated":
                res["record"] = realized_record(folder)
            results[name] = res
            print(f"--- {stream.name}/{name}: {time.perf_counter() - t:.0f} s, cost ${res['costs']['cost_usd']:.6f}, "
                  f"mean accuracy {sum(res['accuracy']) / len(res['accuracy']):.4f}", flush=True)
        if not results:
            continue
        rows = summarize(results)
        ts = targets(rows)
        all_results[stream.name], all_rows[stream.name], all_targets[stream.name] = results, rows, ts
        print(f"\n### {stream.name}: {stream.describe()}\n\n{table_text(rows)}\n\n{values_text(rows)}\n\n"
              f"{targets_text(ts)}", flush=True)
        if "gated" in results:
            print(realized_text(results["gated"].get("record", {})), flush=True)
        for t, fig, met in ts:
            print(f"{stream.name}: {t}: {fig}: {_ok(met).strip('*')}", flush=True)
        notes = trigger_notes(results)
        if notes:
            print(f"\n{stream.name}: (c)'s gate and trigger, window by window:\n{notes}", flush=True)
        if run_parts(results):
            print(f"{stream.name}: {run_parts(results)}", flush=True)
        chart(stream, rows, out / f"headline-{stream.name}.png")
    load1 = os.getloadavg()[0]
    print(f"\nall done in {(time.perf_counter() - t_all) / 60:.1f} min", flush=True)
    minutes = sum(r.get("process_s", 0.0) for per_policy in all_results.values() for r in per_policy.values()) / 60
    if not all_rows:
        return

    (out / "headline.csv").write_text(to_csv(all_rows))
    shown, skip = [], False  # the command line, without where the stores went
    for a in sys.argv[1:]:
        if skip or a == "--out" or a.startswith("--out=") or a in ("--no-readme", "--reuse"):
            skip = a == "--out"
            continue
        shown.append(a)
    cmd = " ".join([".venv/bin/python bench/bench_headline.py", *shown])
    if not args.no_readme:
        for s in all_rows:
            shutil.copyfile(out / f"headline-{s}.png", HERE / f"headline-{s}.png")
        write_readme(HERE / "README.md", readme_block(streams, all_rows, all_results, all_targets,
                                                      cmd, (load0, load1), minutes))
        print(f"wrote {HERE}/headline-*.png and the headline section of {HERE / 'README.md'}")

    import mlflow

    uri = f"sqlite:///{out / 'bench.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("finops-bench")
    with mlflow.start_run(run_name=f"headline-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}",
                          tags={"bench": "headline", "host": platform.node()}):
        mlflow.log_params({"streams": ",".join(all_rows), "policies": ",".join(policies), "scale": args.scale,
                           "windows": args.windows or "all", "n_estimators": args.n_estimators})
        for s, rows in all_rows.items():
            for r in rows:
                p = f"{s}/{r['policy']}"
                mlflow.log_metrics({f"{p}/cost_usd": r["cost_usd"], f"{p}/mean_accuracy": r["mean_accuracy"],
                                    f"{p}/retrains": r["retrains"], f"{p}/cpu_core_s": r["cpu_core_s"],
                                    f"{p}/wall_s": r["wall_s"]})
            for i, (_, _, met) in enumerate(all_targets[s]):
                mlflow.log_metric(f"{s}/target_{i + 1}_met", float(bool(met)))
            mlflow.log_artifact(str(out / f"headline-{s}.png"))
        mlflow.log_artifact(str(out / "headline.csv"))
    print(f"logged to experiment finops-bench of {uri}")


if __name__ == "__main__":
    main()
