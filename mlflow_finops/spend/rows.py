"""A report's per-run rows, kept in a temporary SQLite file rather than in memory.

A report lists every run in scope (CSV, JSON, FOCUS) sorted by cost, and picks
its model metric only after it has seen them all. Kept as Python objects that
is ~1.2 KB a run: 120 MiB per 100,000 runs. Here each page of runs read from
MLflow is written to a private on-disk SQLite database (deleted when closed)
and read back in the order an output needs; SQLite's page cache and sorter have
a fixed size, so a report's memory does not grow with the number of its runs.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import threading
from collections import Counter
from dataclasses import fields, replace
from typing import Iterable, Iterator, Mapping

from . import rollup
from .rollup import GROUP_LEVELS, NONE_KEY, GroupCost, RunCost

__all__ = ["RunTable", "RunView"]

_COLUMNS = tuple(f.name for f in fields(RunCost))
_VALUES = operator.attrgetter(*_COLUMNS)  # a row's column values, in C
_SELECT = ", ".join(_COLUMNS)
_BATCH = 2_000  # rows buffered before one INSERT
_CACHE_KIB = 8_192  # SQLite's page cache; beyond it pages go to the temporary file

# The order rollup.sorted_runs defines: tracked runs by cost, most expensive first, then untracked
# runs newest first; equal runs stay in the order they were read.
_BY_COST = ("cost_usd IS NULL, CASE WHEN cost_usd IS NULL THEN -start_time ELSE -cost_usd END, seq")
_ORDERS = {
    "seq": "seq",
    "cost": _BY_COST,
    "start": "start_time, run_id",
    # cheapest first, the better metric first among equal costs: the order a Pareto front is read in
    "cheap-max": "cost_usd, metric DESC, seq",
    "cheap-min": "cost_usd, metric, seq",
}
_WHERE = {
    "all": "",
    "counted": "WHERE cost_usd IS NOT NULL AND nested_in IS NULL",
    "untracked": "WHERE cost_usd IS NULL",
    "nested": "WHERE cost_usd IS NOT NULL AND nested_in IS NOT NULL",
    # counted runs a cost-vs-metric chart can draw: finite metric and cost (NaN is stored as
    # NULL; 9e999 is SQLite's infinity)
    "charted": "WHERE cost_usd IS NOT NULL AND nested_in IS NULL AND metric IS NOT NULL "
               "AND abs(metric) < 9e999 AND abs(cost_usd) < 9e999",
}


class RunTable:
    """Rows appended in read order, each with its quality metrics and (optionally) its tags."""

    def __init__(self, rows: Iterable[RunCost] = ()) -> None:
        # "" is SQLite's private temporary on-disk database: removed when the connection closes.
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        self._db.execute(f"CREATE TABLE runs (seq INTEGER PRIMARY KEY, {', '.join(_COLUMNS)}, tags TEXT)")
        self._db.execute("CREATE TABLE quality (seq INTEGER, name TEXT, value REAL, PRIMARY KEY (seq, name))"
                         " WITHOUT ROWID")
        self._rows: list[tuple] = []
        self._quality: list[tuple] = []
        self._n = 0
        self._indexed = False
        # sums kept as rows arrive (a report needs no pass over its rows for them); the best run
        # of each group waits for the metric: rollups() finds it in SQL
        self._total = GroupCost("total", "total")
        self._groups: dict[str, dict[str, GroupCost]] = {level: {} for level in GROUP_LEVELS}
        self.extend(rows)

    # ------------------------------------------------------------ writing
    def append(self, row: RunCost, quality: Mapping[str, float] | None = None,
               tags: Mapping[str, str] | None = None) -> None:
        """Add one run; ``quality`` (its model metrics) is kept for :meth:`set_metric`."""
        seq = self._n
        self._n += 1
        rollup.add_sums(self._total, row)
        for level, groups in self._groups.items():
            key = row.key(level)
            group = groups.get(key)
            if group is None:
                group = groups[key] = GroupCost(level, key)
            rollup.add_sums(group, row)
        self._rows.append((seq, *_VALUES(row),
                           json.dumps(dict(tags), sort_keys=True) if tags is not None else None))
        if quality:
            self._quality.extend((seq, k, float(v)) for k, v in quality.items())
        if len(self._rows) >= _BATCH:
            self.flush()

    def extend(self, rows: Iterable[RunCost]) -> None:
        for row in rows:
            self.append(row)

    def flush(self) -> None:
        """Write the buffered rows (reads flush first, so callers need not)."""
        if not self._rows and not self._quality:
            return
        with self._lock:
            marks = ", ".join("?" * (len(_COLUMNS) + 2))
            self._db.execute("BEGIN")
            self._db.executemany(f"INSERT INTO runs VALUES ({marks})", self._rows)
            self._db.executemany("INSERT OR REPLACE INTO quality VALUES (?, ?, ?)", self._quality)
            self._db.execute("COMMIT")
            self._rows, self._quality = [], []

    def metric_counts(self) -> Counter[str]:
        """How many runs carry each quality metric (the report picks the most common)."""
        return Counter(dict(self._query("SELECT name, COUNT(*) FROM quality GROUP BY name")))

    def set_metric(self, name: str) -> None:
        """Fill every tracked run's ``metric`` with its value of ``name`` (None where it has none)."""
        self.flush()
        with self._lock:
            self._db.execute(
                "UPDATE runs SET metric = (SELECT value FROM quality q WHERE q.seq = runs.seq AND q.name = ?) "
                "WHERE cost_usd IS NOT NULL", (name,))

    # ------------------------------------------------------------ reading
    def rollups(self, goal: str = "max") -> tuple[GroupCost, dict[str, list[GroupCost]]]:
        """The total and the groups of every level (most expensive first), as :func:`~.rollup.groups`
        gives them: sums in read order, and per group the run with the best metric (``goal``),
        the first of equal ones, found with one SQL window query per level."""
        order = "DESC" if goal == "max" else "ASC"
        total = replace(self._total)
        levels = {level: {k: replace(g) for k, g in groups.items()} for level, groups in self._groups.items()}
        keys = {"total": "'total'", "experiment": "experiment",
                **{level: f"CASE WHEN {level} IS NULL OR {level} = '' THEN '{NONE_KEY}' ELSE {level} END"
                   for level in ("model", "team")}}
        for level, key in keys.items():
            sql = (f"SELECT k, run_id, metric, cost_usd FROM (SELECT {key} AS k, run_id, metric, cost_usd, "
                   f"ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY metric {order}, seq) AS rn FROM runs "
                   f"{_WHERE['counted']} AND metric IS NOT NULL) WHERE rn = 1")
            for k, run_id, metric, cost in self._query(sql):
                g = total if level == "total" else levels[level][k]
                g.best_metric, g.best_run_id, g.best_run_cost_usd = metric, run_id, cost
        return total, {level: rollup.by_cost(groups.values()) for level, groups in levels.items()}

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[RunCost]:
        return self.select("all", "seq")

    def select(self, which: str = "all", order: str = "seq") -> Iterator[RunCost]:
        """Rows of one kind (all, counted, untracked, nested, charted) in ``order``: ``seq`` (read order),
        ``cost`` (as :func:`~.rollup.sorted_runs`), ``start`` (oldest first, then run id), or
        ``cheap-max`` / ``cheap-min`` (cheapest first, better metric first among equal costs)."""
        for values in self._query(f"SELECT {_SELECT} FROM runs {_WHERE[which]} ORDER BY {_ORDERS[order]}"):
            yield RunCost(*values)

    def select_with_tags(self, which: str = "all", order: str = "seq") -> Iterator[tuple[RunCost, dict[str, str]]]:
        """As :meth:`select`, each row with the tags kept for it ({} when none were)."""
        sql = f"SELECT {_SELECT}, tags FROM runs {_WHERE[which]} ORDER BY {_ORDERS[order]}"
        for *values, tags in self._query(sql):
            yield RunCost(*values), json.loads(tags) if tags is not None else {}

    def count(self, which: str = "all") -> int:
        if which == "all":
            return self._n
        return next(self._query(f"SELECT COUNT(*) FROM runs {_WHERE[which]}"))[0]

    def any_gpu(self) -> bool:
        """Whether any run used a GPU (the terminal table hides the column otherwise)."""
        return next(self._query("SELECT EXISTS (SELECT 1 FROM runs WHERE gpu_hours != 0)"))[0] == 1

    @property
    def tags(self) -> "RunTags":
        """run id -> that run's kept tags, read on demand."""
        return RunTags(self)

    def _query(self, sql: str, args: tuple = ()) -> Iterator[tuple]:
        self.flush()
        with self._lock:
            cursor = self._db.execute(sql, args)
        while True:
            with self._lock:
                batch = cursor.fetchmany(500)
            if not batch:
                return
            yield from batch

    def _index_run_ids(self) -> None:
        if not self._indexed:
            self.flush()
            with self._lock:
                self._db.execute("CREATE INDEX IF NOT EXISTS runs_by_id ON runs (run_id)")
            self._indexed = True

    def close(self) -> None:
        """Remove the temporary file now (it goes anyway when the table is garbage-collected)."""
        self._db.close()


