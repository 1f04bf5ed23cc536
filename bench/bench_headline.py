"""Headline benchmark: is harm- and cost-aware retraining worth it, on real drifting data?

Streams, each cut in time order into a reference window (the first champion's
training data) and windows that arrive one by one:

- **synthetic**: ``examples/stream.py`` (drift at windows 3 and 6);
- **rialto**: ``shared/data/rialto.csv.gz`` (82,250 rows, 27 features, 10 classes; daylight and weather);
- **insects**: ``shared/data/insects_gradual.csv.gz`` (24,150 rows, 33 features, 6 classes; temperature).

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
each window before any retrain on it); wall time. Targets per stream: (c) cost
<= 40% of (a); (c) mean accuracy >= (a) - 0.5 pt; (c) >= (b) + 1 pt; (c) no
costlier than (e) at equal or better accuracy.

Prints the tables and the targets, writes ``bench/headline-<stream>.png`` (cost
vs accuracy) and the Headline section of ``bench/README.md``, and logs every
figure, the CSV and the charts to a run of experiment ``finops-bench`` in
``<out>/bench.db``.

    .venv/bin/python bench/bench_headline.py                                     # all streams, all policies
    .venv/bin/python bench/bench_headline.py --streams insects --scale 0.25 --windows 3 --no-readme   # a quick look
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

POLICIES = ("scheduled", "never", "gated", "every", "anchor")
LETTER = dict(zip(POLICIES, "abcde"))
LABELS = {
    "scheduled": "(a) full retrain every window",
    "never": "(b) never retrain",
    "gated": "(c) the loop (gate + trigger, retrains on Ray)",
    "every": "(d) the loop's retrain every window (Ray)",
    "anchor": "(e) full retrain when accuracy drops > 2 pt",
}
COLORS = {"scheduled": "#c44e52", "never": "#8c8c8c", "gated": "#4c72b0", "every": "#55a868", "anchor": "#dd8452"}
ANCHOR_DROP = 0.02  # (e): a drop of more than 2 points below the baseline
SECTION = "## Headline: is retraining worth its cost? (five policies, three streams)"
BEGIN, END = "<!-- headline:begin (written by bench/bench_headline.py) -->", "<!-- headline:end -->"
COST_SHARE_TARGET = 0.40  # (c) <= 40% of (a)
ACC_BELOW_A_POINTS = 0.5  # (c) >= (a) - 0.5 pt
ACC_OVER_B_POINTS = 1.0  # (c) >= (b) + 1 pt


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

    def scaled(self, scale: float, windows: int | None) -> "Stream":
        from dataclasses import replace

        return replace(self, reference_rows=max(200, int(self.reference_rows * scale)),
                       window_rows=max(200, int(self.window_rows * scale)),
                       windows=min(windows or self.windows, self.windows))

    def load(self):
        """(reference, windows) in time order (the synthetic stream and the time-order cut: the demo's data)."""
        sys.path.insert(0, str(REPO / "examples"))
        from stream import DRIFT_POINTS, cut, synthetic

        from mlflow_finops.frames import read_frame

        if self.file is None:
            assert self.drift_points == DRIFT_POINTS
            return synthetic(self.windows, self.window_rows, self.reference_rows)
        return cut(read_frame(DATA / self.file), self.reference_rows, self.window_rows, self.windows)

    def describe(self) -> str:
        return (f"{self.reference_rows:,}-row reference + {self.windows} windows of {self.window_rows:,} rows"
                + (f", drift at windows {' and '.join(map(str, self.drift_points))}" if self.drift_points else ""))


STREAMS = {  # the real streams first
    "rialto": Stream("rialto", "rialto.csv.gz", 8_000, 8_000, 9),
    "insects": Stream("insects", "insects_gradual.csv.gz", 2_400, 2_400, 9),
    "synthetic": Stream("synthetic", None, 5_000, 5_000, 8, target="churned", drift_points=(3, 6)),
}


# ------------------------------------------------------------------ one policy on one stream, in its own process
def _setup_store(folder: Path) -> None:
    import mlflow

    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)  # artifacts next to the store
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)


