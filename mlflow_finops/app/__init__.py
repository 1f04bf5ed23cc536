"""The FinOps page inside ``mlflow server``: an MLflow app plugin (entry point group ``mlflow.app``).

``mlflow server --app-name finops`` serves MLflow as usual plus ``/finops/``: spend per team,
model and experiment over a period, budgets with burn-down and projection, the cost-vs-metric
Pareto front per experiment, the retrain lineage with what each retrain cost and bought, and
links into the runs. It is MLflow's own Flask app with one more route, so it shares the
server's port, workers and whatever guards them (a proxy's auth, MLflow's security middleware).

``--app-name`` takes one name, so MLflow's ``basic-auth`` app and this one cannot both be
named; ``--app-name finops-basic-auth`` is both: the page is added, then MLflow's basic-auth
``create_app`` wraps the whole app, page included. The page sums every experiment, so under
basic auth only admins may open it (others get 403).

The page reads the server's tracking store in-process (``MlflowClient`` on the backend store
URI the server was started with; no HTTP round trip), 10,000 runs per page, and keeps the
rendered figures ``CACHE_TTL_S`` seconds per (since, until): a reload or a second person does
not read the store again. The page is streamed: the form first, then the figures, then each
chart as it is drawn.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterator

__all__ = ["create_app", "create_app_with_basic_auth", "ROUTE", "CACHE_TTL_S", "DEFAULT_SINCE", "DEFAULT_UNTIL"]

_log = logging.getLogger(__name__)

ROUTE = "/finops/"
CACHE_TTL_S = 60.0
DEFAULT_SINCE, DEFAULT_UNTIL = "30d", "now"
_CACHE_ENTRIES = 32
_cache: dict[tuple[str, str, str], tuple[float, str]] = {}
_cache_lock = threading.Lock()


def create_app() -> Any:
    """``mlflow server --app-name finops``: MLflow's server app with the FinOps page added."""
    from mlflow.server import app

    _add_route(app, admins_only=False)
    return _for_server(app)


def create_app_with_basic_auth() -> Any:
    """``mlflow server --app-name finops-basic-auth``: the page, then MLflow's basic auth around everything."""
    from mlflow.server import app
    from mlflow.server.auth import create_app as basic_auth_app

    _add_route(app, admins_only=True)
    return basic_auth_app(app)


def _for_server(app: Any) -> Any:
    """The ASGI app MLflow builds around Flask under uvicorn (its default); the Flask app under gunicorn/waitress."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME

    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app


def _prefix() -> str:
    from mlflow.server import STATIC_PREFIX_ENV_VAR

    return os.environ.get(STATIC_PREFIX_ENV_VAR, "").rstrip("/")


def _add_route(app: Any, *, admins_only: bool) -> None:
    if "finops_page" in app.view_functions:  # a second factory call in one process
        return

    def finops_page() -> Any:
        return _view(admins_only)

    app.add_url_rule(_prefix() + ROUTE, "finops_page", finops_page, methods=["GET"])
    from . import runs_api

    runs_api.add_route(app, _prefix(), admins_only=admins_only)


def _view(admins_only: bool) -> Any:
    from flask import Response, request, stream_with_context

    from ..spend.report import ReportError, parse_when
    from . import page

    if admins_only:
        from mlflow.server.auth import sender_is_admin

        if not sender_is_admin():
            return Response("The FinOps page sums the spend of every experiment: only admins may open it.\n",
                            status=403, mimetype="text/plain")
    prefix = _prefix()
    since_text = request.args.get("since", "").strip() or DEFAULT_SINCE
    until_text = request.args.get("until", "").strip() or DEFAULT_UNTIL
    try:
        since, until = parse_when(since_text), parse_when(until_text, end=True)
    except ReportError as exc:
        return Response(page.head(prefix, since_text, until_text) + page.error(str(exc)), status=400,
                        mimetype="text/html")

    def chunks() -> Iterator[str]:
        yield page.head(prefix, since_text, until_text)
        try:
            yield from _body(since_text, until_text, prefix, since, until)
        except ReportError as exc:
            yield page.error(str(exc))
        except Exception as exc:  # a store error mid-stream: say it on the page, keep the server up
            _log.exception("finops page failed")
            yield page.error(f"cannot read the tracking store: {type(exc).__name__}: {exc}")

    return Response(stream_with_context(chunks()), mimetype="text/html")


def _body(since_text: str, until_text: str, prefix: str, since: datetime, until: datetime) -> Iterator[str]:
    """The figures for this period part by part, from the cache while fresh (keyed by the form's text, as typed)."""
    from . import page
    from .data import gather

    key = (since_text, until_text, prefix)
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and hit[0] > now:
        yield hit[1]
        return
    data = gather(_client(), since, until)
    parts = []
    for part in page.sections(data, prefix, cached_at=datetime.now(timezone.utc), ttl_s=CACHE_TTL_S):
        parts.append(part)
        yield part
    with _cache_lock:
        for k in [k for k, (expires, _) in _cache.items() if expires <= now]:
            del _cache[k]
        if len(_cache) >= _CACHE_ENTRIES:
            _cache.pop(next(iter(_cache)))
        _cache[key] = (time.monotonic() + CACHE_TTL_S, "".join(parts))


def _client() -> Any:
    """A client on the store this server serves (in-process, as the server's own handlers read it)."""
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR, REGISTRY_STORE_URI_ENV_VAR
    from mlflow.tracking import MlflowClient

    uri = os.environ.get(BACKEND_STORE_URI_ENV_VAR)
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get(REGISTRY_STORE_URI_ENV_VAR) or uri)
