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

The job writes ``running`` and then its verdict into the request's state tag
(:class:`~mlflow_finops.retrain.state.RetrainState`); the supervisor reads it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from ..cost.tracker import active_tracker, autolog
from ..frames import DataInputError, data_files, read_frame
from ..money import format_usd
from ..names import (
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
    tag,
)
from ..policy import ModelPolicy, Policy, PolicyError, RetrainPolicy, load_policy
from ..scoring import gain, score
from .ledger import Ledger, LedgerError, Piece, Seen, learn, pending
from .promotion import Evaluation
from .state import RetrainState

log = logging.getLogger(__name__)

__all__ = [
    "CapReached",
    "ColumnError",
    "refit_all",
    "refit_when_small",
    "JobConfig",
    "Evaluation",
    "NewData",
    "load_config",
    "file_sha256",
    "champion_ledger",
    "new_data",
    "feature_columns",
    "update_path",
    "update",
    "evaluate",
    "register",
    "load_version",
    "promote",
    "ledger_path",
    "run_job",
]

CHAMPION, CHALLENGER = "champion", "challenger"  # registry aliases
METRIC_ROWS_NEW = "retrain/rows_new"
METRIC_ROWS_HOLDOUT = "retrain/rows_holdout"
MIN_HELD_OUT_TO_FORGET = 30  # held-out rows a refit on the new rows alone needs to be tried


class CapReached(Exception):
    """The run's cost reached its cap: stop training, promote nothing."""


class ColumnError(ValueError):
    """A column the retrain needs is not in the data, or the policy's columns are not the champion's."""


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
    if model not in policy.models:
        raise PolicyError(policy.source or "policy", [f"[models.{model}]: unknown model"])
    mp = policy.models[model]
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
    learning everything again would learn windows twice.
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


def feature_columns(mp: ModelPolicy, columns: Any, champion: Any, where: str) -> list[str]:
    """The columns the model learns, in the champion's order when it knows its own
    (``feature_names_in_``), else the policy's or the data's; :class:`ColumnError` naming what
    is missing from ``where`` or differs between the policy and the champion."""
    present = set(columns)
    excluded = {mp.target, *mp.drop}
    wanted = list(mp.features) or [c for c in columns if c not in excluded]
    learned = [str(c) for c in getattr(champion, "feature_names_in_", [])]
    need = learned or wanted
    missing = [c for c in dict.fromkeys([*need, *mp.features]) if c not in present]
    if missing:
        raise ColumnError(f"{where} has no feature column {', '.join(map(repr, missing))}")
    if learned and set(learned) != set(wanted):
        extra = [c for c in wanted if c not in learned]
        lacking = [c for c in learned if c not in wanted]
        fix = "remove it from features" if mp.features else "add it to drop"
        parts = ([f"the champion did not learn {', '.join(map(repr, extra))} ({fix})"] if extra else []) + (
            [f"the policy leaves out {', '.join(map(repr, lacking))}, which the champion learned"] if lacking else [])
        raise ColumnError("features differ from the champion's: " + "; ".join(parts))
    return need


def update_path(model: Any, strategy: str) -> str:
    """Which update the model allows: partial_fit, warm_start, or refit."""
    est = model[-1] if hasattr(model, "steps") else model
    if strategy != "auto":
        return strategy
    if hasattr(est, "partial_fit"):
        return "partial_fit"
    if "warm_start" in est.get_params() and ("n_estimators" in est.get_params() or "max_iter" in est.get_params()):
        return "warm_start"
    return "refit"


def refit_when_small(rp: RetrainPolicy, path: str, reference: pd.DataFrame | None, new_rows: int) -> str:
    """Why ``auto`` refits instead of updating ('' when it does not): what the champion learned plus
    the new rows are at most ``refit_max_rows``. On data that small a refit costs about what an update
    does (a retrain's fixed part dominates both), and it adapts fully where an update adds trees the
    old ones outvote."""
    if rp.strategy != "auto" or path == "refit" or reference is None or not refit_all(rp, reference, new_rows):
        return ""
    return (f"{len(reference):,} learned + {new_rows:,} new rows <= refit_max_rows={rp.refit_max_rows:,}: "
            f"a refit costs about what an update does and learns everything anew")