def run_policy(name: str, stream: Stream, folder: Path, n_estimators: int) -> dict:
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
        out.update(h.gated(root, reference, windows, target=stream.target, model_factory=factory,
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
        retrain = name == "scheduled"
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
        if name in ("scheduled", "anchor"):
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


def targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """(target, figure, met) per target; met None when a policy it needs was not run."""
    by = {r["policy"]: r for r in rows}
    c = by.get("gated")
    out: list[tuple[str, str, bool | None]] = []

    def need(*names: str) -> bool:
        return c is not None and all(n in by for n in names)

    if need("scheduled"):
        a = by["scheduled"]
        share = c["cost_usd"] / a["cost_usd"] if a["cost_usd"] else float("nan")
        out.append(("(c) cost <= 40% of (a)", f"{share:.1%}", share <= COST_SHARE_TARGET))
        gap = (c["mean_accuracy"] - a["mean_accuracy"]) * 100
        out.append(("(c) mean accuracy >= (a) - 0.5 pt", f"{gap:+.2f} pt", gap >= -ACC_BELOW_A_POINTS))
    if need("never"):
        over = (c["mean_accuracy"] - by["never"]["mean_accuracy"]) * 100
        out.append(("(c) mean accuracy >= (b) + 1 pt", f"{over:+.2f} pt", over >= ACC_OVER_B_POINTS))
    if need("anchor"):
        e = by["anchor"]
        d_acc = (c["mean_accuracy"] - e["mean_accuracy"]) * 100
        share = c["cost_usd"] / e["cost_usd"] if e["cost_usd"] else float("nan")
        out.append(("(c) no costlier than (e) at equal or better accuracy",
                    f"cost {share:.0%} of (e), accuracy {d_acc:+.2f} pt", c["cost_usd"] <= e["cost_usd"] and d_acc >= 0))
    return out


def _ok(met: bool | None) -> str:
    return "met" if met else "**missed**"


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
`bench/bench_headline.py`, five policies on each stream, each policy in its own process and fresh
SQLite store, one after the other, all from the same first champion (`RandomForestClassifier(60,
n_jobs=2)` on the stream's reference, as `examples/retrain_loop.py` trains it) and the same
policy file (the example's, `examples/retrain_loop.toml`: prices, tags, budget, `[retrain]` warm start +2 x 20 trees past
`refit_max_rows`, no `[drift]` or `[trigger]` keys, so the project's defaults). The first champion's
version carries its validation score (fitted without the newest 20% of the reference, scored on
them), as a retrained version carries its held-out score. **(a)** a full retrain from scratch on
everything seen after every window, in-process under `autolog()`, registered as the new champion;
**(b)** never; **(c)** the example's loop (`run_schedule` then `drain` per window): the drift gate on every window (the champion's
loss since promotion on the labelled window; drift only while labels lag), the project's retrain
trigger (which also follows a retrain that bought more than the tolerated loss), and retrains on
Ray (the project's default `[retrain] runner`: a warm actor; `auto` update: a full refit while
learned + new rows <= 100,000, as here; default `memory = "adaptive"`: also fitted on the new rows
alone, forgetting the rest, kept when better on the held-out rows), promoted only when better on
the newest held-out rows, then fitted once more with them; **(d)** the same retrain requested after every window
(`request_retrain` + `run_pending(wait=True)`), no gate; **(e)** the classic alarm: a full retrain
like (a) when the champion's accuracy on a window is more than 2 points below its accuracy on the
first window it served. (c) and (d) each start their own 2-CPU Ray cluster on free ports with their
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

{targets_text(all_targets[s.name])}
""")
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
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name = item if item in known else by_letter.get(item)
        if name is None:
            raise SystemExit(f"unknown {what} {item!r}: choose from {', '.join(known)}")
        out.append(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", help=f"comma-separated, of {', '.join(STREAMS)} (default: all)")
    ap.add_argument("--policies", help="comma-separated names or letters a-e (default: all)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stream's row counts (a quick look: 0.25)")
    ap.add_argument("--windows", type=int, help="at most this many windows per stream")
    ap.add_argument("--n-estimators", type=int, default=60, help="the champion's forest size (the example's: 60)")
    ap.add_argument("--out", default=None, help="folder for the stores (default: a temp folder, kept)")
    ap.add_argument("--no-readme", action="store_true", help="don't write bench/README.md and bench/headline-*.png")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the results already in --out (a policy's JSON and store) instead of running it again")
    ap.add_argument("--run-policy", choices=POLICIES, help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--stream", choices=list(STREAMS), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.run_policy:
        stream = STREAMS[args.stream].scaled(args.scale, args.windows)
        res = run_policy(args.run_policy, stream, Path(args.folder), args.n_estimators)
        Path(args.json).write_text(json.dumps(res))
        return

    streams = [STREAMS[s].scaled(args.scale, args.windows) for s in _choose(args.streams, tuple(STREAMS), "stream")]
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
                results[name] = res
                print(f"--- {stream.name}/{name}: kept from {done}", flush=True)
                continue
            shutil.rmtree(folder, ignore_errors=True)
            print(f"\n=== {stream.name} ({stream.describe()}): {LABELS[name]} ===", flush=True)
            cmd = [sys.executable, __file__, "--run-policy", name, "--stream", stream.name, "--folder", str(folder),
                   "--json", str(out / f"{stream.name}-{name}.json"), "--scale", str(args.scale),
                   "--n-estimators", str(args.n_estimators)]
            if args.windows:
                cmd += ["--windows", str(args.windows)]
            t = time.perf_counter()
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                print(f"--- {stream.name}/{name}: FAILED (exit {proc.returncode}); left out", flush=True)
                continue
            res = json.loads(done.read_text())
            res["process_s"] = time.perf_counter() - t  # start-up, the policy, the Ray cluster's start and stop
            done.write_text(json.dumps(res))
            res["costs"] = store_costs(folder)
            results[name] = res
            print(f"--- {stream.name}/{name}: {time.perf_counter() - t:.0f} s, cost ${res['costs']['cost_usd']:.6f}, "
                  f"mean accuracy {sum(res['accuracy']) / len(res['accuracy']):.4f}", flush=True)
        if not results:
            continue
        rows = summarize(results)
        ts = targets(rows)
        all_results[stream.name], all_rows[stream.name], all_targets[stream.name] = results, rows, ts
        print(f"\n### {stream.name}: {stream.describe()}\n\n{table_text(rows)}\n\n{targets_text(ts)}", flush=True)
        for t, fig, met in ts:
            print(f"{stream.name}: {t}: {fig}: {'met' if met else 'missed'}", flush=True)
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
