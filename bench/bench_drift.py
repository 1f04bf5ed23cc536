"""Drift gate benchmark: speed vs Evidently's DataDriftPreset, and decision agreement.

    python bench/bench_drift.py                  # both parts (~8 min on 2 cores)
    python bench/bench_drift.py --part speed --sizes 100000
    python bench/bench_drift.py --part speed --sizes 1000000 --data parquet --who gate
    python bench/bench_drift.py --part agreement

Speed: the gate's full check (Evidently on the planned samples, verdicts,
MLflow run with metrics, tags and the HTML report, on a SQLite store) vs
``Report([DataDriftPreset()]).run`` on the full frames, n x 20 numeric
columns. Each side runs in its own subprocess so peak RSS (``VmHWM``, the
data itself included) is not polluted by the other. ``--data parquet``: the
frames a user reads with ``pd.read_parquet`` from files like the cold
command's (n x 20: 18 float, 2 string, and an int label the check leaves out;
6 float columns shifted by 0.3 sd), written by this process beforehand, so the
figure holds what reading them leaves behind too. ``--who gate``: the gate's
side alone (the preset takes ~140 s at 1M rows).

Agreement: generated scenarios where the gate (sampling as configured) and a
full-data DataDriftPreset (same methods, thresholds and drift_share) must
reach the same retrain decision.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

N_COLS = 20


# ------------------------------------------------------------------ speed
def _numeric(n: int, seed: int, shifted: int) -> pd.DataFrame:
    """n x 20 float64 in one block (no consolidation copy); the first ``shifted`` columns move by 0.2 sd."""
    arr = np.random.default_rng(seed).standard_normal((n, N_COLS))
    arr[:, :shifted] += 0.2
    return pd.DataFrame(arr, columns=[f"x{i}" for i in range(N_COLS)], copy=False)


def _mixed(n: int, seed: int, shift: float) -> pd.DataFrame:
    """n x 20 (18 float, 2 string) and an int label; the first 6 floats moved by ``shift`` sd."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({f"f{i}": rng.normal(shift if i < 6 else 0.0, 1.0, n) for i in range(18)})
    df["plan"] = rng.choice(["a", "b", "c"], n)
    df["region"] = rng.choice(list("nsew"), n)
    df["label"] = (df["f0"] - df["f7"] + rng.normal(0, 0.5, n) > shift).astype(int)
    return df


def write_parquet(n: int, folder: str) -> None:
    """The two frames of ``--data parquet``, as files the measured process reads."""
    _mixed(n, 1, 0.0).to_parquet(os.path.join(folder, "ref.parquet"))
    _mixed(n, 2, 0.3).to_parquet(os.path.join(folder, "cur.parquet"))


