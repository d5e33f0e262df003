"""How often a systemd OnCalendar schedule (systemd.time(7)) fires: the longest gap between two runs,
so a check can tell a late backup from one that is merely not due yet.

Understood: the shorthands (minutely … yearly) and `[WEEKDAYS] [*-*-*] HOURS:MINUTES[:SECONDS]` whose
hour and minute fields are `*`, numbers, lists (`0,30`) and repetitions (`0/15`, `*/2`), as the stack
config accepts them (settings.parse_calendar). Not understood, so `longest_gap` returns None: a date
other than `*-*-*` (e.g. `*-*-01`).
Seconds and time zones do not change the gap between runs by more than a minute, and are ignored.
"""

from __future__ import annotations

import re
from datetime import timedelta

MINUTES_PER_DAY = 24 * 60
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# The longest gap of each shorthand; monthly and longer by their longest month, quarter, half, year.
SHORTHAND_GAPS = {
    "minutely": timedelta(minutes=1), "hourly": timedelta(hours=1), "daily": timedelta(days=1),
    "weekly": timedelta(weeks=1), "monthly": timedelta(days=31), "quarterly": timedelta(days=92),
    "semiannually": timedelta(days=184), "yearly": timedelta(days=366), "annually": timedelta(days=366),
}
_TIME_ZONE = re.compile(r"\s+(?:UTC|[A-Za-z_]+/[A-Za-z_+-]+)$")


def _field_values(field: str, upper: int) -> set[int] | None:
    """The values 0..upper-1 an hour or minute field matches; None if it is not understood."""
    values: set[int] = set()
    for part in field.split(","):
        start_text, slash, step_text = part.partition("/")
        if slash and not step_text.isdigit():
            return None
        step = int(step_text) if slash else 1
        if start_text == "*":
            first, last = 0, upper - 1
        elif start_text.isdigit():
            first = int(start_text)
            last = upper - 1 if slash else first  # "0/15": from 0 every 15; "5": only 5
        else:
            return None
        if step == 0 or first >= upper:
            return None
        values.update(range(first, min(last, upper - 1) + 1, step))
    return values or None


def _weekday_values(spec: str) -> set[int] | None:
    days: set[int] = set()
    for part in spec.split(","):
        low, dots, high = part.partition("..")
        if low not in WEEKDAYS or (dots and high not in WEEKDAYS):
            return None
        first, last = WEEKDAYS.index(low), WEEKDAYS.index(high if dots else low)
        days.update(range(first, last + 1) if first <= last else [*range(first, 7), *range(0, last + 1)])
    return days


def longest_gap(expression: str) -> timedelta | None:
    """The longest time between two runs of the schedule; None when the expression is not understood."""
    text = " ".join(expression.split())
    if text.lower() in SHORTHAND_GAPS:
        return SHORTHAND_GAPS[text.lower()]
    parts = _TIME_ZONE.sub("", text).split(" ")
    days: set[int] | None = set(range(7))
    if parts and parts[0][:3] in WEEKDAYS:
        days = _weekday_values(parts.pop(0))
    if parts and parts[0] == "*-*-*":
        parts.pop(0)
    if days is None or len(parts) != 1 or parts[0].count(":") not in (1, 2):
        return None
    hour_field, minute_field = parts[0].split(":")[:2]
    hours, minutes = _field_values(hour_field, 24), _field_values(minute_field, 60)
    if hours is None or minutes is None:
        return None
    runs = sorted(day * MINUTES_PER_DAY + hour * 60 + minute for day in days for hour in hours for minute in minutes)
    week = 7 * MINUTES_PER_DAY
    # The gap after the last run of the week wraps round to the first run of the next.
    gaps = [later - earlier for earlier, later in zip(runs, runs[1:])] + [runs[0] + week - runs[-1]]
    return timedelta(minutes=max(gaps))
