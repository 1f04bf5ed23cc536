"""A report table's views and tag lookups: sized, truthy and iterable like the lists they replace."""

from __future__ import annotations

import pytest

from mlflow_finops.spend.rows import RunTable, RunView

from .test_rows import rc


def test_a_view_is_one_kind_of_row_in_read_order() -> None:
    table = RunTable([rc(0, 1.0), rc(1, None), rc(2, 3.0, nested=True), rc(3, 2.0)])
    counted = RunView(table, "counted")
    assert [r.run_id for r in counted] == ["r000000", "r000003"] and list(counted) == list(counted)
    assert len(counted) == 2 and bool(counted) and repr(counted) == "<counted runs: 2>"
    assert [r.run_id for r in RunView(table)] == ["r000000", "r000001", "r000002", "r000003"]
    one = RunView(table, "nested")
    assert len(one) == 1 and bool(one)  # one row is a non-empty view
    assert not RunView(RunTable(), "counted") and len(RunView(RunTable())) == 0


def test_tags_are_looked_up_by_run_and_counted_only_where_kept() -> None:
    table = RunTable()
    table.append(rc(0, 1.0), tags={"finops.team": "a"})
    table.append(rc(1, 2.0))
    table.append(rc(2, 3.0), tags={})
    tags = table.tags
    assert len(tags) == 2 and list(tags) == ["r000000", "r000002"]
    assert tags["r000000"] == {"finops.team": "a"} and tags["r000002"] == {}
    assert tags["r000000"] == {"finops.team": "a"}  # a second lookup (the index exists by then)
    with pytest.raises(KeyError) as err:
        tags["r000001"]  # a run whose tags were not kept
    assert err.value.args == ("r000001",)
    with pytest.raises(KeyError):
        tags["nope"]
    assert table.count("untracked") == 0 and table.count() == 3 and len(table) == 3
    # by default: every row, in read order
    assert [(r.run_id, t) for r, t in table.select_with_tags()] == [
        ("r000000", {"finops.team": "a"}), ("r000001", {}), ("r000002", {})]
    assert [r.run_id for r in table.select()] == ["r000000", "r000001", "r000002"]
