"""The whole loop on any tabular data set: cost-tracked training, a drift gate that
judges harm (and drift while labels lag), budget-limited incremental retraining
on Ray, promotion only when better, and a report of what it all cost and bought.

    python examples/retrain_loop.py                       # the synthetic demo (examples/stream.py)
    python examples/retrain_loop.py --data ../shared/data/rialto.csv.gz --target target \\
        --reference-rows 8000 --window-rows 8000 --windows 9

The data is cut in time order: a reference (what the first champion learns
from), then windows that arrive one by one. Each window is written into
``<root>/incoming/``, scored by the champion in production (prequential
accuracy), checked by the gate on the policy's schedule, and any retrain it
asks for is driven to its end before the next window arrives.

It writes ./mlflow.db (the SQLite MLflow store) and ./finops-demo/ (data and
policy; ``--root``). It starts its own local Ray cluster on free ports, with its
own Ray temp dir, and stops exactly that cluster afterwards; ``--ray-address``
uses an existing cluster's Jobs API instead. A cluster that happens to answer
on 127.0.0.1:8265 is never used unless named. Re-running it in the same folder
starts the loop over: the data folder is rewritten and its registered model
recreated; earlier runs stay in mlflow.db.

The policy it writes keeps the project's defaults for the gate and the
trigger; ``--extra-policy`` adds sections (e.g. ``[drift]`` or ``[trigger]``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient
from sklearn.ensemble import RandomForestClassifier

sys.path.insert(0, str(Path(__file__).parent))
import mlflow_finops  # noqa: E402
from mlflow_finops.frames import as_frame, read_frame  # noqa: E402
from mlflow_finops.money import format_usd  # noqa: E402
from mlflow_finops.names import TAG_MODEL, tag  # noqa: E402
from mlflow_finops.scoring import score  # noqa: E402
from stream import DRIFT_POINTS, TARGET, cut, synthetic  # noqa: E402

MODEL = "churn"
REGISTERED = "churn-demo"
EXPERIMENT = "finops-demo"  # experiments <EXPERIMENT>/training and <EXPERIMENT>/monitoring
BIN = Path(sys.executable).parent
N_ESTIMATORS = 60  # the champion: RandomForestClassifier(N_ESTIMATORS, random_state=0, n_jobs=2)
REFERENCE_ROWS = 20_000  # the synthetic demo: window 0, what the champion is trained on
WINDOW_ROWS = 20_000
WINDOWS = 8

Frame = Union[pd.DataFrame, str, os.PathLike]


def new_model(n_estimators: int = N_ESTIMATORS) -> RandomForestClassifier:
    """The default champion (also what a from-scratch retrain fits)."""
    return RandomForestClassifier(n_estimators=n_estimators, random_state=0, n_jobs=2)


def policy_text(*, model: str, registered: str, experiment: str, target: str, features: Sequence[str],
                drop: Sequence[str], ray_address: str | None, extra: str = "") -> str:
    """The loop's finops.toml: the project's defaults for the gate and the trigger, plus ``extra``.

    Without ``ray_address`` the policy names no Ray cluster (for uses that submit no retrain job).
    """
    q = json.dumps  # a JSON string or list of strings is a TOML one
    text = f"""\
# finops.toml written by examples/retrain_loop.py (data only; see README.md for every key).
# No [drift] or [trigger] section: the project's defaults decide when to retrain.
[tags]
team = "growth"
cost_center = "cc-demo"

[models.{q(model)}]
reference = "reference.parquet"
current = "incoming/*.parquet"
target = {q(target)}
features = {q(list(features))}
drop = {q(list(drop))}
schedule = "*/15 * * * *"          # cron: how `mlflow-finops schedule` would run it
experiment = {q(experiment + "/monitoring")}
registered_model = {q(registered)}

[retrain]
{"ray_address = " + q(ray_address) if ray_address else "# no Ray cluster: nothing here submits a retrain job"}
metric = "accuracy"
margin = 0.0                       # promote only when strictly better on the newest slice
sample_interval_s = 1.0
poll_s = 1.0
warm_start_step = 20               # incremental: grow the forest by 20 trees per step
warm_start_steps = 2

