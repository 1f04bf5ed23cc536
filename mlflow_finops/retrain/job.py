"""The retrain job's own work, run inside a Ray job by ``python -m ray_jobs.retrain``.

Loads ``models:/<registered>@champion``, updates it with the rows of
``[models.NAME].current`` that the champion has not learned (its ledger,
:mod:`.ledger`: files known by content hash, a learned prefix of rows each),
holding out the newest rows, which stay unlearned: ``partial_fit`` where the
final estimator has it, ``warm_start`` growth for ensembles that support it,
else a full refit on the champion's reference + the new rows (or on the new rows
alone, when forgetting the reference predicts the held-out rows better:
``[retrain] memory``). It learns exactly
the policy's feature columns (``features``, or every column but ``target`` and
``drop``), in the champion's order. Stops cooperatively when the run's cost
reaches the cap. Registers the challenger (alias ``@challenger``) with its
ledger (``finops.learned``: a JSON file beside the references, also the run's
``learned.json``) and moves ``@champion`` only if it beats the champion by the
policy's margin on the policy's metric (:mod:`mlflow_finops.scoring`, the drift
gate's own rule); the promoted version's drift reference is the rows it learned.

The held-out rows are the newest of the new data (a time-ordered split: no fit saw them), but
they belong to the period both fits were fitted beside, which favours whatever fits that period;
so the promotion (and the memory it kept) is verified forward in time on the next labelled window,
against the version it replaced, and rolled back when that one is better there
(:mod:`.realized`).

The job writes ``running`` and then its verdict into the request's state tag
(:class:`~mlflow_finops.retrain.state.RetrainState`); the supervisor reads it.

Here: the job's configuration, the new data and the orchestration. The update itself is
:mod:`.update` (pure scikit-learn), the registry's reads and writes :mod:`.registry`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from ..cost.tracker import active_tracker, autolog
from ..frames import DataInputError, data_files, read_frame
from ..money import format_usd
from ..names import (
    METRIC_ROWS_HOLDOUT,
    METRIC_ROWS_NEW,
    TAG_CHAMPION_VERSION,
    TAG_DRIFT_RUN_ID,
    TAG_LEARNED,
    TAG_MEMORY,
    TAG_MODEL_VERSION,
    TAG_NEW_DATA_FILES,
    TAG_PARENT_VERSION,
    TAG_REASON,
    TAG_REFERENCE,
    TAG_RETRAIN_RUN_ID,
    TAG_RETRAIN_STATE,
    TAG_UPDATE_PATH,
    TAG_UPDATE_WHY,
    TAG_VERSION_COST_USD,
    eval_challenger,
    eval_champion,
    tag,
)
from ..policy import ModelPolicy, Policy, PolicyError, RetrainPolicy, load_policy
from ..scoring import gain, score
from .ledger import Ledger, LedgerError, Piece, Seen, learn, pending
from .promotion import Evaluation
from .registry import CHAMPION, load_version, promote, register_challenger, write_ledger
from .state import RetrainState
from .update import CapReached, ColumnError, classes_block, evaluate, feature_columns, refit_all, refit_when_small
from .update import update as update_model
from .update import update_path

log = logging.getLogger(__name__)

__all__ = [
    "JobConfig",
    "NewData",
    "load_config",
    "file_sha256",
    "champion_ledger",
    "new_data",
    "run_job",
    "register_and_promote",
]

MIN_HELD_OUT_TO_FORGET = 30  # held-out rows a refit on the new rows alone needs to be tried


@dataclass(frozen=True)
class JobConfig:
    """What one retrain of one model needs from the policy file."""

    policy: Policy
    model: str
    model_policy: ModelPolicy
    retrain: RetrainPolicy
    base: str  # the folder relative paths of the policy start from

    @property
    def registered(self) -> str:
        return self.model_policy.registered_model or self.model

    @property
    def target(self) -> str:
        return self.model_policy.target or ""

    def path(self, relative: str) -> str:
        return relative if os.path.isabs(relative) else os.path.join(self.base, relative)


def load_config(policy_path: str | None, model: str) -> JobConfig:
    """The policy's settings for ``model``; :class:`PolicyError` when it cannot be retrained."""
    policy = load_policy(policy_path)
    mp = policy.model(model)
    if not mp.current or not mp.target:
        raise PolicyError(policy.source or "policy", [f"[models.{model}]: current and target are needed"])
    base = os.path.dirname(os.path.abspath(policy.source)) if policy.source else os.getcwd()
    return JobConfig(policy, model, mp, policy.retrain.merged(mp.retrain), base)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The file's content hash: what identifies a data file in a ledger, whatever its name or mtime."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def champion_ledger(cfg: JobConfig, version: Any) -> Ledger:
    """What the champion learned: its ``finops.learned`` ledger, else (a version trained by a
    person) the policy's reference file, whole, else nothing.

    :class:`LedgerError` or :class:`DataInputError` when the ledger or reference cannot be read:
    learning everything again would learn batches of data twice.
    """
    where = version.tags.get(TAG_LEARNED)
    if where:
        try:
            with open(where, encoding="utf-8") as f:
                return Ledger.from_json(f.read())
        except OSError as exc:
            raise LedgerError(f"champion v{version.version}'s ledger {where}: {exc.strerror or exc}") from None
        except LedgerError as exc:
            raise LedgerError(f"champion v{version.version}'s ledger {where}: {exc}") from None
    if not cfg.model_policy.reference:
        return Ledger()
    ref = cfg.path(cfg.model_policy.reference)
    rows = len(read_frame(ref))
    return Ledger.of_reference(file_sha256(ref), os.path.getsize(ref), rows, os.path.basename(ref))