def refit_all(rp: RetrainPolicy, reference: pd.DataFrame | None, new_rows: int) -> bool:
    """Whether ``reference`` plus ``new_rows`` are at most ``refit_max_rows``: small enough that
    ``auto`` refits, and that a winning refit is fitted again with its held-out rows (a second
    fit of a big refit would double its cost)."""
    return (0 if reference is None else len(reference)) + new_rows <= rp.refit_max_rows


def classes_block(model: Any, y: pd.Series, path: str) -> str:
    """Why ``path`` cannot update a classifier on labels ``y`` ('' when it can).

    Trees added by a warm start must know the champion's classes, all of them
    (a forest averages their probabilities class by class); ``partial_fit``
    accepts only the classes it was first given.
    """
    est = model[-1] if hasattr(model, "steps") else model
    known = getattr(est, "classes_", None)
    if known is None or path not in ("warm_start", "partial_fit"):
        return ""
    seen = set(pd.unique(y.dropna()))
    known_set = set(known.tolist())
    if path == "partial_fit" and seen <= known_set:
        return ""
    if path == "warm_start" and seen == known_set:
        return ""
    return (f"the new rows hold classes {sorted(map(str, seen))} where the champion knows "
            f"{sorted(map(str, known_set))}: {path} cannot change the class set")


def update(model: Any, X: pd.DataFrame, y: pd.Series, path: str, rp: RetrainPolicy,
           stop: threading.Event, reference: pd.DataFrame | None, target: str) -> Any:
    """Return the updated (challenger) model; raises CapReached when ``stop`` is set."""
    challenger = copy.deepcopy(model)
    is_pipe = hasattr(challenger, "steps")
    est = challenger[-1] if is_pipe else challenger
    # the fitted preprocessing is kept: the estimator was trained on its output
    Xt = challenger[:-1].transform(X) if is_pipe and len(challenger.steps) > 1 else X
    if path == "partial_fit":
        n = len(y)
        for _ in range(rp.partial_fit_epochs):
            for i in range(0, n, rp.batch_rows):
                if stop.is_set():
                    raise CapReached()
                est.partial_fit(Xt[i : i + rp.batch_rows], y.iloc[i : i + rp.batch_rows])
        return challenger
    if path == "warm_start":
        size_param = "n_estimators" if "n_estimators" in est.get_params() else "max_iter"
        est.set_params(warm_start=True)
        for _ in range(rp.warm_start_steps):
            if stop.is_set():
                raise CapReached()
            est.set_params(**{size_param: est.get_params()[size_param] + rp.warm_start_step})
            est.fit(Xt, y)
        return challenger
    # refit: from scratch on what the model knew (the reference) plus the new data, X's columns only
    from sklearn.base import clone

    frames = [X.assign(**{target: y.values})]
    if reference is not None:
        frames.insert(0, reference[[*X.columns, target]])
    full = pd.concat(frames, ignore_index=True)
    if stop.is_set():
        raise CapReached()
    return clone(model).fit(full[list(X.columns)], full[target])


def evaluate(champion: Any, challenger: Any, X: pd.DataFrame, y: pd.Series, rp: RetrainPolicy) -> Evaluation:
    return Evaluation(rp.metric, score(champion, X, y, rp.metric), score(challenger, X, y, rp.metric), rp.margin)


def _serialization(model: Any, champion_uri: str) -> dict[str, Any]:
    """How to log the challenger: in the champion's own format (skops trusting the champion's
    types, or the champion's pickle flavour), with the champion's pip requirements
    (inferring them again costs seconds of CPU per retrain)."""
    out: dict[str, Any] = {}
    flavor: dict[str, Any] = {}
    try:
        flavor = mlflow.models.get_model_info(champion_uri).flavors.get("sklearn", {})
    except Exception as exc:
        log.info("champion's serialization format unknown (%s); MLflow's default", exc)
    fmt = flavor.get("serialization_format")
    if fmt and fmt != "skops":
        out["serialization_format"] = fmt  # and skops, which imports all of scikit-learn, is not needed
    elif flavor.get("skops_trusted_types") is not None:
        # an update of the champion is built of the champion's types: no extra skops dump to list them
        out["skops_trusted_types"] = list(flavor["skops_trusted_types"])
    else:
        out.update(_skops_types(model))
    try:
        out["pip_requirements"] = mlflow.artifacts.download_artifacts(f"{champion_uri}/requirements.txt")
    except Exception as exc:
        log.info("champion's requirements not reused (%s); MLflow infers them", exc)
    return out