[windows]
min_free_cpus = 1                  # opportunistic: only when the Ray cluster has a free CPU

[budgets.{q(model + "-monthly")}]
amount_usd = 0.05
per_job_usd = 0.01
period = "month"
priority = "standard"
models = [{q(model)}]
"""
    if extra.strip():
        text += "\n# --- extra policy\n" + extra.strip() + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # e.g. the extra text repeats a section written above
        raise ValueError(f"the policy with the extra text is not valid TOML ({exc}); add keys in sections "
                         f"this loop does not write, e.g. [drift], [trigger], [models.{model}.retrain]") from None
    return text


@contextlib.contextmanager
def ray_cluster(address: str | None = None, num_cpus: int = 2,
                echo: Callable[[str], None] = print) -> Iterator[str]:
    """The Ray Jobs API the retrains go to: ``address`` as given, else a cluster of our own.

    Ours listens on free ports (never a cluster of someone else that answers on the
    default port) and has its own Ray temp dir: a job's driver connects to the
    cluster started last in its temp dir, which under the shared /tmp/ray can be
    another one. While it runs, ``$RAY_ADDRESS`` is its GCS address: this process joins it
    as a driver for the warm retrain actor. Only the cluster started here is stopped afterwards.
    """
    if address:
        echo(f"Ray: the cluster at {address} (given)")
        yield address
        return
    from mlflow_finops.ray_cluster import free_ports, start_local_cluster, stop_local_cluster

    tmp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    gcs_port, dashboard_port = free_ports(2)
    echo(f"Ray: starting our own local cluster ({num_cpus} CPUs, GCS 127.0.0.1:{gcs_port}, "
         f"Jobs API http://127.0.0.1:{dashboard_port}, temp dir {tmp}) ...")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    os.environ["RAY_TMPDIR"] = tmp  # inherited by `ray start` and so by every process of the cluster
    # as `ray start` got it: 127.0.0.1 stays loopback (else ray.init swaps in this host's address,
    # where a loopback cluster does not listen); read when ray is first imported
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cluster = None
    try:
        cluster = start_local_cluster(num_cpus, port=gcs_port, dashboard_port=dashboard_port)
        # this process joins that cluster as a driver (the warm retrain actor's runner): never "auto"
        os.environ["RAY_ADDRESS"] = cluster.gcs_address
        yield cluster.jobs_url
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if cluster is not None:
            n = stop_local_cluster(gcs_port)
            echo(f"Ray: stopped our cluster (GCS 127.0.0.1:{gcs_port}, {n} processes)")
        shutil.rmtree(tmp, ignore_errors=True)


def log_kwargs(model: Any) -> dict[str, Any]:
    """How to log ``model``: skops with exactly the types it holds trusted, when skops is there."""
    try:
        import skops.io as sio
    except ImportError:
        return {}
    return {"skops_trusted_types": sio.get_untrusted_types(data=sio.dumps(model))}


def log_champion(model: Any, registered: str) -> str:
    """Log and register ``model`` in the active run and make it ``@champion``; its version."""
    info = mlflow.sklearn.log_model(model, name="model", registered_model_name=registered, **log_kwargs(model))
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(registered, "champion", version)
    return version


def train_champion(policy: Any, reference: pd.DataFrame, *, target: str, features: Sequence[str],
                   model_factory: Callable[[], Any], model: str, registered: str, experiment: str) -> None:
    """The first champion, fitted on the reference (features only), registered as ``@champion``.

    Its version carries its validation score (``finops.<metric>``: fitted without the newest
    ``holdout_fraction`` of the reference, scored on those rows), the baseline the gate
    measures its loss against, as a retrained version carries its held-out score.
    """
    client = MlflowClient()
    supervisor = mlflow_finops.RetrainSupervisor(policy)
    for run in supervisor.pending(model):  # requests left by an earlier run of the loop
        supervisor.cancel(run.info.run_id, "the loop starts over")
    if client.search_registered_models(f"name = '{registered}'"):
        client.delete_registered_model(registered)  # the loop starts over: no duplicate models
    mlflow.set_experiment(experiment + "/training")
    metric = policy.retrain.metric
    with mlflow.start_run(run_name="champion-v1", tags={TAG_MODEL: model}):
        X, y = reference[list(features)], reference[target]
        # validated as a retrain validates its challenger: fitted without the newest rows, scored on them
        n_hold = max(1, int(len(reference) * policy.retrain.holdout_fraction))
        validated = score(model_factory().fit(X.iloc[:-n_hold], y.iloc[:-n_hold]),
                          X.iloc[-n_hold:], y.iloc[-n_hold:], metric)
        est = model_factory().fit(X, y)  # the champion learns every row of the reference
        mlflow.log_metric(f"validation_{metric}", validated)
        version = log_champion(est, registered)
        # its score when promoted: the gate measures the champion's loss on new data against it
        client.set_model_version_tag(registered, version, tag(metric), f"{validated:.6f}")


class ChampionScorer:
    """Accuracy of the model in production (``@champion``) on a window, from the model's features.

    The model is loaded again only when the alias has moved.
    """

    def __init__(self, registered: str, features: Sequence[str], target: str) -> None:
        self.registered, self.features, self.target = registered, list(features), target
        self._version: str | None = None
        self._model: Any = None

    @property
    def version(self) -> str:
        return str(MlflowClient().get_model_version_by_alias(self.registered, "champion").version)

    def __call__(self, df: pd.DataFrame) -> float:
        version = self.version
        if version != self._version:
            self._model = mlflow.sklearn.load_model(f"models:/{self.registered}/{version}")
            self._version = version
        return float((self._model.predict(df[self.features]) == df[self.target]).mean())


def prepare(root: Path, text: str) -> Any:
    """The loop's folder: an empty incoming/, the policy ``text`` written and in force; returns the policy."""
    shutil.rmtree(root / "incoming", ignore_errors=True)
    shutil.rmtree(root / "references", ignore_errors=True)  # what earlier promotions learned from
    (root / "incoming").mkdir(parents=True)
    (root / "finops.toml").write_text(text)
    os.environ["MLFLOW_FINOPS_POLICY"] = str(root / "finops.toml")
    os.environ.setdefault("MLFLOW_FINOPS_SETTLE_S", "0.01")  # each window is written whole before its check
    return mlflow_finops.load_policy(root / "finops.toml")


