"""The one text form of a time, in every command's JSON, the daemon's log and what is stored:
ISO 8601 in UTC with a ``Z`` (``2026-12-03T23:06:32Z``); fractions of a second only where a
caller asks for them, or, with ``timespec="auto"``, only when there are any."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(t: datetime | float, timespec: str = "seconds") -> str:
    """`t` (an aware datetime, or Unix seconds) as ``YYYY-MM-DDTHH:MM:SS[.fff]Z``."""
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, UTC)
    t = t.astimezone(UTC)
    if timespec == "auto":
        timespec = "microseconds" if t.microsecond else "seconds"
    return t.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def utc_now_text(timespec: str = "seconds") -> str:
    return utc_text(datetime.now(UTC), timespec)


def restamp(text: str | None) -> str | None:
    """A stored time text in the one form (older catalogs stored ``+00:00``); empty stays."""
    return utc_text(datetime.fromisoformat(text)) if text else text