@dataclass(frozen=True)
class NewData:
    """The rows the ledger lacks, in file order (``data_files``), and where each file's rows start."""

    frame: pd.DataFrame
    pieces: tuple[Piece, ...]


def new_data(pattern: str, ledger: Ledger) -> NewData:
    """Rows of the data files of ``pattern`` (a folder or glob) that ``ledger`` has not learned.

    Files come in :func:`~mlflow_finops.frames.data_files` order (oldest first); a file is
    read only when it has rows to learn.
    """
    paths: dict[str, str] = {}
    seen = []
    for f in data_files(pattern):
        digest = file_sha256(f)
        paths.setdefault(digest, str(f))
        seen.append(Seen(digest, f.stat().st_size, f.name))
    frames, pieces = [], []
    for s, start in pending(ledger, seen):
        full = read_frame(paths[s.sha256])
        if len(full) > start:
            frames.append(full.iloc[start:])
            pieces.append(Piece(s.sha256, s.size, s.name, len(full), start))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return NewData(frame, tuple(pieces))


def _connect_ray(timeout_s: float) -> None:
    """Fan-out to Ray (if the training uses it) is charged to this run, on every node.

    Joins the cluster of ``$RAY_ADDRESS`` (a Ray job's driver has it) unless connected already;
    without one, starts none: a retrain called in-process tracks its own process tree.
    """
    try:
        import ray

        if ray.is_initialized() or not os.environ.get("RAY_ADDRESS"):
            return
        from ..ray_cluster import join

        join(timeout_s=timeout_s, log_to_driver=False)
    except Exception as exc:
        log.info("not connected to Ray (%s); tracking this process tree only", exc)


