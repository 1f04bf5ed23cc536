"""The opportunistic window's rule from given numbers: the clock, the time zone, free resources.

No Ray: the free CPUs/GPUs are passed in as the dashboard would report them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from mlflow_finops.policy import OffPeakRange, WindowPolicy
from mlflow_finops.retrain.windows import judge_window, needs_cluster, window_state

UTC = timezone.utc


def at(day: int, hh: int, mm: int = 0, tz=UTC) -> datetime:
    """January 2026: the 5th is a Monday, ..., the 11th a Sunday, the 12th a Monday again."""
    return datetime(2026, 1, day, hh, mm, tzinfo=tz)


NIGHTS = WindowPolicy(off_peak=[OffPeakRange(start="22:00", end="06:00")])
FRIDAY_NIGHT = WindowPolicy(off_peak=[OffPeakRange(days=["fri"], start="22:00", end="06:00")])
SUNDAY_NIGHT = WindowPolicy(off_peak=[OffPeakRange(days=["sun"], start="22:00", end="06:00")])
PARIS_NIGHTS = WindowPolicy(timezone="Europe/Paris", off_peak=[OffPeakRange(start="22:00", end="06:00")])
WEEKDAY_LUNCH = WindowPolicy(off_peak=[OffPeakRange(days=["mon", "tue", "wed", "thu", "fri"], start="12:00",
                                                    end="14:00")])

OFF_PEAK = [
    # id, policy, now, inside
    ("no ranges: any time", WindowPolicy(), at(5, 12), True),
    ("23:30 inside 22:00-06:00", NIGHTS, at(5, 23, 30), True),
    ("02:00 inside 22:00-06:00 (past midnight)", NIGHTS, at(6, 2), True),
    ("12:00 outside 22:00-06:00", NIGHTS, at(5, 12), False),
    ("the start is inside", NIGHTS, at(5, 22), True),
    ("the end is outside", NIGHTS, at(6, 6), False),
    ("a minute before the end is inside", NIGHTS, at(6, 5, 59), True),
    ("friday 23:30 inside a friday night", FRIDAY_NIGHT, at(9, 23, 30), True),
    ("saturday 02:00 is the same friday night", FRIDAY_NIGHT, at(10, 2), True),
    ("friday 02:00 is thursday's night", FRIDAY_NIGHT, at(9, 2), False),
    ("thursday 23:30 is not friday", FRIDAY_NIGHT, at(8, 23, 30), False),
    ("a sunday night wraps into monday", SUNDAY_NIGHT, at(12, 2), True),
    ("monday 23:30 is not sunday", SUNDAY_NIGHT, at(12, 23, 30), False),
    ("weekday lunch on a wednesday", WEEKDAY_LUNCH, at(7, 13), True),
    ("no weekday lunch on a saturday", WEEKDAY_LUNCH, at(10, 13), False),
    ("21:30 UTC is 22:30 in Paris (winter)", PARIS_NIGHTS, at(5, 21, 30), True),
    ("04:30 UTC is 05:30 in Paris", PARIS_NIGHTS, at(6, 4, 30), True),
    ("05:30 UTC is 06:30 in Paris", PARIS_NIGHTS, at(6, 5, 30), False),
    ("22:30 UTC in July is 00:30 in Paris (summer)", PARIS_NIGHTS, datetime(2026, 7, 1, 22, 30, tzinfo=UTC), True),
    ("04:30 UTC in July is 06:30 in Paris", PARIS_NIGHTS, datetime(2026, 7, 2, 4, 30, tzinfo=UTC), False),
    ("a clock in another zone is converted", NIGHTS, at(5, 18, tz=ZoneInfo("America/New_York")), True),
]


@pytest.mark.parametrize("policy, now, inside", [c[1:] for c in OFF_PEAK], ids=[c[0] for c in OFF_PEAK])
def test_off_peak(policy: WindowPolicy, now: datetime, inside: bool) -> None:
    state = judge_window(policy, now)
    assert (state.open, state.off_peak) == (inside, inside)
    expected = "window open" if inside else f"outside the off-peak ranges ({policy.timezone})"
    assert state.reason == expected


RESOURCES = [
    # id, min CPUs, min GPUs, free CPUs, free GPUs, open, reason
    ("enough CPUs", 2, 0, 2.0, 0.0, True, "window open"),
    ("too few CPUs", 2, 0, 1.5, 0.0, False, "cluster has 1.5 free CPUs < min_free_cpus=2"),
    ("enough GPUs", 0, 1, 0.0, 1.0, True, "window open"),
    ("too few GPUs", 0, 1, 8.0, 0.0, False, "cluster has 0 free GPUs < min_free_gpus=1"),
    ("neither", 4, 2, 1.0, 1.0, False,
     "cluster has 1 free CPUs < min_free_cpus=4; cluster has 1 free GPUs < min_free_gpus=2"),
    ("a fraction of a GPU", 0, 0.5, 0.0, 0.5, True, "window open"),
]


@pytest.mark.parametrize("cpus, gpus, free_cpus, free_gpus, is_open, reason", [c[1:] for c in RESOURCES],
                         ids=[c[0] for c in RESOURCES])
def test_free_resources(cpus: float, gpus: float, free_cpus: float, free_gpus: float, is_open: bool,
                        reason: str) -> None:
    policy = WindowPolicy(min_free_cpus=cpus, min_free_gpus=gpus)
    assert needs_cluster(policy)
    state = judge_window(policy, at(5, 12), free_cpus, free_gpus)
    assert (state.open, state.reason, state.free_cpus, state.free_gpus) == (is_open, reason, free_cpus, free_gpus)


def test_both_rules_must_hold_and_both_reasons_are_given() -> None:
    policy = WindowPolicy(off_peak=NIGHTS.off_peak, min_free_cpus=2)
    assert judge_window(policy, at(5, 23), 4.0, 0.0).open
    assert judge_window(policy, at(5, 12), 1.0, 0.0).reason == (
        "outside the off-peak ranges (UTC); cluster has 1 free CPUs < min_free_cpus=2"
    )


def test_unknown_free_resources_close_a_window_that_needs_them() -> None:
    policy = WindowPolicy(min_free_cpus=1)
    unread = judge_window(policy, at(5, 12), unread="cannot read the cluster's free resources: timeout")
    assert (unread.open, unread.reason) == (False, "cannot read the cluster's free resources: timeout")
    assert not judge_window(policy, at(5, 12)).open
    # a window that needs no cluster ignores it
    assert not needs_cluster(WindowPolicy())
    assert judge_window(WindowPolicy(), at(5, 12)).open


def test_window_state_reads_the_cluster_only_when_the_rule_needs_it() -> None:
    assert window_state(WindowPolicy(), None, at(5, 12)).open  # no cluster needed, none given
    no_cluster = window_state(WindowPolicy(min_free_cpus=1), None, at(5, 12))
    assert (no_cluster.open, no_cluster.reason) == (False, "no Ray cluster to read free resources from")
    # nothing listens on port 9 of the loopback: the read fails, the window stays closed, nothing raises
    down = window_state(WindowPolicy(min_free_cpus=1), "http://127.0.0.1:9", at(5, 12))
    assert not down.open
    assert down.reason.startswith("cannot read the cluster's free resources: ")


def _status(usage: dict) -> dict:
    return {"data": {"clusterStatus": {"loadMetricsReport": {"usage": usage}}}}


@pytest.mark.parametrize("usage, free", [
    ({"CPU": [1.0, 4.0], "GPU": [0.0, 2.0]}, (3.0, 2.0)),  # [used, total], as Ray reports them
    ({"CPU": [4.0, 4.0]}, (0.0, 0.0)),  # no GPU line: none free
    ({"CPU": [0.5, 2.0], "memory": [1e9, 8e9]}, (1.5, 0.0)),
    ({}, (0.0, 0.0)),
])
def test_free_resources_from_rays_cluster_status(usage: dict, free: tuple[float, float]) -> None:
    from mlflow_finops.retrain.windows import free_resources

    assert free_resources(_status(usage)) == free
