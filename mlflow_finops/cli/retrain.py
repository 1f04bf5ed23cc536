"""`retrain` and `ray up/down`: retrain a model within budget on a Ray cluster."""

from __future__ import annotations

import logging
import sys

import click

from ..policy import PolicyError
from ._common import fail, load_policy_or_exit, policy_option
from .exit_codes import EXIT_BLOCKED, EXIT_CAPPED, EXIT_INTERNAL, EXIT_NOT_PROMOTED


def _print_outcome(out) -> None:
    color = {"promoted": "green", "not_promoted": "yellow", "waiting": "yellow"}.get(out.state, "red")
    cost = f"${out.cost_usd:.6f}" if out.cost_usd is not None else "-"
    cap = f" of cap ${out.cap_usd:.6f}" if out.cap_usd is not None else ""
    click.secho(f"{out.model}: {out.state} (run {out.run_id}, cost {cost}{cap})", fg=color)
    click.echo(f"  {out.reason}")


@click.command()
@policy_option
@click.option("--model", required=True, help="The model, as named in [models.NAME].")
@click.option("--drift-run-id", default=None, help="The drift check that asked for it (lineage).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Supervise the Ray job to its end, or return once it is submitted.")
def retrain(policy_path: str | None, model: str, drift_run_id: str | None, wait: bool) -> None:
    """Retrain MODEL incrementally as a Ray job, within its budget and windows.

    \b
    Steps: budget envelopes covering the model (spend read from MLflow) ->
    opportunistic window ([windows]; `critical` envelopes bypass it) -> a Ray
    job (ray_jobs/retrain.py) that updates @champion with the data that arrived
    since it was trained (partial_fit / warm_start / refit) and stops at the
    cost cap -> the challenger gets @champion only if it beats it by the margin.
    The Ray Jobs API address is [retrain].ray_address, else $RAY_ADDRESS, else
    http://127.0.0.1:8265 (`mlflow-finops ray up` starts a local cluster).

    \b
    Exit codes:
      0   retrained (promoted or not: see the output)
      12  no job ran: out of budget, dropped, or waiting for a window
      3   stopped at its cost cap, nothing promoted
      1   the job failed (retried with backoff while budget remains)
      2   bad input or configuration
    """
    from ..retrain import RetrainSupervisor, request_retrain

    policy = load_policy_or_exit(policy_path)
    try:
        run_id = request_retrain(policy, model, drift_run_id=drift_run_id, reason="mlflow-finops retrain")
        sup = RetrainSupervisor(policy)
        out = sup.process(run_id, wait=wait)
        while wait and out.state == "retry":
            delay = max(0.0, (_retry_at(sup, run_id) - sup.now()).total_seconds())
            click.echo(f"{model}: job failed, retrying in {delay:.0f} s")
            sup.sleep(delay)
            out = sup.process(run_id, wait=True)
    except PolicyError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).debug("retrain failed", exc_info=True)
        fail(f"{type(exc).__name__}: {exc}", EXIT_INTERNAL)
    _print_outcome(out)
    codes = {"promoted": 0, "not_promoted": EXIT_NOT_PROMOTED, "submitted": 0, "capped": EXIT_CAPPED,
             "failed": EXIT_INTERNAL, "no_new_data": 0}
    sys.exit(codes.get(out.state, EXIT_BLOCKED))


def _retry_at(sup, run_id: str):
    from datetime import datetime

    return datetime.fromisoformat(sup.client.get_run(run_id).data.tags["finops.retry_at"])


@click.group("ray")
def ray_group() -> None:
    """A local Ray cluster for retraining jobs (127.0.0.1 only)."""


@ray_group.command("up")
@click.option("--num-cpus", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--port", type=int, default=6379, show_default=True, help="The head's GCS port (its address).")
@click.option("--dashboard-port", type=int, default=8265, show_default=True, help="Jobs API port.")
def ray_up(num_cpus: int, port: int, dashboard_port: int) -> None:
    """Start a local Ray head with the Jobs API on http://127.0.0.1:PORT.

    Equivalent to `ray start --head --node-ip-address 127.0.0.1 ...`; point
    retraining at it with [retrain].ray_address or RAY_ADDRESS.
    """
    from ..ray_cluster import RayClusterError, start_local_cluster

    try:
        cluster = start_local_cluster(num_cpus, port, dashboard_port)
    except RayClusterError as exc:
        fail(str(exc), EXIT_INTERNAL)
    down = "mlflow-finops ray down" + (f" --port {port}" if port != 6379 else "")
    click.echo(f"Ray is up: Jobs API at {cluster.jobs_url} (stop it with `{down}`)")


@ray_group.command("down")
@click.option("--port", type=int, default=6379, show_default=True, help="The GCS port given to `ray up`.")
def ray_down(port: int) -> None:
    """Stop the local Ray cluster that `mlflow-finops ray up` started on 127.0.0.1:PORT.

    Only that cluster's processes (and their workers) are stopped; other Ray
    clusters on this machine keep running (`ray stop` would stop them all).
    """
    from ..ray_cluster import stop_local_cluster

    stopped = stop_local_cluster(port)
    if not stopped:
        click.echo(f"no local Ray cluster at 127.0.0.1:{port}")
        return
    click.echo(f"Ray at 127.0.0.1:{port} stopped ({stopped} processes)")