def run_job(cfg: JobConfig, run_id: str, cap_usd: float | None = None) -> RetrainState:
    """The whole retrain inside the request's run ``run_id``; the state it ended in.

    ``no_new_data``, ``failed`` (no target or feature column, an unreadable ledger or file),
    ``capped``, ``promoted`` or ``not_promoted``; each is also the run's state tag.
    Holds no state between calls: a long-lived process may call it again and again.
    """
    rp = cfg.retrain
    current = cfg.path(cfg.model_policy.current or "")
    client = MlflowClient()
    champion_version = client.get_model_version_by_alias(cfg.registered, CHAMPION)
    champion = load_version(champion_version)
    _connect_ray(rp.connect_timeout_s)
    autolog(interval_s=rp.sample_interval_s, policy=cfg.policy)
    with mlflow.start_run(run_id=run_id):
        try:
            ledger = champion_ledger(cfg, champion_version)
            new = new_data(current, ledger)
        except (LedgerError, DataInputError, OSError) as exc:
            return _failed(f"cannot tell what the champion learned or read the new data: {exc}")
        data = new.frame
        ended = _nothing_to_learn(cfg, data, current, champion_version)
        if ended is not None:
            return ended
        n_hold = max(1, int(len(data) * rp.holdout_fraction))
        train, hold = data.iloc[:-n_hold], data.iloc[-n_hold:]  # newest rows held out, not learned
        try:
            plan = _plan(cfg, champion, champion_version, data, train)
        except (ColumnError, DataInputError) as exc:
            return _failed(str(exc))
        mlflow.set_tags({
            TAG_RETRAIN_STATE: RetrainState.RUNNING.value,
            TAG_UPDATE_PATH: plan.path,
            **({TAG_UPDATE_WHY: plan.why[:5000]} if plan.why else {}),
            TAG_CHAMPION_VERSION: str(champion_version.version),
            TAG_NEW_DATA_FILES: str(len(new.pieces)),
        })
        mlflow.log_metrics({METRIC_ROWS_NEW: len(train), METRIC_ROWS_HOLDOUT: len(hold)})

        fitted = _fit_and_judge(cfg, champion, train, hold, plan.columns, plan.path, plan.reference, cap_usd)
        if fitted is None:
            mlflow.end_run("KILLED")
            return RetrainState.CAPPED
        challenger, ev, kept = fitted
        forgot = 0 if kept is not None or plan.reference is None else len(plan.reference)
        learned_rows = train
        if ev.better and plan.path == "refit" and refit_all(rp, kept, len(data)):
            # the winner is fitted once more with its held-out rows, the newest and after a drift the
            # most telling, as a model is refitted on all its data once validated (while that is
            # cheap: small data); its score at promotion stays the validated fit's
            challenger = _train(cfg, champion, data[plan.columns], data[cfg.target], plan.path, kept, cap_usd)
            if challenger is None:
                mlflow.end_run("KILLED")
                return RetrainState.CAPPED
            learned_rows = data
        learned, taken = learn(ledger, new.pieces, len(learned_rows))
        rows = learned_rows if kept is None else pd.concat([kept, learned_rows], ignore_index=True)
        update_note = [{"sha256": p.sha256, "name": p.name, "from_row": p.start, "rows_learned": n}
                       for p, n in zip(new.pieces, taken)]
        return register_and_promote(cfg, client, champion_version, challenger, ev, path=plan.path, rows=rows,
                                    ledger=learned, update_note=update_note, forgot=forgot)


def _nothing_to_learn(cfg: JobConfig, data: pd.DataFrame, current: str, champion_version: Any) -> RetrainState | None:
    """The retrain's end when the new rows cannot make a challenger (none, no target, too few); else None."""
    if data.empty:
        return _no_new_data(f"champion v{champion_version.version} has learned every row of {current}")
    if cfg.target not in data.columns:
        return _failed(f"new data has no target column {cfg.target!r}")
    if len(data) <= max(1, int(len(data) * cfg.retrain.holdout_fraction)):
        # held-out rows are not learned: they wait for the next retrain
        return _no_new_data(f"only {len(data)} row(s) of {current} are new to champion "
                            f"v{champion_version.version}, all needed to judge a challenger")
    return None


@dataclass(frozen=True)
class Plan:
    """How a retrain updates its champion: the path, why when it is not the model's usual one,
    the columns learned, and the rows a refit starts from (None: the new rows only)."""

    path: str
    why: str
    columns: list[str]
    reference: pd.DataFrame | None


