"""Off-peak windows cover exactly the hours the policy names: across midnight, week ends and DST."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlflow_finops.policy import DAYS, WindowPolicy

hhmm = st.tuples(st.integers(0, 23), st.sampled_from([0, 15, 30, 45])).map(lambda t: f"{t[0]:02d}:{t[1]:02d}")
days = st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True)
zones = st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Sydney", "Asia/Kolkata"])
# any minute in 2026, which holds the DST changes of every zone above
instants = st.integers(0, 365 * 1440 - 1).map(lambda m: datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=m))


def named_by_policy(day: str, minute: int, start: int, end: int, chosen: list[str]) -> bool:
    """The policy's words, read literally: on a chosen day from start to end; an end before the
    start runs on past midnight into the next day."""
    prev = DAYS[(DAYS.index(day) - 1) % 7]
    if end > start:
        return day in chosen and start <= minute < end
    return (day in chosen and minute >= start) or (prev in chosen and minute < end)


@settings(max_examples=400, deadline=None)
@given(start=hhmm, end=hhmm, chosen=days, tz=zones, now=instants)
def test_in_off_peak_is_exactly_the_named_hours(start: str, end: str, chosen: list[str], tz: str, now: datetime) -> None:
    assume(start != end)
    policy = WindowPolicy(timezone=tz, off_peak=[{"days": chosen, "start": start, "end": end}])
    local = now.astimezone(ZoneInfo(tz))  # the wall clock where the policy lives, DST included
    minute = local.hour * 60 + local.minute
    s = int(start[:2]) * 60 + int(start[3:])
    e = int(end[:2]) * 60 + int(end[3:])
    assert policy.in_off_peak(now) == named_by_policy(DAYS[local.weekday()], minute, s, e, chosen)


@settings(max_examples=200, deadline=None)
@given(start=hhmm, end=hhmm, chosen=days)
def test_spans_cover_the_named_minutes_of_the_week(start: str, end: str, chosen: list[str]) -> None:
    assume(start != end)
    policy = WindowPolicy(off_peak=[{"days": chosen, "start": start, "end": end}])
    covered = {m for r in policy.off_peak for a, b in r.spans() for m in range(a, b)}
    s = int(start[:2]) * 60 + int(start[3:])
    e = int(end[:2]) * 60 + int(end[3:])
    expected = {
        d * 1440 + m for d in range(7) for m in range(1440) if named_by_policy(DAYS[d], m, s, e, chosen)
    }
    assert covered == expected
    length = (e - s) % 1440
    assert len(covered) == length * len(chosen)  # every chosen day gets its whole range, never more


def test_overnight_window_on_a_dst_night() -> None:
    """22:00-06:00 in Paris on the night clocks go back (2026-10-25): open at 02:30 local both times."""
    policy = WindowPolicy(timezone="Europe/Paris", off_peak=[{"days": ["sat"], "start": "22:00", "end": "06:00"}])
    first_0230 = datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc)  # 02:30 CEST
    second_0230 = datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc)  # 02:30 CET
    assert policy.in_off_peak(first_0230) and policy.in_off_peak(second_0230)
    assert policy.in_off_peak(datetime(2026, 10, 25, 4, 59, tzinfo=timezone.utc))  # 05:59 CET
    assert not policy.in_off_peak(datetime(2026, 10, 25, 5, 0, tzinfo=timezone.utc))  # 06:00 CET
    assert not policy.in_off_peak(datetime(2026, 10, 24, 19, 59, tzinfo=timezone.utc))  # 21:59 CEST