def _rss_mb() -> float:
    """Peak RSS of this program (VmHWM): unlike ru_maxrss, it is not inherited from the forking parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover - not Linux


def child(kind: str, n: int, folder: str | None = None) -> None:
    """One measurement in a fresh process; prints one JSON line.

    ``folder``: read the frames from its Parquet files (``--data parquet``) instead of generating them.
    """
    logging.disable(logging.WARNING)
    drop: list[str] = []
    if folder:
        ref = pd.read_parquet(os.path.join(folder, "ref.parquet"))
        cur = pd.read_parquet(os.path.join(folder, "cur.parquet"))
        drop = ["label"]
    else:
        ref, cur = _numeric(n, 1, 0), _numeric(n, 2, 3)
    out: dict[str, float | str] = {"kind": kind, "rows": n, "rss_data_mb": _rss_mb()}
    if kind == "gate":
        import mlflow

        tmp = tempfile.mkdtemp(prefix="bench-drift-")
        os.chdir(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        from mlflow_finops import DriftGate

        t = time.perf_counter()
        gate = DriftGate(ref, model="bench", progress=False, drop=drop)
        out["setup_s"] = time.perf_counter() - t
        out["rss_before_mb"] = _rss_mb()
        t = time.perf_counter()
        d = gate.check(cur)
        out["seconds"] = time.perf_counter() - t
        out["decide_s"] = d.elapsed_s
        out["decision"] = d.decision
        out["drifted"] = len(d.drifted_columns)
        out["sampled_rows"] = d.sampled_rows_current
    else:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        ref, cur = ref.drop(columns=drop), cur.drop(columns=drop)
        num = [c for c in ref.columns if ref[c].dtype.kind == "f"]
        dd = DataDefinition(numerical_columns=num, categorical_columns=[c for c in ref.columns if c not in num])
        out["rss_before_mb"] = _rss_mb()
        t = time.perf_counter()
        snap = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd)
        )
        out["seconds"] = time.perf_counter() - t
        share = next(m["value"]["share"] for m in snap.dict()["metrics"] if "DriftedColumnsCount" in m["metric_name"])
        out["decision"] = "retrain" if share >= 0.5 else "no_drift"
        out["drifted"] = round(share * len(ref.columns))
    out["peak_rss_mb"] = _rss_mb()
    print(json.dumps(out), flush=True)


def run_child(kind: str, n: int, folder: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "_child", kind, str(n), *([folder] if folder else [])]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{kind} {n} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def speed(sizes: list[int], data: str = "floats", who: str = "both") -> None:
    if data == "parquet":
        print(f"## speed: n x {N_COLS} (18 float, 2 string) + label, read with pd.read_parquet; "
              "6 columns shifted by 0.3 sd (each side in its own process)")
    else:
        print(f"## speed: n x {N_COLS} numeric, 3 columns shifted by 0.2 sd (each side in its own process)")
    print(f"{'rows':>9} {'who':<16} {'seconds':>8} {'peak RSS MB':>12} {'data MB':>8} {'decision':>9} {'drifted':>7}")
    kinds = ["gate", "preset"] if who == "both" else [who]
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-drift-data-") as folder:
            if data == "parquet":
                write_parquet(n, folder)
            res = {k: run_child(k, n, folder if data == "parquet" else None) for k in kinds}
        for kind, label in (("gate", "DriftGate.check"), ("preset", "DataDriftPreset")):
            if kind in res:
                r = res[kind]
                print(f"{n:>9,} {label:<16} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f} {r['rss_data_mb']:>8.0f} "
                      f"{r['decision']:>9} {r['drifted']:>7}")
        if "gate" in res:
            gate = res["gate"]
            print(f"{'':>9} gate decided in {gate['decide_s']:.2f} s (rest: MLflow run + HTML); "
                  f"sampled {gate['sampled_rows']:,} rows/side; setup {gate['setup_s']:.2f} s; "
                  f"peak RSS before the check {gate['rss_before_mb']:.0f} MB"
                  + (f"; speed-up x{res['preset']['seconds'] / gate['seconds']:.1f}" if "preset" in res else ""))


# ------------------------------------------------------------------ agreement
@dataclass
class Scenario:
    name: str
    make: Callable[[np.random.Generator], tuple[pd.DataFrame, pd.DataFrame]]
    drift_share: float = 0.5


def _frame(rng: np.random.Generator, n: int, k: int, mean=None, sd=None, cats: dict | None = None) -> pd.DataFrame:
    mean = np.zeros(k) if mean is None else np.broadcast_to(mean, (k,))
    sd = np.ones(k) if sd is None else np.broadcast_to(sd, (k,))
    df = pd.DataFrame(rng.standard_normal((n, k)) * sd + mean, columns=[f"x{i}" for i in range(k)])
    for name, (levels, p) in (cats or {}).items():
        df[name] = rng.choice(levels, n, p=p)
    return df


ABC = (["a", "b", "c"], [0.5, 0.3, 0.2])


def scenarios() -> list[Scenario]:
    S, L, XL = 600, 150_000, 300_000

    def pair(n_ref, n_cur, k, cur_kw=None, ref_kw=None, cats=True):
        def make(rng):
            c = {"plan": ABC} if cats else None
            ref = _frame(rng, n_ref, k, cats=c, **(ref_kw or {}))
            ckw = dict(cur_kw or {})
            cc = ckw.pop("cats", c)
            return ref, _frame(rng, n_cur, k, cats=cc, **ckw)
        return make

    one_of_20 = np.array([0.6] + [0.0] * 19)
    half = np.array([0.3] * 4 + [0.0] * 4)
    new_level = {"plan": (["a", "b", "c", "d"], [0.4, 0.25, 0.15, 0.2])}
    return [
        Scenario("no drift, small (p-value tests)", pair(S, S, 8)),
        Scenario("no drift, large (sampled)", pair(L, L, 8)),
        Scenario("mean shift 0.5 sd, small", pair(S, S, 8, {"mean": 0.5})),
        Scenario("mean shift 0.5 sd, large", pair(L, L, 8, {"mean": 0.5})),
        Scenario("mean shift 0.3 sd in 4 of 9 cols, large", pair(L, L, 8, {"mean": half})),
        Scenario("mean shift 0.3 sd in 4 of 9 cols, share 0.4", pair(L, L, 8, {"mean": half}), 0.4),
        Scenario("variance x1.5, large", pair(L, L, 8, {"sd": 1.5})),
        Scenario("variance x1.3, small", pair(S, S, 8, {"sd": 1.3})),
        Scenario("new categorical level, small, share 0.1", pair(S, S, 8, {"cats": new_level}), 0.1),
        Scenario("new categorical level, large, share 0.1", pair(L, L, 8, {"cats": new_level}), 0.1),
        Scenario("drift in 1 of 20 cols, share 0.5", pair(L // 2, L // 2, 20, {"mean": one_of_20}, cats=False)),
        Scenario("drift in 1 of 20 cols, share 0.05", pair(L // 2, L // 2, 20, {"mean": one_of_20}, cats=False), 0.05),
        Scenario("near threshold: shift 0.09 sd (W=0.09)", pair(XL, XL, 6, {"mean": 0.09}, cats=False)),
        Scenario("on threshold: shift 0.10 sd (W=0.10)", pair(XL, XL, 6, {"mean": 0.10}, cats=False)),
        Scenario("near threshold: shift 0.11 sd (W=0.11)", pair(XL, XL, 6, {"mean": 0.11}, cats=False)),
        Scenario("small reference, large current, no drift", pair(800, L, 8)),
        Scenario("small reference, large current, shift 0.3", pair(800, L, 8, {"mean": 0.3})),
        Scenario("category frequencies change, large, share 0.1",
                 pair(L, L, 8, {"cats": {"plan": (["a", "b", "c"], [0.2, 0.3, 0.5])}}), 0.1),
        Scenario("heavy tails: scale x1.2 on t(3), large", _student(L)),
        Scenario("low-cardinality ints (JS on numeric), large, share 0.2", _ints(L), 0.2),
        Scenario("NaNs sprinkled, no drift, large", _nans(L, 0.0)),
        Scenario("NaNs sprinkled, shift 0.4, large", _nans(L, 0.4)),
        Scenario("large vs small: 150k ref, 2k current, shift 0.25", pair(L, 2000, 8, {"mean": 0.25})),
    ]


def _student(n: int):
    def make(rng):
        cols = [f"x{i}" for i in range(6)]
        ref = pd.DataFrame(rng.standard_t(3, (n, 6)), columns=cols)
        return ref, pd.DataFrame(rng.standard_t(3, (n, 6)) * 1.2, columns=cols)
    return make


def _ints(n: int):
    def make(rng):
        ref = _frame(rng, n, 4)
        cur = _frame(rng, n, 4)
        ref["stars"] = rng.choice([1, 2, 3, 4, 5], n, p=[0.1, 0.2, 0.3, 0.25, 0.15]).astype(float)
        cur["stars"] = rng.choice([1, 2, 3, 4, 5], n, p=[0.3, 0.3, 0.2, 0.1, 0.1]).astype(float)
        return ref, cur
    return make


def _nans(n: int, shift: float):
    def make(rng):
        ref, cur = _frame(rng, n, 8, cats={"plan": ABC}), _frame(rng, n, 8, mean=shift, cats={"plan": ABC})
        for df in (ref, cur):
            for c in ("x0", "x3"):
                df.loc[rng.random(n) < 0.2, c] = np.nan
        return ref, cur
    return make


def agreement() -> int:
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.datasets import infer_column_type
    from evidently.legacy.core import ColumnType
    from evidently.presets import DataDriftPreset

    from mlflow_finops import DriftGate

    logging.disable(logging.WARNING)
    rows = []
    agree = col_agree = col_total = 0
    print("## agreement: gate (sampled, sample_rows=50,000) vs full-data DataDriftPreset, same thresholds")
    print(f"{'#':>2} {'scenario':<55} {'rows ref/cur':>15} {'gate':>9} {'preset':>9} {'cols':>7} "
          f"{'refined':>7} {'gate s':>6} {'preset s':>8}")
    for i, sc in enumerate(scenarios(), 1):
        ref, cur = sc.make(np.random.default_rng(1000 + i))
        t = time.perf_counter()
        d = DriftGate(ref, model="agree", log_to_mlflow=False, progress=False, drift_share=sc.drift_share,
                      min_rows=100).check(cur)
        gate_s = time.perf_counter() - t
        num = [c for c in ref.columns if infer_column_type(ref[c]) == ColumnType.Numerical]
        dd = DataDefinition(numerical_columns=num, categorical_columns=[c for c in ref.columns if c not in num])
        t = time.perf_counter()
        snap = Report([DataDriftPreset(drift_share=sc.drift_share)], include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=dd), Dataset.from_pandas(ref, data_definition=dd)
        )
        preset_s = time.perf_counter() - t
        out = snap.dict()
        share = next(m["value"]["share"] for m in out["metrics"] if "DriftedColumnsCount" in m["metric_name"])
        preset_decision = "retrain" if share >= sc.drift_share else "no_drift"
        status = {t_["metric_config"]["params"]["column"]: t_["status"] == "FAIL" for t_ in out["tests"]
                  if t_["metric_config"]["params"]["type"].endswith("ValueDrift")}
        same_cols = sum(status[c] == r.drifted for c, r in d.columns.items())
        col_agree += same_cols
        col_total += len(d.columns)
        ok = d.decision == preset_decision
        agree += ok
        refined = sum(r.refined for r in d.columns.values())
        print(f"{i:>2} {sc.name:<55} {len(ref):>7,}/{len(cur):<7,} {d.decision:>9} {preset_decision:>9} "
              f"{same_cols:>3}/{len(d.columns):<3} {refined:>7} {gate_s:>6.1f} {preset_s:>8.1f}"
              f"{'' if ok else '  <-- DISAGREE'}")
        rows.append(ok)
    print(f"agreement: {agree}/{len(rows)} retrain decisions, {col_agree}/{col_total} column verdicts")
    return 0 if agree == len(rows) else 1


def main() -> None:
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # scipy, inside Evidently's chi-square
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "speed", "agreement"], default="all")
    ap.add_argument("--sizes", default="100000,1000000", help="Row counts for the speed part.")
    ap.add_argument("--data", choices=["floats", "parquet"], default="floats",
                    help="Speed part: generated float frames, or frames read with pd.read_parquet (18 float, "
                         "2 string, a label).")
    ap.add_argument("--who", choices=["both", "gate", "preset"], default="both",
                    help="Speed part: which side(s) to run.")
    args = ap.parse_args()
    code = 0
    if args.part in ("all", "agreement"):
        code = agreement()
    if args.part in ("all", "speed"):
        speed([int(s) for s in args.sizes.split(",")], args.data, args.who)
    sys.exit(code)


if __name__ == "__main__":
    main()
