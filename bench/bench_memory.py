"""What a retrain should remember: everything learned, a sliding window, or a choice per retrain.

Offline (fits and predictions only, no MLflow, no Ray, no tracking), on the headline's streams
cut as ``bench_headline.py`` cuts them: the example's forest (``RandomForestClassifier(60)``)
refitted after every window on

- **all**: everything seen (as the headline's policy (a));
- **last K**: the last K windows only (the reference counts as one);
- **cap N**: the window plus a uniform sample (seeded) of at most N of the rows before it: every
  regime kept, the fit's size bounded;
- **adaptive**: what ``[retrain] memory = "adaptive"`` does: the champion's rows + the window,
  or the window alone, whichever predicts the window's newest 20% better (fitted without them),
  promoted when better than the champion there, then fitted again with them. "all (judged)"
  is the same without the choice; "one fit" promotes the judged fit as it is (no second fit: the
  held-out rows are learned by the next retrain).

Prints, per stream and memory, the mean prequential accuracy (each window scored by the model
before it learns the window), the CPU seconds of the fits, and, for the judged ones, what each
retrain kept.

    .venv/bin/python bench/bench_memory.py --scale 0.5
    .venv/bin/python bench/bench_memory.py --scale 0.5 --windows all,3 --caps 16000,12000,8000
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_headline as bh  # noqa: E402  (its streams, cut the same way)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _fit(rows: pd.DataFrame, features: list[str], target: str, n_estimators: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators, random_state=0, n_jobs=2).fit(rows[features], rows[target])


def sliding(chunks: list[pd.DataFrame], features: list[str], target: str, k: int | None, n: int) -> list[float]:
    """Refit after every window on the last ``k`` chunks (None: all); accuracy on each window before."""
    model, accs = _fit(chunks[0], features, target, n), []
    for i, w in enumerate(chunks[1:], start=1):
        accs.append(float((model.predict(w[features]) == w[target]).mean()))
        model = _fit(pd.concat(chunks[: i + 1] if k is None else chunks[max(0, i + 1 - k): i + 1]), features, target, n)
    return accs


def capped(chunks: list[pd.DataFrame], features: list[str], target: str, cap: int, n: int) -> list[float]:
    """Refit after every window on it plus at most ``cap`` older rows drawn uniformly; accuracy on each window before."""
    model, accs = _fit(chunks[0], features, target, n), []
    for i, w in enumerate(chunks[1:], start=1):
        accs.append(float((model.predict(w[features]) == w[target]).mean()))
        old = pd.concat(chunks[:i])
        if len(old) > cap:
            old = old.iloc[np.sort(np.random.default_rng(i).choice(len(old), cap, replace=False))]
        model = _fit(pd.concat([old, w]), features, target, n)
    return accs


def judged(chunks: list[pd.DataFrame], features: list[str], target: str, adaptive: bool,
           n: int, second_fit: bool = True) -> tuple[list[float], list[str]]:
    """The retrain's own rule, offline: judged on the newest 20%, promoted when better, refitted with them
    (``second_fit``; else the judged fit is promoted and the held-out rows wait for the next retrain)."""
    learned = chunks[0]
    model, accs, kept = _fit(learned, features, target, n), [], []
    for w in chunks[1:]:
        accs.append(float((model.predict(w[features]) == w[target]).mean()))
        n_hold = max(1, int(len(w) * 0.2))
        train, hold = w.iloc[:-n_hold], w.iloc[-n_hold:]
        bases = {"all": learned, **({"new": learned.iloc[0:0]} if adaptive else {})}
        fits = {k: _fit(pd.concat([b, train]), features, target, n) for k, b in bases.items()}
        scores = {k: float((f.predict(hold[features]) == hold[target]).mean()) for k, f in fits.items()}
        best = "new" if adaptive and scores["new"] > scores["all"] else "all"
        if scores[best] > float((model.predict(hold[features]) == hold[target]).mean()):
            learned = pd.concat([bases[best], w])
            model = _fit(learned, features, target, n) if second_fit else fits[best]
            kept.append(best)
        else:
            kept.append("-")
    return accs, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default=",".join(bh.STREAMS), help="comma-separated, of " + ", ".join(bh.STREAMS))
    ap.add_argument("--scale", type=float, default=0.5, help="as bench_headline.py's (default 0.5, its README run)")
    ap.add_argument("--windows", default="all,4,3,2", help="sliding memories to try: all and/or numbers of windows")
    ap.add_argument("--caps", default="16000,8000", help="capped memories to try: at most N older rows ('' for none)")
    ap.add_argument("--n-estimators", type=int, default=60)
    args = ap.parse_args()
    for name in args.streams.split(","):
        stream = bh.STREAMS[name].scaled(args.scale, None)
        reference, windows = stream.load()
        features = [c for c in reference.columns if c != stream.target]
        chunks = [reference, *windows]
        print(f"\n{name}: {stream.describe()}")
        print(f"  {'memory':<16} {'mean acc':>8} {'fit CPU-s':>9}  per window / kept")
        for w in args.windows.split(","):
            c0 = _cpu()
            accs = sliding(chunks, features, stream.target, None if w == "all" else int(w), args.n_estimators)
            label = "all" if w == "all" else f"last {w}"
            print(f"  {label:<16} {np.mean(accs):8.4f} {_cpu() - c0:9.1f}  {' '.join(f'{a:.3f}' for a in accs)}",
                  flush=True)
        for cap in filter(None, args.caps.split(",")):
            c0 = _cpu()
            accs = capped(chunks, features, stream.target, int(cap), args.n_estimators)
            print(f"  {'cap ' + cap:<16} {np.mean(accs):8.4f} {_cpu() - c0:9.1f}  {' '.join(f'{a:.3f}' for a in accs)}",
                  flush=True)
        for adaptive, second in ((False, True), (True, True), (True, False)):
            c0 = _cpu()
            accs, kept = judged(chunks, features, stream.target, adaptive, args.n_estimators, second)
            label = ("adaptive" if adaptive else "all (judged)") + ("" if second else ", one fit")
            print(f"  {label:<16} {np.mean(accs):8.4f} {_cpu() - c0:9.1f}  {' '.join(f'{a:.3f}' for a in accs)}"
                  f"  | {' '.join(kept)}", flush=True)


if __name__ == "__main__":
    main()