def _plan(cfg: JobConfig, champion: Any, champion_version: Any, data: pd.DataFrame, train: pd.DataFrame) -> Plan:
    """The update's :class:`Plan`; :class:`ColumnError` or :class:`DataInputError` when the data
    or the champion's reference lacks a column it needs.

    A refit when the model allows no update, when an update would change the class set, or
    (``auto``) while what the champion learned plus the new rows are few (:func:`refit_when_small`).
    """
    rp, mp = cfg.retrain, cfg.model_policy
    path = update_path(champion, rp.strategy)
    why = classes_block(champion, train[cfg.target], path)
    if why:  # an update cannot change the class set: learn it all again
        log.info("%s: full refit", why)
        path = "refit"
    columns = feature_columns(mp, data.columns, champion, "new data")
    reference = None
    if path == "refit":
        reference = _previous_reference(cfg, champion_version)
    elif rp.strategy == "auto" and rp.refit_max_rows >= len(train):
        learned_before = _previous_reference(cfg, champion_version, at_most=rp.refit_max_rows - len(train))
        labelled = learned_before is not None and cfg.target in learned_before.columns  # else: the update
        small = refit_when_small(rp, path, learned_before, len(train)) if labelled else ""
        if small:
            log.info("%s: full refit", small)
            path, why, reference = "refit", why or small, learned_before
    if reference is not None:
        feature_columns(mp, reference.columns, champion, "the champion's reference")
        if cfg.target not in reference.columns:
            raise ColumnError(f"the champion's reference has no target column {cfg.target!r}")
    return Plan(path, why, columns, reference)


def _fit_and_judge(cfg: JobConfig, champion: Any, train: pd.DataFrame, hold: pd.DataFrame, columns: list[str],
                   path: str, reference: pd.DataFrame | None,
                   cap_usd: float | None) -> tuple[Any, Evaluation, pd.DataFrame | None] | None:
    """The challenger fitted on ``train`` (after ``reference`` for a refit) and judged on ``hold``:
    (challenger, its evaluation, the reference it learned), None when capped.

    With ``memory = "adaptive"`` a refit is also fitted on the new rows alone, forgetting what
    the champion learned, and that one is kept when it predicts the held-out rows better by
    more than ``margin``: where the data moved on, old rows teach the old concept (a gradual
    drift), and where they still help (recurring regimes) the full refit wins. The forgetting
    candidate learns the fewest rows, so it costs little next to the full one. It is tried only
    on at least ``MIN_HELD_OUT_TO_FORGET`` held-out rows: on fewer, the two fits' difference is
    mostly noise, and what is forgotten is not learned again. Tag ``finops.memory`` says which
    was kept and why.
    """
    rp, target = cfg.retrain, cfg.target
    challenger = _train(cfg, champion, train[columns], train[target], path, reference, cap_usd)
    if challenger is None:
        return None
    ev = evaluate(champion, challenger, hold[columns], hold[target], rp)
    if (path != "refit" or reference is None or reference.empty or rp.memory != "adaptive"
            or len(hold) < MIN_HELD_OUT_TO_FORGET):
        return challenger, ev, reference
    alone = _train(cfg, champion, train[columns], train[target], path, None, cap_usd)
    if alone is None:
        return None
    # the champion's score on the held-out rows is the same for both: not predicted again
    ev_alone = Evaluation(rp.metric, ev.champion, score(alone, hold[columns], hold[target], rp.metric), rp.margin)
    kept = gain(rp.metric, ev_alone.challenger, ev.challenger) > rp.margin
    mlflow.set_tag(TAG_MEMORY, (
        f"{'new rows only' if kept else 'all'}: {rp.metric} {ev_alone.challenger:.4f} on the held-out rows "
        f"with the {len(train):,} new rows alone vs {ev.challenger:.4f} with the {len(reference):,} rows "
        f"learned before too (margin {rp.margin})"))
    return (alone, ev_alone, None) if kept else (challenger, ev, reference)


def _no_new_data(reason: str) -> RetrainState:
    mlflow.set_tags({TAG_RETRAIN_STATE: RetrainState.NO_NEW_DATA.value, TAG_REASON: reason})
    return RetrainState.NO_NEW_DATA


def _failed(reason: str) -> RetrainState:
    """End the active run FAILED with ``reason`` (one line a person can act on)."""
    mlflow.set_tags({TAG_RETRAIN_STATE: RetrainState.FAILED.value, TAG_REASON: reason})
    log.error("retrain failed: %s", reason)
    mlflow.end_run("FAILED")
    return RetrainState.FAILED


def _previous_reference_file(cfg: JobConfig, version: Any) -> str | None:
    """The champion's drift reference file (the rows it learned), else the policy's reference, else None."""
    tagged = version.tags.get(TAG_REFERENCE)
    if tagged and os.path.isfile(tagged):
        return tagged
    return cfg.path(cfg.model_policy.reference) if cfg.model_policy.reference else None