def _skops_types(model: Any) -> dict[str, Any]:
    """The types ``model`` needs trusted when skops loads it (one skops dump); {} without skops."""
    try:
        import skops.io as sio

        return {"skops_trusted_types": sio.get_untrusted_types(data=sio.dumps(model))}
    except Exception:  # no skops here: MLflow's default format
        return {}


_LOADED: "OrderedDict[tuple[str, str, str, int], Any]" = OrderedDict()
_KEEP_LOADED = 2


def _key(version: Any) -> tuple[str, str, str, int]:
    return (mlflow.get_tracking_uri(), version.name, str(version.version), int(version.creation_timestamp or 0))


def _remember(version: Any, model: Any) -> None:
    _LOADED[_key(version)] = model
    _LOADED.move_to_end(_key(version))
    while len(_LOADED) > _KEEP_LOADED:
        _LOADED.popitem(last=False)


def load_version(version: Any) -> Any:
    """The model of a registry version (a ``ModelVersion``).

    A long-lived process (the warm retrain actor) keeps the last two in memory:
    the next retrain's champion is most often the challenger this one just
    registered, and loading it again costs a full deserialization. Updates
    never change a loaded model (they work on a copy).
    """
    model = _LOADED.get(_key(version))
    if model is None:
        model = mlflow.sklearn.load_model(f"models:/{version.name}/{version.version}")
    _remember(version, model)
    return model


def register(client: MlflowClient, challenger: Any, name: str, tags: dict[str, str]) -> str:
    """Log and register the challenger (alias ``@challenger``) in the champion's format; its version."""
    options = _serialization(challenger, f"models:/{name}@{CHAMPION}")
    try:
        info = mlflow.sklearn.log_model(challenger, name="model", registered_model_name=name, **options)
    except mlflow.exceptions.MlflowException as exc:
        if "untrusted types" not in str(exc) or "skops_trusted_types" not in options:
            raise
        log.info("the challenger holds types its champion did not: listing them")  # e.g. a refit's new steps
        info = mlflow.sklearn.log_model(challenger, name="model", registered_model_name=name,
                                        **{**options, **_skops_types(challenger)})
    version = str(info.registered_model_version)
    _remember(client.get_model_version(name, version), challenger)
    client.set_registered_model_alias(name, CHALLENGER, version)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    return version


def ledger_path(base: str, name: str, version: str) -> str:
    """Where a version's ledger lives: beside the references, on the file system retrains share."""
    return os.path.join(base, "references", f"{name}-v{version}.learned.json")


