"""Reading sensor tables (CSV or Parquet) into a time-indexed frame of channel columns.

>>> import io
>>> import pandas as pd
>>> frame = read_readings(io.StringIO("datetime;flow;anomaly\\n2020-01-01 00:00:00;1.5;0\\n"))
>>> list(frame.columns), isinstance(frame.index, pd.DatetimeIndex)
(['flow', 'anomaly'], True)
>>> channel_columns(frame)
['flow']
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

TIME_COLUMNS = ("datetime", "timestamp", "time", "ts")
LABEL_COLUMNS = ("anomaly", "anomaly_kind", "changepoint", "label", "is_anomaly", "regime")


def _sniff_separator(head: str) -> str:
    first_line = head.splitlines()[0] if head else ""
    return max((";", ",", "\t"), key=first_line.count)


def read_readings(source: Path | str | io.TextIOBase, time_column: str | None = None) -> pd.DataFrame:
    """Load a CSV (``,``/``;``/tab, sniffed) or Parquet table, indexed by its time column if it has one."""
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(source)
    else:
        if isinstance(source, (str, Path)):
            with open(source) as handle:
                text = handle.read()
        else:
            text = source.read()
        frame = pd.read_csv(io.StringIO(text), sep=_sniff_separator(text[:4096]))
    column = time_column or next((c for c in frame.columns if c.lower() in TIME_COLUMNS), None)
    if column is not None:
        if column not in frame.columns:
            raise ValueError(f"time column {column!r} not found; columns are {list(frame.columns)}")
        frame[column] = pd.to_datetime(frame[column])
        frame = frame.set_index(column).sort_index()
    return frame


def channel_columns(frame: pd.DataFrame, channels: list[str] | None = None) -> list[str]:
    """The sensor channels: ``channels`` if given (checked), else every numeric non-label column."""
    if channels:
        missing = [c for c in channels if c not in frame.columns]
        if missing:
            raise ValueError(f"channels {missing} not in the data; columns are {list(frame.columns)}")
        return list(channels)
    numeric = frame.select_dtypes("number").columns
    found = [c for c in numeric if c.lower() not in LABEL_COLUMNS and frame[c].notna().any()]
    if not found:
        raise ValueError("no numeric sensor columns found; name them with --channels")
    return found