def resolve_features(reference: pd.DataFrame, target: str, features: Sequence[str] | None,
                     drop: Sequence[str]) -> list[str]:
    """The columns the model learns from: ``features``, else every column but the target and ``drop``."""
    cols = list(features) if features else [c for c in reference.columns if c != target and c not in drop]
    missing = [c for c in [target, *cols] if c not in reference.columns]
    if missing:
        raise ValueError(f"the reference has no column(s) {', '.join(map(repr, missing))}")
    return cols


@dataclass
class LoopResult:
    """What the loop did, window by window (windows 1..N)."""

    started: datetime
    features: list[str] = field(default_factory=list)
    ray: str = ""  # the Jobs API the retrains went to
    accuracy: list[float] = field(default_factory=list)  # the champion in production, on the window, before any retrain
    decisions: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # the gate's reason per window
    triggers: list[str] = field(default_factory=list)  # the retrain trigger's verdict on a retrain signal, or ""
    retrains: list[list[dict]] = field(default_factory=list)  # per window: the retrain outcomes


def run_loop(
    root: Path,
    reference: Frame | None = None,
    windows: Sequence[Frame] | None = None,
    *,
    target: str = TARGET,
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    model_factory: Callable[[], Any] = new_model,
    model: str = MODEL,
    registered: str = REGISTERED,
    experiment: str = EXPERIMENT,
    extra_policy: str = "",
    ray_address: str | None = None,
    drift_points: Sequence[int] = (),
    echo: Callable[[str], None] = print,
) -> LoopResult:
    """The whole loop in ``root`` (data and policy) on the current tracking URI.

    ``reference`` and ``windows`` (frames or CSV/Parquet paths, in time order) default to the
    synthetic demo stream (examples/stream.py: 20,000-row reference, 8 windows of 20,000).
    The model learns from ``features`` (default: every column but ``target`` and ``drop``);
    ``model_factory()`` makes the first champion. Retrains go to ``ray_address`` (a Jobs API
    URL), else to a local cluster started here for the loop and stopped after it.
    """
    if reference is None and windows is None:
        reference, windows = synthetic(WINDOWS, WINDOW_ROWS, REFERENCE_ROWS)
        drift_points = drift_points or DRIFT_POINTS
    if reference is None or windows is None:
        raise ValueError("give both the reference and the windows, or neither (the synthetic demo)")
    ref = as_frame(reference, "reference")
    cols = resolve_features(ref, target, features, drop)
    started = datetime.now(timezone.utc)
    result = LoopResult(started, cols)

    with ray_cluster(ray_address, echo=echo) as jobs:
        result.ray = jobs
        policy = prepare(root, policy_text(model=model, registered=registered, experiment=experiment, target=target,
                                           features=cols, drop=drop, ray_address=jobs, extra=extra_policy))
        ref.to_parquet(root / "reference.parquet")
        mlflow_finops.autolog(interval_s=1.0)  # every run below, training included, knows its cost
        echo(f"training the champion on the reference ({len(ref):,} rows, {len(cols)} features) ...")
        train_champion(policy, ref, target=target, features=cols, model_factory=model_factory, model=model,
                       registered=registered, experiment=experiment)
        scorer = ChampionScorer(registered, cols, target)
        echo(f"\n{'window':>6}  {'decision':<18} {'champion acc':>12}  what happened")
        gates: dict[str, Any] = {}  # the drift gates, fitted once and kept from window to window
        for w, frame in enumerate(windows, start=1):
            df = as_frame(frame, f"window {w}")
            df.to_parquet(root / "incoming" / f"window-{w:02d}.parquet")
            acc = scorer(df)  # how the model in production does on the new window, before any retrain on it
            latest: dict[str, Any] = {}  # per request, its last outcome

            def on_retrain(r: Any) -> None:
                latest[r.run_id] = r

            outcomes = mlflow_finops.run_schedule(policy, once=True, on_retrain=on_retrain, gates=gates)
            # The schedule never waits for a Ray job (it submits, then returns): the loop
            # supervises this window's retrains to their end before the next window arrives.
            for r in mlflow_finops.RetrainSupervisor(policy).run_pending(model, wait=True):
                on_retrain(r)
            events = [f"retrain {r.state} ({format_usd(r.cost_usd or 0)}): {r.reason}" for r in latest.values()]
            out = outcomes[0] if outcomes else None
            decision = (out.decision.decision if out.decision else out.status) if out else "no check"
            result.accuracy.append(acc)
            result.decisions.append(str(decision))
            result.reasons.append(out.decision.reason if out and out.decision else "")
            trigger = getattr(out, "trigger", None)
            result.triggers.append(f"{'retrain' if trigger.retrain else 'skip'}: {trigger.reason}" if trigger else "")
            result.retrains.append([{"state": str(r.state), "cost_usd": r.cost_usd, "ray_job_id": r.ray_job_id,
                                     "run_id": r.run_id, "model_version": r.model_version} for r in latest.values()])
            marker = "  <- drift point" if w in drift_points else ""
            echo(f"{w:>6}  {decision!s:<18} {acc:>12.3f}  {'; '.join(events) or '-'}{marker}")
            if result.reasons[-1]:
                echo(f"{'':>8}gate: {result.reasons[-1]}")
            if result.triggers[-1]:
                echo(f"{'':>8}trigger: {result.triggers[-1]}")
            time.sleep(0.01)
    return result


