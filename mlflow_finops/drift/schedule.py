"""Scheduled drift checks: cron expressions from the policy, new data from a folder or glob.

Each ``[models.NAME]`` with a ``schedule`` is checked on that cron expression
(``croniter``). The window is the newest ``current_files`` file(s) matching
``current``. A window is judged once, however many schedulers run: its key
(model + file names, sizes, mtimes) is tagged on the check run, and before
checking, a scheduler must win the window's claim in MLflow
(:func:`mlflow_finops.drift.monitoring.claim_window`), which exactly one process can.
A check that fails after the claim gives it back, so the window is retried on
the next run. A claim carries a lease (``MLFLOW_FINOPS_CLAIM_LEASE_S``, default
1 h): a scheduler killed mid-check leaves its claim, which another scheduler
takes over once the lease ran out, or at once when the holder was a process on
the same host that is gone.

A file still being written is not judged: every file of the window must be
older than ``MLFLOW_FINOPS_SETTLE_S`` (default 5 s) by its mtime, and its
size and mtime must not change while it is read; otherwise the outcome is
``not_settled`` (not an error) and the next pass tries again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import pandas as pd

from .._env import env_float
from ..frames import data_files, read_frame
from ..names import ENV_SETTLE_S, TAG_REFERENCE, TAG_WINDOW_FILES
from ..policy import Policy, PolicyError
from .gate import DriftDecision, DriftGate, DriftInputError
from .monitoring import claim_window, find_checked_window, release_window, window_key

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

__all__ = ["CheckOutcome", "current_window", "run_scheduled_check", "run_schedule", "scheduled_models"]

log = logging.getLogger(__name__)

Status = Literal["checked", "already_checked", "claimed_elsewhere", "not_settled", "bad_input", "error"]

DEFAULT_SETTLE_S = 5.0  # a data file modified more recently than this may still be being written


@dataclass
class CheckOutcome:
    """What one scheduled check did."""

    model: str
    status: Status
    message: str
    decision: DriftDecision | None = None
    window_key: str | None = None

    @property
    def retrain(self) -> bool:
        return self.decision is not None and self.decision.retrain


def scheduled_models(policy: Policy, only: list[str] | None = None) -> dict[str, str]:
    """Model name -> cron expression, for the models that have a schedule."""
    if only:
        for name in only:
            policy.model(name)
    out = {
        name: mp.schedule
        for name, mp in policy.models.items()
        if mp.schedule and (not only or name in only)
    }
    if not out:
        raise PolicyError(
            policy.source or "policy",
            ["no [models.NAME] section has a schedule (e.g. schedule = \"0 * * * *\")"],
        )
    return out


def current_window(policy: Policy, model: str) -> list[Path]:
    """The newest ``current_files`` data file(s) of ``[models.<model>].current`` (folder or glob)."""
    mp = policy.model(model)
    if not mp.current:
        raise PolicyError(policy.source or "policy", [f"[models.{model}].current: not set"])
    where = policy.path(mp.current)
    files = data_files(where)
    if not files:
        raise DriftInputError(f"[models.{model}].current: no data file matches {where}")
    return files[-mp.current_files :]


def unsettled(files: list[Path], settle_s: float, now: float | None = None) -> list[Path]:
    """The files modified less than ``settle_s`` ago (or in the future): maybe still being written."""
    now = time.time() if now is None else now
    return [f for f in files if now - f.stat().st_mtime < settle_s]


def load_window(files: list[Path]) -> pd.DataFrame:
    frames = [read_frame(f) for f in files]
    if len(frames) == 1:
        return frames[0]
    cols = list(frames[0].columns)
    for f, fr in zip(files[1:], frames[1:]):
        if list(fr.columns) != cols:
            raise DriftInputError(f"{f}: its columns differ from {files[0].name}'s ({list(fr.columns)} vs {cols})")
    return pd.concat(frames, ignore_index=True)


def run_scheduled_check(
    policy: Policy, model: str, gates: dict[str, DriftGate] | None = None
) -> CheckOutcome:
    """Check the newest window of one model once, unless it was already judged or claimed."""
    gates = {} if gates is None else gates
    try:
        files = current_window(policy, model)
        settle_s = env_float(ENV_SETTLE_S, DEFAULT_SETTLE_S)
        young = unsettled(files, settle_s)
        if young:
            return _not_settled(model, f"{young[0]} was modified in the last {settle_s:g} s")
        key = window_key(model, files)
        # after a promotion, drift is judged against what the new champion learned from
        reference = champion_reference(policy, model) or policy.reference(model)
        gate = gates.get(model)
        if gate is None or gate.reference_source != reference:
            gate = gates[model] = DriftGate.from_policy(policy, model=model, reference=reference)
        client, exp_id = gate.monitoring_experiment_id(create=False)
        seen = find_checked_window(client, exp_id, key)
        if seen is not None:
            return CheckOutcome(model, "already_checked", f"window {key} already checked in run {seen.info.run_id}",
                                window_key=key)
        try:
            current = load_window(files)
        except DriftInputError:
            if window_key(model, files) == key:
                raise
            current = None  # unreadable because it was being written
        if current is None or window_key(model, files) != key:  # written to while read: judge it once whole
            return _not_settled(model, f"the files of window {key} changed while they were read")
        source = ", ".join(map(str, files))
        gate.validate(current, source)  # bad data is reported, not claimed
        if not claim_window(client, key):
            return CheckOutcome(model, "claimed_elsewhere", f"window {key} is being checked by another scheduler",
                                window_key=key)
        seen = find_checked_window(client, gate.monitoring_experiment_id(create=False)[1], key)
        if seen is not None:  # judged by a scheduler that finished between our look and our claim
            return CheckOutcome(model, "already_checked", f"window {key} already checked in run {seen.info.run_id}",
                                window_key=key)
        try:
            decision = gate.check(
                current, window_key=key, source=source,
                extra_tags={TAG_WINDOW_FILES: ",".join(f.name for f in files)[:5000]},
            )
        except BaseException:
            _release(client, key)
            raise
        return CheckOutcome(model, "checked", decision.reason, decision, key)
    except (DriftInputError, PolicyError) as exc:
        log.error("drift check %s: %s", model, exc)
        return CheckOutcome(model, "bad_input", str(exc))
    except Exception as exc:  # one model's failure must not stop the others
        log.exception("drift check %s failed", model)
        return CheckOutcome(model, "error", f"{type(exc).__name__}: {exc}")


def _not_settled(model: str, why: str) -> CheckOutcome:
    log.info("drift check %s: not settled yet (%s); retried on the next pass", model, why)
    return CheckOutcome(model, "not_settled", f"not settled yet: {why}; retried on the next pass")


def _release(client: "MlflowClient", key: str) -> None:
    """Give the window back after a failed check, so the next run may try it; a failure here is only logged
    (the check's own error is the one to report, and the claim's lease frees the window anyway)."""
    try:
        release_window(client, key)
    except Exception as exc:  # noqa: BLE001 - cleanup
        log.warning("could not release window %s (%s: %s); it is claimable again when its lease ends",
                    key, type(exc).__name__, exc)


def champion_reference(policy: Policy, model: str) -> str | None:
    """The data the registered ``@champion`` was last updated on (its ``finops.reference`` tag), if any."""
    mp = policy.models.get(model)
    if mp is None or not retrain_configured(policy, model):
        return None
    try:
        from mlflow.tracking import MlflowClient

        version = MlflowClient().get_model_version_by_alias(mp.registered_model or model, "champion")
    except Exception:  # no registry entry yet: the policy's reference
        return None
    ref = version.tags.get(TAG_REFERENCE)
    return ref if ref and Path(ref).is_file() else None


def retrain_configured(policy: Policy, model: str) -> bool:
    """Whether drift on ``model`` should lead to a retrain job (it has registry/retrain keys)."""
    mp = policy.models.get(model)
    return mp is not None and (mp.registered_model is not None or mp.retrain is not None)


def run_schedule(
    policy: Policy,
    *,
    once: bool = False,
    max_runs: int | None = None,
    models: list[str] | None = None,
    on_outcome: Callable[[CheckOutcome], None] | None = None,
    after_check: Callable[[CheckOutcome], None] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    gates: dict[str, DriftGate] | None = None,
) -> list[CheckOutcome]:
    """Run the policy's checks on their cron schedules; ``once`` runs each one now and returns.

    ``after_check`` gets every outcome once it is recorded (the loop hands retrain
    decisions to retraining there; :func:`mlflow_finops.loop.run_schedule`).
    ``gates`` keeps the fitted gates (reference profile, loaded champion) between
    calls: pass the same dict to successive ``once`` passes of one process.
    """
    from croniter import croniter

    crons = scheduled_models(policy, models)
    gates = {} if gates is None else gates
    outcomes: list[CheckOutcome] = []

    def run(model: str) -> None:
        out = run_scheduled_check(policy, model, gates)
        outcomes.append(out)
        if on_outcome:
            on_outcome(out)
        if after_check:
            after_check(out)

    if once:
        for model in crons:
            run(model)
            if max_runs and len(outcomes) >= max_runs:
                break
        return outcomes
    start = clock()
    due = {m: croniter(expr, start).get_next(float) for m, expr in crons.items()}
    while True:
        model = min(due, key=lambda m: (due[m], m))
        wait = due[model] - clock()
        if wait > 0:
            log.info("next check: %s in %.0f s", model, wait)
            sleep(wait)
        run(model)
        if max_runs and len(outcomes) >= max_runs:
            return outcomes
        due[model] = croniter(crons[model], max(due[model], clock())).get_next(float)
