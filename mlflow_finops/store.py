"""MLflow as the store of record: experiments created once, runs read in pages.

``search_runs`` answers at most one page per call; large stores (10,000+ runs)
are read page by page with the store's own token, never with one huge call, so
memory stays flat on the server and each request stays under its limits.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

_log = logging.getLogger(__name__)

__all__ = ["PAGE_SIZE", "all_experiment_ids", "get_or_create_experiment", "iter_runs", "quote", "redact_uri"]

PAGE_SIZE = 10_000
# Experiments are few; a page of this size is one request on any store.
_EXPERIMENT_PAGE = 1_000


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if absent; safe when two processes race to create it."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = client.get_experiment_by_name(name)
        if exp is None:  # pragma: no cover - deleted between the two calls
            raise
        return exp.experiment_id


def all_experiment_ids(client: MlflowClient, view_type: int = ViewType.ALL) -> list[str]:
    """Every experiment id in the store (paged)."""
    ids: list[str] = []
    token: str | None = None
    while True:
        page = client.search_experiments(view_type=view_type, max_results=_EXPERIMENT_PAGE, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def iter_runs(
    client: MlflowClient,
    experiment_ids: Iterable[str],
    filter_string: str = "",
    *,
    view_type: int = ViewType.ACTIVE_ONLY,
    page_size: int = PAGE_SIZE,
    on_page: Callable[[int], None] | None = None,
) -> Iterator[Run]:
    """Yield every run matching ``filter_string``, ``page_size`` runs per request.

    ``on_page(n)`` is called after each page with the number of runs it held
    (progress bars use it).
    """
    ids = list(experiment_ids)
    if not ids:
        return
    if page_size < 1:
        raise ValueError(f"page_size={page_size}: must be at least 1")
    token: str | None = None
    pages = 0
    while True:
        page = client.search_runs(
            ids, filter_string, run_view_type=view_type, max_results=page_size, page_token=token
        )
        pages += 1
        if on_page is not None:
            on_page(len(page))
        yield from page
        token = page.token
        if not token or len(page) == 0:
            _log.debug("read %d page(s) of runs for filter %r", pages, filter_string)
            return


def quote(value: str) -> str | None:
    """``value`` as a filter-string literal, or None when it holds both quote characters."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def redact_uri(value: str) -> str:
    """``value`` without the ``user:password@`` of a URL: what may be written to disk or handed to a
    Ray job (anything that is not such a URL is returned as it is)."""
    if "@" not in value or "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if "@" not in parts.netloc:
        return value
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
