"""schedules.longest_gap: the longest time between two runs of an OnCalendar schedule."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gitea_stack.schedules import longest_gap
from gitea_stack.settings import parse_calendar


@pytest.mark.parametrize("expression, gap", [
    ("hourly", timedelta(hours=1)),
    ("Daily", timedelta(days=1)),
    ("weekly", timedelta(weeks=1)),
    ("monthly", timedelta(days=31)),
    ("*:0/30", timedelta(minutes=30)),
    ("*:00/15", timedelta(minutes=15)),
    ("*:0/45", timedelta(minutes=45)),  # runs at :00 and :45, so the gaps are 45 and 15 minutes
    ("*:17", timedelta(hours=1)),
    ("*:0,30", timedelta(minutes=30)),
    ("*-*-* 02:30", timedelta(days=1)),
    ("*-*-* 02:30:00 UTC", timedelta(days=1)),
    ("*-*-* 03,15:17:00", timedelta(hours=12)),
    ("*-*-* 0/6:00", timedelta(hours=6)),
    ("*-*-* 08,18:00", timedelta(hours=14)),  # the night from 18:00 to 08:00
    ("*/2:00", timedelta(hours=2)),
    ("Mon *-*-* 03:00", timedelta(weeks=1)),
    ("Mon..Fri 22:00", timedelta(days=3)),  # Friday night to Monday night
    ("Sat,Sun *-*-* 04:00", timedelta(days=6)),
    ("*-*-* 02:00 Europe/Berlin", timedelta(days=1)),
])
def test_common_schedules(expression, gap):
    assert parse_calendar(expression)  # every case is a schedule the stack config accepts
    assert longest_gap(expression) == gap


@pytest.mark.parametrize("expression", ["*-*-01 03:00", "2026-12-24 18:00", "Mon..Xyz 03:00", "*:0/0", "*:99"])
def test_schedules_it_does_not_read_give_none(expression):
    assert longest_gap(expression) is None
