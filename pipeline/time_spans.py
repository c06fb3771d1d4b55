"""Times: ``--since``/``--until`` values, ISO-8601 times or spans (``6h``, ``2d``, ``30m``) back from the
newest window; and pandas UTC timestamps as epoch seconds (what the pipeline's ``ts`` fields hold).

Spans count back from the newest window in the log rather than from the wall clock, so replayed or
historical data reads the same way as live data.

>>> parse_span("6h"), parse_span("90s"), parse_span("2026-01-01")
(datetime.timedelta(seconds=21600), datetime.timedelta(seconds=90), None)
>>> epoch_seconds(pd.Series(pd.to_datetime(["1970-01-01T00:01:30Z"]))).tolist()
[90.0]
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

_SPAN = re.compile(r"^(?P<n>\d+(\.\d+)?)\s*(?P<unit>s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


_EPOCH = pd.Timestamp(0, tz="UTC")


def epoch_seconds(times: pd.Timestamp | pd.Series | pd.DatetimeIndex) -> Any:
    """UTC timestamps (one Timestamp, a Series or an index) as float seconds since 1970-01-01.

    Returns the same kind: a float, a Series or an Index (typed Any: pandas carries no types here).
    """
    return (times - _EPOCH) / pd.Timedelta(seconds=1)


def parse_span(text: str) -> timedelta | None:
    """A span like ``6h`` as a timedelta, or None when ``text`` is not a span."""
    match = _SPAN.match(text.strip())
    return timedelta(seconds=float(match["n"]) * _UNITS[match["unit"]]) if match else None


def parse_time(text: str) -> datetime:
    """An ISO-8601 time; without a zone it is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO-8601 time nor a span like 6h, 2d, 30m") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def newest_window_end(error_log_dir: Path) -> datetime | None:
    from pipeline.query import connect

    with connect(error_log_dir) as connection:
        (newest,) = connection.execute("SELECT epoch(max(window_end)) FROM errors").fetchone() or (None,)
    return datetime.fromtimestamp(newest, UTC) if newest is not None else None


def resolve_span(error_log_dir: Path, since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """(start, end) for a report or query; spans are taken back from ``until`` or the newest window."""
    end = parse_time(until) if until else None
    if since is None:
        return None, end
    span = parse_span(since)
    if span is None:
        return parse_time(since), end
    anchor = end or newest_window_end(error_log_dir)
    return (anchor - span if anchor is not None else None), end
