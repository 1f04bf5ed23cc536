"""How a report reads its runs: the finops app's projection when the server has it, else ``search_runs``.

``search_runs`` costs MLflow's server 3-6 ms a run whoever asks (it builds every run's
metrics, params and tags as ORM objects). A server started with ``--app-name finops``
also answers ``POST /finops/api/report-runs`` (:mod:`mlflow_finops.app.runs_api`): only
the columns a report needs, filtered in one SQL query, streamed as JSON lines. The report
asks for it on an ``http(s)`` tracking URI and falls back to ``search_runs`` pages, once
per call and with a log line, when the server has no such route (404), its store is not SQL
(501) or it does not take the caller for an admin (403). ``MLFLOW_FINOPS_REPORT_READ``
= ``search_runs`` always reads through ``search_runs``.

Both paths yield the same rows in the same order (``search_runs``'s: newest first, then run id).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Iterator, Mapping

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..names import ENV_REPORT_READ, METRIC_PREFIX, TAG_MODEL, TAG_NESTED_IN, TAG_PREFIX, TAG_TEAM
from ..store import iter_runs
from . import rollup
from .rollup import FIGURES, RunCost

__all__ = ["ROUTE", "FORMAT", "REPORT_TAGS", "REPORT_FIGURES", "NOT_QUALITY", "read_runs"]

_log = logging.getLogger(__name__)

ROUTE = "/finops/api/report-runs"
FORMAT = 1
REPORT_TAGS = (TAG_MODEL, TAG_TEAM, TAG_NESTED_IN, "mlflow.runName")  # the tags rollup.row_cost reads
# The metrics rollup.row_cost reads: these figures, and every metric under none of these prefixes
# (the model metrics a report picks from); other finops/* and system/* metrics are not sent.
REPORT_FIGURES = tuple(METRIC_PREFIX + name for name in FIGURES)
NOT_QUALITY = rollup.NOT_QUALITY
_FALL_BACK = {403, 404, 405, 501}

Read = tuple[RunCost, dict[str, float], "dict[str, str] | None"]  # row, quality metrics, kept tags


def read_runs(client: MlflowClient, names: Mapping[str, str], filter_string: str, *, view: int,
              model: str | None, team: str | None, since_ms: int | None, until_ms: int | None,
              keep_tags: bool, page_size: int, on_page: Callable[[int], None]) -> Iterator[Read]:
    """``(row, quality metrics, finops.* tags or None)`` for every run in scope.

    ``filter_string`` is the same scope as ``model``/``team``/``since_ms``/``until_ms``,
    written for ``search_runs``; the projection takes the values themselves.
    """
    host_creds = _host_creds(client)
    if host_creds is not None and os.environ.get(ENV_REPORT_READ, "auto").strip().lower() != "search_runs":
        body = {"experiment_ids": list(names), "view": "all" if view == ViewType.ALL else "active",
                "model": model, "team": team, "since_ms": since_ms, "until_ms": until_ms,
                "all_finops_tags": keep_tags}
        response = _ask(host_creds, body)
        if response is not None:
            yield from _projected(response, names, keep_tags, page_size, on_page)
            return
    for run in iter_runs(client, list(names), filter_string, view_type=view, page_size=page_size, on_page=on_page):
        row, quality = rollup.run_cost(run, names)
        yield row, quality, _finops_tags(run.data.tags) if keep_tags else None


def _finops_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The ``finops.*`` tags of a run (what FOCUS rows are built from)."""
    return {k: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def _host_creds(client: MlflowClient):
    """The REST host and credentials of the client's tracking server; None for a local store."""
    store = client._tracking_client.store
    get = getattr(store, "get_host_creds", None)
    return get() if callable(get) else None


def _ask(host_creds, body: dict):
    """The streaming answer of the projection, or None when the server cannot give it (then: search_runs)."""
    from mlflow.utils.rest_utils import http_request

    response = http_request(host_creds, ROUTE, "POST", json=body, stream=True, max_retries=2,
                            raise_on_status=False)
    if response.status_code in _FALL_BACK:
        response.close()
        _log.info("%s answered %d: reading runs through search_runs (start the server with --app-name finops "
                  "for fast reports)", host_creds.host, response.status_code)
        return None
    if response.status_code != 200:
        text = response.text[:500]
        raise MlflowException(f"{ROUTE} answered {response.status_code}: {text}")
    return response


def _projected(response, names: Mapping[str, str], keep_tags: bool, page_size: int,
               on_page: Callable[[int], None]) -> Iterator[Read]:
    n = pending = 0
    ended = False
    with response:
        lines = response.iter_lines(chunk_size=1 << 16)  # requests' default reads 512 bytes at a time
        head = json.loads(next(lines, b"{}") or b"{}")
        if head.get("format") != FORMAT:
            raise MlflowException(f"{ROUTE}: unknown answer format {head!r} (the server's mlflow-finops differs)")
        for line in lines:
            if not line:
                continue
            item = json.loads(line)
            if isinstance(item, dict):
                ended = item.get("end") is True and item.get("runs") == n
                break
            run_id, name, experiment_id, start_ms, end_ms, status, metrics, tags = item
            row, quality = rollup.row_cost(run_id, name, experiment_id, start_ms, end_ms, status, metrics, tags,
                                           names)
            yield row, quality, _finops_tags(tags) if keep_tags else None
            n += 1
            pending += 1
            if pending >= page_size:
                on_page(pending)
                pending = 0
    if pending:
        on_page(pending)
    if not ended:
        raise MlflowException(f"{ROUTE}: the answer ended after {n} run(s) without its last line (cut short)")
