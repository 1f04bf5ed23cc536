"""`retrain` and `ray up/down`: retrain a model within budget on a Ray cluster."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

from ..money import format_usd
from ..policy import PolicyError
from ..retrain.state import SUBMIT_FAILED, RetrainState
from ._common import fail, load_policy_or_exit, policy_option
from .exit_codes import EXIT_BLOCKED, EXIT_CAPPED, EXIT_INTERNAL, EXIT_NOT_PROMOTED, EXIT_OK

if TYPE_CHECKING:
    from ..retrain.supervisor import RetrainOutcome


def _print_outcome(out: RetrainOutcome) -> None:
    color = {RetrainState.PROMOTED: "green", RetrainState.NOT_PROMOTED: "yellow",
             RetrainState.WAITING: "yellow"}.get(out.state, "red")
    cap = f" of cap {format_usd(out.cap_usd)}" if out.cap_usd is not None else ""
    click.secho(f"{out.model}: {out.state} (run {out.run_id}, cost {format_usd(out.cost_usd)}{cap})", fg=color)
    click.echo(f"  {out.reason}")


# the outcome's state -> exit code; any other state: no job ran (out of budget, dropped, waiting)
EXIT_CODES = {
    RetrainState.PROMOTED: EXIT_OK,
    RetrainState.NOT_PROMOTED: EXIT_NOT_PROMOTED,
    RetrainState.SUBMITTED: EXIT_OK,
    RetrainState.NO_NEW_DATA: EXIT_OK,
    RetrainState.CAPPED: EXIT_CAPPED,
    RetrainState.FAILED: EXIT_INTERNAL,
}


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
    from ..retrain import RetrainSupervisor

    def on_retry(out: RetrainOutcome, delay_s: float) -> None:
        # a submission failure names the cluster and the error; a job's failure is in its Ray logs
        what = out.reason.split("; retry at ")[0] if out.reason.startswith(SUBMIT_FAILED) else "job failed"
        click.echo(f"{model}: {what}, retrying in {delay_s:.0f} s")

    policy = load_policy_or_exit(policy_path)
    try:
        out = RetrainSupervisor(policy).retrain(
            model, drift_run_id=drift_run_id, reason="mlflow-finops retrain", wait=wait, on_retry=on_retry
        )
    except PolicyError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).debug("retrain failed", exc_info=True)
        fail(f"{type(exc).__name__}: {exc}", EXIT_INTERNAL)
    _print_outcome(out)
    sys.exit(EXIT_CODES.get(out.state, EXIT_BLOCKED))


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
    retraining at it with [retrain].ray_address (the Jobs API URL it prints).
    It listens on 127.0.0.1 only: join it from your own Python with
    mlflow_finops.ray_cluster.join("127.0.0.1:PORT"), which keeps Ray on
    loopback (Ray's own ray.init would try this machine's LAN address).
    """
    from ..ray_cluster import RayClusterError, start_local_cluster

    try:
        cluster = start_local_cluster(num_cpus, port, dashboard_port)
    except RayClusterError as exc:
        fail(str(exc), EXIT_INTERNAL)
    down = "mlflow-finops ray down" + (f" --port {port}" if port != 6379 else "")
    click.echo(f"Ray is up: Jobs API at {cluster.jobs_url}, GCS at {cluster.gcs_address} "
               f"(stop it with `{down}`)")


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