def _previous_reference(cfg: JobConfig, version: Any, *, at_most: int | None = None) -> pd.DataFrame | None:
    """What a full refit starts from (:func:`_previous_reference_file`, read), else nothing.

    ``at_most``: None, unread, when a Parquet file's footer says it holds more rows (``auto``
    only needs it while small; a big reference is not read for nothing).
    """
    path = _previous_reference_file(cfg, version)
    if path is None:
        return None
    if at_most is not None and str(path).lower().endswith((".parquet", ".pq")):
        try:
            import pyarrow.parquet as pq

            if pq.ParquetFile(path).metadata.num_rows > at_most:
                return None
        except Exception:  # unreadable footer: read_frame names the problem
            pass
    return read_frame(path)


def _train(cfg: JobConfig, champion: Any, X: pd.DataFrame, y: pd.Series, path: str,
           reference: pd.DataFrame | None, cap_usd: float | None) -> Any | None:
    """The update, stopped when the run's cost reaches ``cap_usd``: the challenger, or None (tagged capped)."""
    tracker = active_tracker()
    stop = threading.Event()
    if cap_usd is not None and tracker is not None:
        tracker.on_sample(lambda b: b.cost_usd >= cap_usd and stop.set())
    try:
        return update_model(champion, X, y, path, cfg.retrain, stop, reference, cfg.target)
    except CapReached:
        spent = tracker.sample_now().cost_usd if tracker else None
        mlflow.set_tags({
            TAG_RETRAIN_STATE: RetrainState.CAPPED.value,
            TAG_REASON: f"stopped at the cost cap: {format_usd(spent)} >= {format_usd(cap_usd)}; nothing promoted",
        })
        log.warning("cost cap reached (%s >= %s): stopped, nothing promoted", format_usd(spent), format_usd(cap_usd))
        return None


def register_and_promote(cfg: JobConfig, client: MlflowClient, champion_version: Any, challenger: Any, ev: Evaluation,
           *, path: str, rows: pd.DataFrame, ledger: Ledger, update_note: list[dict[str, Any]],
           forgot: int = 0) -> RetrainState:
    """Register the challenger with its evaluation, lineage and ledger; promote it when better
    (``rows``, what it learned, becoming the drift reference); the verdict.

    ``forgot``: rows the champion learned that the challenger, fitted on the new rows alone, did
    not; its ledger still lists them (no later retrain learns them again), its reference not."""
    name = cfg.registered
    run_id = mlflow.active_run().info.run_id
    mlflow.log_metrics({eval_champion(ev.metric): ev.champion, eval_challenger(ev.metric): ev.challenger})
    version_tags = {
        TAG_RETRAIN_RUN_ID: run_id,
        TAG_UPDATE_PATH: path,
        TAG_PARENT_VERSION: str(champion_version.version),
        tag(ev.metric): f"{ev.challenger:.6f}",
    }
    drift_run = mlflow.get_run(run_id).data.tags.get(TAG_DRIFT_RUN_ID)
    if drift_run:
        version_tags[TAG_DRIFT_RUN_ID] = drift_run
    version = register_challenger(client, challenger, name, version_tags)
    text = ledger.to_json(model=name, version=version, parent_version=str(champion_version.version),
                          update=update_note, **({"forgot_rows_learned_before": forgot} if forgot else {}))
    write_ledger(client, cfg.base, name, version, text)
    mlflow.log_text(text, "learned.json")
    verdict = (f"challenger v{version} {ev.metric}={ev.challenger:.4f} vs champion "
               f"v{champion_version.version} {ev.champion:.4f} (margin {ev.margin})")
    if ev.better:
        promote(client, name, version, rows, cfg.base)
    state = RetrainState.PROMOTED if ev.better else RetrainState.NOT_PROMOTED
    mlflow.set_tags({
        TAG_RETRAIN_STATE: state.value,
        TAG_MODEL_VERSION: version,
        TAG_REASON: ("promoted: " if ev.better else "not promoted: ") + verdict,
    })
    log.info("%s: %s", "promoted" if ev.better else "not promoted", verdict)
    tracker = active_tracker()
    if tracker is not None:
        client.set_model_version_tag(name, version, TAG_VERSION_COST_USD, f"{tracker.sample_now().cost_usd:.8f}")
    return state