def load_factory(spec: str) -> Callable[[], Any]:
    """``module:callable`` (e.g. ``sklearn.linear_model:SGDClassifier``): called with no arguments."""
    module, _, name = spec.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected module:callable")
    return getattr(importlib.import_module(module), name)


def _names(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a CSV or Parquet file in time order (default: the synthetic stream)")
    ap.add_argument("--target", default=TARGET, help=f"the label column (default {TARGET!r})")
    ap.add_argument("--features", help="comma-separated columns to learn from (default: all but target and --drop)")
    ap.add_argument("--drop", help="comma-separated columns never learned from nor judged (ids, dates)")
    ap.add_argument("--reference-rows", type=int, default=REFERENCE_ROWS, help="rows of the reference (first cut)")
    ap.add_argument("--window-rows", "--rows", type=int, default=WINDOW_ROWS, help="rows per window")
    ap.add_argument("--windows", type=int, help=f"how many windows (default: {WINDOWS}; with --data: all that fit)")
    ap.add_argument("--model-factory", type=load_factory, default=new_model,
                    help="module:callable making the first champion (default: RandomForestClassifier(60))")
    ap.add_argument("--model-name", default=MODEL, help="the model's name in the policy ([models.NAME])")
    ap.add_argument("--registered-model", default=REGISTERED)
    ap.add_argument("--experiment", default=EXPERIMENT, help="prefix of the training and monitoring experiments")
    ap.add_argument("--extra-policy", default="", help="TOML added to the policy, or @FILE")
    ap.add_argument("--ray-address", help="an existing cluster's Jobs API (default: start our own); for the warm "
                    "actor runner set $RAY_ADDRESS to that cluster's GCS address too")
    ap.add_argument("--root", default="finops-demo", help="the loop's data and policy folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    extra = Path(args.extra_policy[1:]).read_text() if args.extra_policy.startswith("@") else args.extra_policy

    drift_points: Sequence[int] = ()
    if args.data:
        reference, windows = cut(read_frame(args.data), args.reference_rows, args.window_rows, args.windows)
    else:
        reference, windows = synthetic(args.windows or WINDOWS, args.window_rows, args.reference_rows)
        drift_points = DRIFT_POINTS
    mlflow.set_tracking_uri(mlflow.get_tracking_uri())  # default: sqlite:///mlflow.db here
    result = run_loop(Path(args.root).absolute(), reference, windows, target=args.target,
                      features=_names(args.features) or None, drop=_names(args.drop),
                      model_factory=args.model_factory, model=args.model_name, registered=args.registered_model,
                      experiment=args.experiment, extra_policy=extra, ray_address=args.ray_address,
                      drift_points=drift_points, echo=lambda line: print(line, flush=True))
    started = result.started
    mean = sum(result.accuracy) / len(result.accuracy)
    print(f"\nmean prequential accuracy over {len(result.accuracy)} windows: {mean:.4f}")

    print("\nWhat it cost and what it bought:")
    client = MlflowClient()
    exp = client.get_experiment_by_name(f"finops-retrains/{args.model_name}")
    for r in client.search_runs([exp.experiment_id], f"attributes.start_time >= {int(started.timestamp() * 1000)}",
                                order_by=["attributes.start_time ASC"]) if exp else []:
        m, t = r.data.metrics, r.data.tags
        gain = m.get("eval/challenger_accuracy", float("nan")) - m.get("eval/champion_accuracy", float("nan"))
        print(f"  retrain {r.info.run_id[:8]}  {t.get('finops.retrain_state'):<13} "
              f"cost {format_usd(m.get('finops/cost_usd', 0))}  accuracy {gain:+.3f} on the newest slice "
              f"(path {t.get('finops.update_path', '-')}, after drift check {t.get('finops.drift_run_id', '-')[:8]})")
    subprocess.run([str(BIN / "mlflow-finops"), "report", "--since", started.isoformat(timespec="seconds"),
                    "--by", "experiment"], check=False)
    print("\nLook at it in the MLflow UI:\n"
          f"  {BIN / 'mlflow'} ui --backend-store-uri {mlflow.get_tracking_uri()}\n"
          f"  then open http://127.0.0.1:5000 (experiments {args.experiment}/*, finops-retrains/{args.model_name}; "
          f"model {args.registered_model})")


if __name__ == "__main__":
    main()
