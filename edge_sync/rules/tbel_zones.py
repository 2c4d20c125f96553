"""The time-zone rules of TBEL's ``Date`` (ThingsBoard's TbDate) for a region id such as
``"Europe/Berlin"`` (``new Date(2024, 3, 31, 2, 30, "Europe/Berlin")``), a year at a time.

The script runtime (tbel_runtime.js) cannot call into Python: the quickjs binding refuses a
Python callable while a time limit is set. So a run that needs an id or a year of a zone it has not
lists it and its result is discarded; ``sandbox.ScriptEngine`` computes each here
(``zone_known``, ``year_rules``), hands them to the runtime between runs and runs the message
again (the runtime keeps what it was given).

The rules are the system's time-zone database (``/usr/share/zoneinfo``, Debian's ``tzdata``;
or Python's ``tzdata`` package) read through the standard ``zoneinfo``; the ids are those Java
accepts (``ZoneRegion.ofId``: the database's zones and links, but the few Java 17's own database
has not). A local date-time in a gap (a clock set forward) takes the offset before the gap, and
one in an overlap (a clock set back) the earlier offset, the one before it too: the instant
``ZonedDateTime.of(LocalDateTime, ZoneId)`` gives (ZonedDateTime.ofLocal moves a gap's local
time later by the gap's length, at the offset after it: the same instant).

Safe with anything: the id must be text of Java's region-id characters, at most ``MAX_ID``
long, and one of the database's ids, so no other file is opened; the year within a JavaScript
Date's. Never raises: the result is the rules or the text of the error the script is to throw.
"""

from __future__ import annotations

import calendar
import json
import re
import zoneinfo
from datetime import datetime, timedelta
from functools import cache, lru_cache

# The longest id of the database is 32 characters (America/Argentina/ComodRivadavia)
MAX_ID = 64
# Java's ZoneRegion.checkName: letters, then letters, digits and ``/ ~ . _ + -``
_REGION_ID = re.compile(r"[A-Za-z][A-Za-z0-9/~._+-]{1,63}")
# Ids the tz database has and Java 17's ZoneId.getAvailableZoneIds has not (Java: "Unknown
# time-zone ID"), and the database's files that are no zone
_NOT_JAVA = frozenset({"EST", "HST", "MST", "ROC", "Factory", "localtime", "posixrules"})
# A JavaScript Date's years (-271821 to 275760), and one more either side for an offset
MAX_YEAR = 275_761
# The scan's step: a zone's offset changes at most once in 3 hours
_STEP = 3 * 3600


@cache
def known_zones() -> frozenset[str]:
    """The region ids a script may name (read once: about 15 ms)."""
    return frozenset(zoneinfo.available_timezones() - _NOT_JAVA)


def year_rules(zone_id: object, year: object) -> str:
    """The rules of region ``zone_id`` in local year ``year`` as JSON for the runtime: a list
    ``[offset at the year's start, second of the year of a change, offset from it, ...]``
    (offsets in seconds east of UTC, seconds counted from January 1st 00:00 local), the offset
    ZonedDateTime.of gives each local time of the year; or the error's text (a JSON string),
    ``"ZoneRulesException: Unknown time-zone ID: X"`` (ZoneRulesProvider.getProvider)."""
    try:
        return json.dumps(_year_rules(zone_id, year))
    except Exception as exc:  # the runtime gets text, never a Python exception
        return json.dumps("ZoneRulesException: the time-zone rules could not be read "
                          f"({type(exc).__name__})")


def zone_known(zone_id: object) -> str:
    """Whether region ``zone_id`` is known, as JSON for the runtime: ``null``, or the error's
    text (ZoneRulesProvider.getProvider's ``"ZoneRulesException: Unknown time-zone ID: X"``),
    which ``ZoneId.of`` throws before the date's fields are read (TbDate's constructor)."""
    return json.dumps(_unknown(zone_id))


def _unknown(zone_id: object) -> str | None:
    if type(zone_id) is not str or len(zone_id) > MAX_ID or not _REGION_ID.fullmatch(zone_id):
        return "ZoneRulesException: the time zone is not a region id"
    zones = known_zones()
    if not zones:
        return ("ZoneRulesException: No time-zone data files registered (the system's time-zone "
                "database, /usr/share/zoneinfo, is missing)")
    if zone_id not in zones:
        return f"ZoneRulesException: Unknown time-zone ID: {zone_id}"
    return None


def _year_rules(zone_id: object, year: object) -> list[int] | str:
    unknown = _unknown(zone_id)
    if unknown is not None:
        return unknown
    assert type(zone_id) is str
    if type(year) is float and year.is_integer():
        year = int(year)
    if type(year) is not int or not -MAX_YEAR <= year <= MAX_YEAR:
        return "ZoneRulesException: the year is out of range"
    # beyond datetime's years 1 to 9999, the year 400k years nearer: the same calendar and the
    # same rules (the first offset before a zone's history, its yearly rule after it)
    if year > 9999:
        year -= -(-(year - 9999) // 400) * 400
    elif year < 1:
        year += -(-(1 - year) // 400) * 400
    return list(_rules(zone_id, year))


@lru_cache(maxsize=1024)
def _rules(zone_id: str, year: int) -> tuple[int, ...]:
    """``year_rules`` of a known zone and a year of datetime's: the local times of the year
    scanned every ``_STEP`` seconds, each change then found to the second (about 3 ms)."""
    zone = zoneinfo.ZoneInfo(zone_id)
    start = datetime(year, 1, 1)
    length = (366 if calendar.isleap(year) else 365) * 86_400
    if year == 9999:
        length -= 1  # datetime's last second is the year's last

    def offset(second: int) -> int:
        # fold 0: in a gap or an overlap, the offset before it
        value = (start + timedelta(seconds=second)).replace(tzinfo=zone).utcoffset()
        return 0 if value is None else int(value.total_seconds())

    out = [offset(0)]
    current, at = out[0], 0
    while at < length - 1:
        ahead = min(at + _STEP, length - 1)
        if offset(ahead) == current:
            at = ahead
            continue
        low, high = at, ahead  # offset(low) is current, offset(high) is not
        while high - low > 1:
            middle = (low + high) // 2
            if offset(middle) == current:
                low = middle
            else:
                high = middle
        current = offset(high)
        out += [high, current]
        at = high
    return tuple(out)
