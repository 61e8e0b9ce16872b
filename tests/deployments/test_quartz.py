"""Quartz fire times, checked against instants worked out by hand from Quartz's documentation
(CronTrigger tutorial examples) on the 2026-2028 calendar. 2026-11-25 is a Wednesday."""

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from schedulemaster.deployments import quartz

UTC = timezone.utc
AFTER = datetime(2026, 11, 25, 14, 0, 0, tzinfo=UTC)

TABLE = [
    # (expression, after, zone, expected wall times in that zone)
    ("0 0 12 * * ?", AFTER, "UTC", ["2026-11-26 12:00:00", "2026-11-27 12:00:00"]),
    ("0 15 10 ? * *", AFTER, "UTC", ["2026-11-26 10:15:00", "2026-11-27 10:15:00"]),
    ("0 * 14 * * ?", AFTER, "UTC", ["2026-11-25 14:01:00", "2026-11-25 14:02:00"]),
    ("0 0/5 14 * * ?", AFTER, "UTC", ["2026-11-25 14:05:00", "2026-11-25 14:10:00"]),
    ("0 0/5 14,18 * * ?", datetime(2026, 11, 25, 14, 56, tzinfo=UTC), "UTC",
     ["2026-11-25 18:00:00", "2026-11-25 18:05:00"]),
    ("0 0-5 14 * * ?", datetime(2026, 11, 25, 14, 4, tzinfo=UTC), "UTC",
     ["2026-11-25 14:05:00", "2026-11-26 14:00:00"]),
    ("0 10,44 14 ? 3 WED", AFTER, "UTC", ["2027-03-03 14:10:00", "2027-03-03 14:44:00", "2027-03-10 14:10:00"]),
    ("0 15 10 ? * MON-FRI", datetime(2026, 11, 27, 11, 0, tzinfo=UTC), "UTC",
     ["2026-11-30 10:15:00", "2026-12-01 10:15:00"]),
    ("0 15 10 15 * ?", AFTER, "UTC", ["2026-12-15 10:15:00", "2027-01-15 10:15:00"]),
    ("0 15 10 L * ?", AFTER, "UTC",
     ["2026-11-30 10:15:00", "2026-12-31 10:15:00", "2027-01-31 10:15:00", "2027-02-28 10:15:00"]),
    ("0 15 10 L-2 * ?", AFTER, "UTC",
     ["2026-11-28 10:15:00", "2026-12-29 10:15:00", "2027-01-29 10:15:00", "2027-02-26 10:15:00"]),
    ("0 15 10 ? * 6L", AFTER, "UTC", ["2026-11-27 10:15:00", "2026-12-25 10:15:00", "2027-01-29 10:15:00"]),
    ("0 15 10 ? * 6L 2027", AFTER, "UTC", ["2027-01-29 10:15:00", "2027-02-26 10:15:00"]),
    ("0 15 10 ? * 6#3", AFTER, "UTC", ["2026-12-18 10:15:00", "2027-01-15 10:15:00"]),
    ("0 0 12 1/5 * ?", AFTER, "UTC", ["2026-11-26 12:00:00", "2026-12-01 12:00:00", "2026-12-06 12:00:00"]),
    ("0 11 11 11 11 ?", AFTER, "UTC", ["2027-11-11 11:11:00", "2028-11-11 11:11:00"]),
    ("0 0 12 LW * ?", AFTER, "UTC",
     ["2026-11-30 12:00:00", "2026-12-31 12:00:00", "2027-01-29 12:00:00", "2027-02-26 12:00:00"]),
    ("0 0 12 15W * ?", datetime(2027, 4, 20, tzinfo=UTC), "UTC", ["2027-05-14 12:00:00", "2027-06-15 12:00:00"]),
    ("0 0 12 1W * ?", datetime(2027, 4, 20, tzinfo=UTC), "UTC", ["2027-05-03 12:00:00", "2027-06-01 12:00:00"]),
    ("0 0 12 ? * 1", AFTER, "UTC", ["2026-11-29 12:00:00", "2026-12-06 12:00:00"]),
    ("0 0 12 ? * SUN#1", AFTER, "UTC", ["2026-12-06 12:00:00", "2027-01-03 12:00:00"]),
    ("33 0/8 * * * ?", AFTER, "UTC", ["2026-11-25 14:00:33", "2026-11-25 14:08:33", "2026-11-25 14:16:33"]),
    ("0 0 22-2 * * ?", AFTER, "UTC",
     ["2026-11-25 22:00:00", "2026-11-25 23:00:00", "2026-11-26 00:00:00", "2026-11-26 01:00:00",
      "2026-11-26 02:00:00", "2026-11-26 22:00:00"]),
    ("0 0 0 1 JAN ? 2028", AFTER, "UTC", ["2028-01-01 00:00:00"]),
    ("*/20 * * * * ?", AFTER, "UTC", ["2026-11-25 14:00:20", "2026-11-25 14:00:40", "2026-11-25 14:01:00"]),
    ("0 0 9 * * ?", AFTER, "Asia/Shanghai", ["2026-11-26 09:00:00", "2026-11-27 09:00:00"]),
    ("0 0 12 ? JAN,JUL MON#2", AFTER, "UTC", ["2027-01-11 12:00:00", "2027-07-12 12:00:00"]),
]