class RunView:
    """One kind of row of a :class:`RunTable` (all, counted, untracked, nested), in read order.

    Iterable as often as needed and sized, like the list it replaces, without holding the rows.
    """

    def __init__(self, table: RunTable, which: str = "all") -> None:
        self._table, self._which = table, which

    def __iter__(self) -> Iterator[RunCost]:
        return self._table.select(self._which)

    def __len__(self) -> int:
        return self._table.count(self._which)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        return f"<{self._which} runs: {len(self)}>"


class RunTags(Mapping[str, Mapping[str, str]]):
    """run id -> tags, looked up in the table one run at a time."""

    def __init__(self, table: RunTable) -> None:
        self._table = table

    def __getitem__(self, run_id: str) -> Mapping[str, str]:
        self._table._index_run_ids()
        for (text,) in self._table._query("SELECT tags FROM runs WHERE run_id = ? LIMIT 1", (run_id,)):
            if text is not None:
                return json.loads(text)
        raise KeyError(run_id)

    def __iter__(self) -> Iterator[str]:
        return (rid for (rid,) in self._table._query("SELECT run_id FROM runs WHERE tags IS NOT NULL ORDER BY seq"))

    def __len__(self) -> int:
        return next(self._table._query("SELECT COUNT(*) FROM runs WHERE tags IS NOT NULL"))[0]
