"""Incremental retraining, run inside a Ray job with cost tracking on.

    python -m ray_jobs.retrain --run-id RUN --model NAME [--policy finops.toml] [--cap-usd X]

Updates ``models:/<registered>@champion`` with the rows it has not learned (its
ledger: files by content hash), stops at the cost cap, and promotes the
challenger only when it is better (the work itself: :mod:`mlflow_finops.retrain.job`).
Exit codes: 0 done (promoted or not), 3 stopped at the cost cap, 4 no new data,
2 bad configuration or data.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from mlflow_finops.policy import PolicyError
from mlflow_finops.retrain.job import load_config, run_job
from mlflow_finops.retrain.state import RetrainState

log = logging.getLogger("ray_jobs.retrain")

EXIT_BAD_INPUT = 2
EXIT_CODES = {
    RetrainState.PROMOTED: 0,
    RetrainState.NOT_PROMOTED: 0,
    RetrainState.CAPPED: 3,
    RetrainState.NO_NEW_DATA: 4,
    RetrainState.FAILED: EXIT_BAD_INPUT,
}


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(143)  # unwinds through `with mlflow.start_run()`: the run ends with its cost


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--policy", default=None)
    ap.add_argument("--cap-usd", type=float, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ray's stop_job sends SIGTERM: end the run cleanly so its partial cost is logged.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        cfg = load_config(args.policy, args.model)
    except PolicyError as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    return EXIT_CODES[run_job(cfg, args.run_id, args.cap_usd)]


if __name__ == "__main__":
    sys.exit(main())