@pytest.mark.parametrize("expr,after,zone,expected", TABLE, ids=[t[0] for t in TABLE])
def test_fire_times_match_quartz(expr, after, zone, expected):
    got = quartz.parse(expr).next_fires(len(expected) + 1, after, zone)
    wall = [t.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S") for t in got]
    assert wall[: len(expected)] == expected


def test_year_field_ends_the_schedule():
    assert quartz.parse("0 0 0 1 JAN ? 2028").next_fires(3, AFTER) == [datetime(2028, 1, 1, tzinfo=UTC)]


def test_spring_forward_gap_fires_shifted_by_the_gap():
    # 2026-03-08 02:30 does not exist in New York; Quartz.NET fires at the UTC instant the
    # standard offset gives it: 07:30 UTC = 03:30 EDT.
    got = quartz.parse("0 30 2 * * ?").next_fires(3, datetime(2026, 3, 7, 12, tzinfo=UTC), "America/New_York")
    assert [t.astimezone(UTC).strftime("%m-%d %H:%M") for t in got] == ["03-08 07:30", "03-09 06:30", "03-10 06:30"]


def test_fall_back_fires_once_at_the_standard_time_occurrence():
    # 2026-11-01 01:30 happens twice in New York (EDT then EST); it fires once, at 06:30 UTC.
    got = quartz.parse("0 30 1 * * ?").next_fires(2, datetime(2026, 10, 31, 12, tzinfo=UTC), "America/New_York")
    assert [t.astimezone(UTC).strftime("%m-%d %H:%M") for t in got] == ["11-01 06:30", "11-02 06:30"]


def test_every_minute_through_the_fall_back_hour_never_goes_backwards():
    got = quartz.parse("0 * * * * ?").next_fires(200, datetime(2026, 11, 1, 4, 30, tzinfo=UTC), "America/New_York")
    assert all(b > a for a, b in zip(got, got[1:]))


@pytest.mark.parametrize("expr,field_index", [
    ("61 * * * * ?", 0), ("0 60 * * * ?", 1), ("0 0 24 * * ?", 2), ("0 0 0 32 * ?", 3),
    ("0 0 0 ? 13 *", 4), ("0 0 0 ? * 8", 5), ("0 0 0 ? * MON 1969", 6), ("0 0 12 * * *", 5),
    ("0 0 12 ? * ?", 3), ("0 0 12 ? * 2W", 5), ("0 0 12 1-5W * ?", 3), ("0 0 12 ? * 6#6", 5),
    ("? 0 12 * * ?", 0), ("0 0/0 * * * ?", 1), ("0 0 12 ? FOO *", 4), ("0 0 12 L-31 * ?", 3),
])
def test_invalid_expressions_name_the_bad_field(expr, field_index):
    with pytest.raises(quartz.CronError) as err:
        quartz.parse(expr)
    assert err.value.field_index == field_index
    assert f"field {field_index + 1}" in str(err.value)


@pytest.mark.parametrize("expr", ["", "   ", "* * * * *", "1 2 3 4 5 6 7 8", "x" * 500, "0 0 12 ,, * ?"])
def test_malformed_expressions_are_refused(expr):
    with pytest.raises(quartz.CronError):
        quartz.parse(expr)


def test_names_are_case_insensitive():
    a = quartz.parse("0 0 12 ? jan mon").next_fires(3, AFTER)
    b = quartz.parse("0 0 12 ? 1 2").next_fires(3, AFTER)
    assert a == b
