"""The runs a cost report needs, read by the server with one projection: ``POST /finops/api/report-runs``.

Through ``search_runs`` MLflow's server builds every run as ORM objects (its metrics, params
and tags) and the client parses them again: 3-6 ms a run, 5 minutes for 100,000 runs, whoever
asks. A report needs only a run's info, its latest metrics and three or four tags. Here the
finops app (``mlflow server --app-name finops``) selects just those columns from the
server's own SQL store, with the report's filters in the query, and streams them as JSON
lines, one run a line, in ``search_runs``'s order (newest first, then run id).

Request body (JSON): ``experiment_ids`` (list), ``view`` ("active" or "all"), ``model``,
``team`` (tag equality, or null), ``since_ms`` / ``until_ms`` (start time range, or null),
``all_finops_tags`` (every ``finops.*`` tag, for FOCUS; else only the ones a report reads).
Answer: a first line ``{"format": 1}``, then ``[run_id, name, experiment_id, start_ms,
end_ms, status, {metric: value}, {tag: value}]`` per run, then ``{"end": true, "runs": N}``;
a stream without that last line was cut short. Metrics: the ``finops/*`` figures a report
sums and every model metric (not ``finops/*`` or ``system/*``); NaN ones are left out (a
report treats them as absent). A store that is not SQL answers 501, and the client reads through
``search_runs`` instead; so does a client the server's basic auth does not take for an admin
(403), since ``search_runs`` applies per-experiment permissions.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterator

from ..names import TAG_MODEL, TAG_PREFIX, TAG_TEAM
from ..spend.reading import FORMAT, NOT_QUALITY, REPORT_FIGURES, REPORT_TAGS, ROUTE

__all__ = ["add_route"]

_log = logging.getLogger(__name__)
_CHUNK = 5_000  # runs whose metrics and tags are read with one query each


def add_route(app: Any, prefix: str, *, admins_only: bool) -> None:
    if "finops_report_runs" in app.view_functions:
        return

    def finops_report_runs() -> Any:
        return _view(admins_only)

    app.add_url_rule(prefix + ROUTE, "finops_report_runs", finops_report_runs, methods=["POST"])


def _error(status: int, message: str) -> Any:
    from flask import Response

    return Response(json.dumps({"error": message}) + "\n", status=status, mimetype="application/json")


def _view(admins_only: bool) -> Any:
    from flask import Response, request, stream_with_context

    if admins_only:
        from mlflow.server.auth import sender_is_admin

        if not sender_is_admin():
            return _error(403, "report-runs reads every experiment: only admins; others use search_runs")
    from mlflow.server.handlers import _get_tracking_store
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = _get_tracking_store()
    if not isinstance(store, SqlAlchemyStore):
        return _error(501, f"the tracking store is {type(store).__name__}, not SQL: use search_runs")
    try:
        query = _Query.from_json(request.get_json(force=True, silent=False))
    except (ValueError, TypeError, KeyError) as exc:
        return _error(400, f"bad report-runs request: {exc}")
    return Response(stream_with_context(_lines(store, query)), mimetype="application/x-ndjson")


class _Query:
    def __init__(self, experiment_ids: list[int], view: str, model: str | None, team: str | None,
                 since_ms: int | None, until_ms: int | None, all_finops_tags: bool) -> None:
        self.experiment_ids, self.view, self.model, self.team = experiment_ids, view, model, team
        self.since_ms, self.until_ms, self.all_finops_tags = since_ms, until_ms, all_finops_tags

    @classmethod
    def from_json(cls, body: Any) -> "_Query":
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        view = body.get("view", "active")
        if view not in ("active", "all"):
            raise ValueError(f"view={view!r}: expected 'active' or 'all'")

        def text(key: str) -> str | None:
            v = body.get(key)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{key} must be a string or null")
            return v

        def millis(key: str) -> int | None:
            v = body.get(key)
            return None if v is None else int(v)

        return cls([int(i) for i in body["experiment_ids"]], view, text("model"), text("team"),
                   millis("since_ms"), millis("until_ms"), bool(body.get("all_finops_tags", False)))


def _in_chunk(store: Any) -> Callable[[Any, list[str]], Any]:
    """``column IN (ids)``; on PostgreSQL ``column = ANY(array)``: one parameter, not thousands to parse."""
    from sqlalchemy import String, any_, bindparam

    if store.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return lambda column, ids: column == any_(bindparam("ids", ids, type_=ARRAY(String)))
    return lambda column, ids: column.in_(ids)


def _rows(session: Any, stmt: Any) -> list[tuple]:
    """All rows of ``stmt`` as plain tuples from the DB-API cursor: SQLAlchemy's Row objects cost
    ~2 us each, and a report reads ~14 metric rows a run."""
    connection = session.connection()
    compiled = stmt.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    if compiled.positional:
        params = tuple(params[name] for name in compiled.positiontup)
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return cursor.fetchall()
    finally:
        cursor.close()


def _lines(store: Any, q: _Query) -> Iterator[str]:
    """The answer, line by line; an error mid-stream ends it without the last line (the client says so)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun, SqlTag
    from sqlalchemy import and_, exists, or_, select

    runs, metrics, tags = SqlRun.__table__, SqlLatestMetric.__table__, SqlTag.__table__
    stmt = select(runs.c.run_uuid, runs.c.name, runs.c.experiment_id, runs.c.start_time, runs.c.end_time,
                  runs.c.status).where(runs.c.experiment_id.in_(q.experiment_ids))
    if q.view == "active":
        stmt = stmt.where(runs.c.lifecycle_stage == "active")
    if q.since_ms is not None:
        stmt = stmt.where(runs.c.start_time >= q.since_ms)
    if q.until_ms is not None:
        stmt = stmt.where(runs.c.start_time < q.until_ms)
    for key, value in ((TAG_MODEL, q.model), (TAG_TEAM, q.team)):
        if value is not None:
            stmt = stmt.where(exists(select(tags.c.run_uuid).where(
                and_(tags.c.run_uuid == runs.c.run_uuid, tags.c.key == key, tags.c.value == value))))
    stmt = stmt.order_by(runs.c.start_time.desc(), runs.c.run_uuid)
    wanted = (or_(tags.c.key.like(TAG_PREFIX + "%"), tags.c.key == "mlflow.runName") if q.all_finops_tags
              else tags.c.key.in_(REPORT_TAGS))
    figures = frozenset(REPORT_FIGURES)  # filtered here, not in SQL: a key condition there changes PostgreSQL's plan
    yield json.dumps({"format": FORMAT}) + "\n"
    n = 0
    if not q.experiment_ids:
        yield json.dumps({"end": True, "runs": 0}) + "\n"
        return
    in_chunk = _in_chunk(store)
    with store.ManagedSessionMaker() as session, store.ManagedSessionMaker() as lookups:
        result = session.execute(stmt.execution_options(yield_per=_CHUNK))
        for chunk in result.partitions(_CHUNK):
            ids = [row[0] for row in chunk]
            m: dict[str, dict[str, float]] = {}
            for rid, key, value, is_nan in _rows(lookups, select(
                    metrics.c.run_uuid, metrics.c.key, metrics.c.value, metrics.c.is_nan)
                    .where(in_chunk(metrics.c.run_uuid, ids))):
                if not is_nan and (key in figures or not key.startswith(NOT_QUALITY)):
                    m.setdefault(rid, {})[key] = value
            t: dict[str, dict[str, str]] = {}
            for rid, key, value in _rows(lookups, select(tags.c.run_uuid, tags.c.key, tags.c.value)
                                         .where(and_(in_chunk(tags.c.run_uuid, ids), wanted))):
                t.setdefault(rid, {})[key] = value
            lines = [json.dumps([rid, name, str(exp), start, end, status, m.get(rid, {}), t.get(rid, {})])
                     for rid, name, exp, start, end, status in chunk]
            n += len(lines)
            yield "\n".join(lines) + "\n"
    yield json.dumps({"end": True, "runs": n}) + "\n"