def promote(client: MlflowClient, name: str, version: str, learned: pd.DataFrame, base: str) -> str:
    """Make ``version`` the champion; the rows it learned become the drift gate's reference (its path)."""
    ref_dir = os.path.join(base, "references")
    os.makedirs(ref_dir, exist_ok=True)
    ref_path = os.path.join(ref_dir, f"{name}-v{version}.parquet")
    learned.reset_index(drop=True).to_parquet(ref_path)
    client.set_model_version_tag(name, version, TAG_REFERENCE, ref_path)
    client.set_registered_model_alias(name, CHAMPION, version)
    return ref_path


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
    rp, mp, name = cfg.retrain, cfg.model_policy, cfg.registered
    current = cfg.path(mp.current or "")
    client = MlflowClient()
    champion_version = client.get_model_version_by_alias(name, CHAMPION)
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
        if data.empty:
            return _no_new_data(f"champion v{champion_version.version} has learned every row of {current}")
        if cfg.target not in data.columns:
            return _failed(f"new data has no target column {cfg.target!r}")
        n_hold = max(1, int(len(data) * rp.holdout_fraction))
        if len(data) <= n_hold:  # held-out rows are not learned: they wait for the next retrain
            return _no_new_data(f"only {len(data)} row(s) of {current} are new to champion "
                                f"v{champion_version.version}, all needed to judge a challenger")
        train, hold = data.iloc[:-n_hold], data.iloc[-n_hold:]  # newest rows held out, not learned
        path = update_path(champion, rp.strategy)
        why = classes_block(champion, train[cfg.target], path)
        if why:  # an update cannot change the class set: learn it all again
            log.info("%s: full refit", why)
            path = "refit"
        try:
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
        except (ColumnError, DataInputError) as exc:
            return _failed(str(exc))
        mlflow.set_tags({
            TAG_RETRAIN_STATE: RetrainState.RUNNING.value,
            TAG_UPDATE_PATH: path,
            **({TAG_UPDATE_WHY: why[:5000]} if why else {}),
            TAG_CHAMPION_VERSION: str(champion_version.version),
            TAG_NEW_DATA_FILES: str(len(new.pieces)),
        })
        mlflow.log_metrics({METRIC_ROWS_NEW: len(train), METRIC_ROWS_HOLDOUT: len(hold)})

        fitted = _fit_and_judge(cfg, champion, train, hold, columns, path, reference, cap_usd)
        if fitted is None:
            mlflow.end_run("KILLED")
            return RetrainState.CAPPED
        challenger, ev, kept = fitted
        forgot = 0 if kept is not None or reference is None else len(reference)
        reference, learned_rows = kept, train
        if ev.better and path == "refit" and refit_all(rp, reference, len(data)):
            # the winner is fitted once more with its held-out rows, the newest and after a drift the
            # most telling, as a model is refitted on all its data once validated (while that is
            # cheap: small data); its score at promotion stays the validated fit's
            challenger = _train(cfg, champion, data[columns], data[cfg.target], path, reference, cap_usd)
            if challenger is None:
                mlflow.end_run("KILLED")
                return RetrainState.CAPPED
            learned_rows = data
        learned, taken = learn(ledger, new.pieces, len(learned_rows))
        rows = learned_rows if reference is None else pd.concat([reference, learned_rows], ignore_index=True)
        update_note = [{"sha256": p.sha256, "name": p.name, "from_row": p.start, "rows_learned": n}
                       for p, n in zip(new.pieces, taken)]
        return _judge(cfg, client, champion_version, challenger, ev, path=path, rows=rows, ledger=learned,
                      update_note=update_note, forgot=forgot)


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
        return update(champion, X, y, path, cfg.retrain, stop, reference, cfg.target)
    except CapReached:
        spent = tracker.sample_now().cost_usd if tracker else None
        mlflow.set_tags({
            TAG_RETRAIN_STATE: RetrainState.CAPPED.value,
            TAG_REASON: f"stopped at the cost cap: {format_usd(spent)} >= {format_usd(cap_usd)}; nothing promoted",
        })
        log.warning("cost cap reached (%s >= %s): stopped, nothing promoted", format_usd(spent), format_usd(cap_usd))
        return None


def _judge(cfg: JobConfig, client: MlflowClient, champion_version: Any, challenger: Any, ev: Evaluation,
           *, path: str, rows: pd.DataFrame, ledger: Ledger, update_note: list[dict[str, Any]],
           forgot: int = 0) -> RetrainState:
    """Register the challenger with its evaluation, lineage and ledger; promote it when better
    (``rows``, what it learned, becoming the drift reference); the verdict.

    ``forgot``: rows the champion learned that the challenger, fitted on the new rows alone, did
    not; its ledger still lists them (no later retrain learns them again), its reference not."""
    name = cfg.registered
    run_id = mlflow.active_run().info.run_id
    mlflow.log_metrics({f"eval/champion_{ev.metric}": ev.champion, f"eval/challenger_{ev.metric}": ev.challenger})
    version_tags = {
        TAG_RETRAIN_RUN_ID: run_id,
        TAG_UPDATE_PATH: path,
        TAG_PARENT_VERSION: str(champion_version.version),
        tag(ev.metric): f"{ev.challenger:.6f}",
    }
    drift_run = mlflow.get_run(run_id).data.tags.get(TAG_DRIFT_RUN_ID)
    if drift_run:
        version_tags[TAG_DRIFT_RUN_ID] = drift_run
    version = register(client, challenger, name, version_tags)
    text = ledger.to_json(model=name, version=version, parent_version=str(champion_version.version),
                          update=update_note, **({"forgot_rows_learned_before": forgot} if forgot else {}))
    where = ledger_path(cfg.base, name, version)
    os.makedirs(os.path.dirname(where), exist_ok=True)
    with open(where, "w", encoding="utf-8") as f:
        f.write(text)
    client.set_model_version_tag(name, version, TAG_LEARNED, where)
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
