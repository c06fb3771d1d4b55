"""SQL over the Parquet logs: DuckDB with ``errors``, ``drift_events``, ``retraining`` and ``alarms`` views.

Each view reads every Parquet part under ``<error_log_dir>/<table>/date=.../`` with Hive partitioning
(so ``date`` is a column) and ``union_by_name``: parts written by an older schema version simply have
NULL in the columns added since. A table with no part yet is an empty view with the documented
columns, so a query never fails just because nothing drifted.

>>> import tempfile
>>> connection = connect(Path(tempfile.mkdtemp()))
>>> connection.execute("SELECT count(*) AS n FROM drift_events").fetchall()
[(0,)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd

TABLES = ("errors", "drift_events", "retraining", "alarms")

# columns every version of each table has had, for the empty views (see docs/schemas.md)
_EMPTY_COLUMNS = {
    "errors": {
        "sensor_id": "VARCHAR",
        "window_start": "TIMESTAMPTZ",
        "window_end": "TIMESTAMPTZ",
        "error": "FLOAT",
        "threshold": "FLOAT",
        "exceeded": "BOOLEAN",
        "anomaly": "BOOLEAN",
        "drift": "BOOLEAN",
        "model_version": "VARCHAR",
        "source_topic": "VARCHAR",
        "source_partition": "INTEGER",
        "source_offset_start": "BIGINT",
        "source_offset_end": "BIGINT",
        "ingest_time": "TIMESTAMPTZ",
        "date": "DATE",
    },
    "drift_events": {
        "ts": "TIMESTAMPTZ",
        "scope": "VARCHAR",
        "sensor_id": "VARCHAR",
        "detector": "VARCHAR",
        "model_version": "VARCHAR",
        "observations": "BIGINT",
        "recent_mean_error": "DOUBLE",
        "date": "DATE",
    },
    "retraining": {
        "at": "VARCHAR",
        "trigger": "VARCHAR",
        "outcome": "VARCHAR",
        "reason": "VARCHAR",
        "current_version": "VARCHAR",
        "candidate_version": "VARCHAR",
        "recent_windows": "BIGINT",
        "replay_windows": "BIGINT",
        "current_recent_error": "DOUBLE",
        "candidate_recent_error": "DOUBLE",
        "current_replay_error": "DOUBLE",
        "candidate_replay_error": "DOUBLE",
        "threshold_before": "DOUBLE",
        "threshold_after": "DOUBLE",
        "seconds": "DOUBLE",
        "date": "DATE",
    },
    "alarms": {
        "at": "TIMESTAMPTZ",
        "event": "VARCHAR",
        "alarm_id": "VARCHAR",
        "sensor_id": "VARCHAR",
        "severity": "VARCHAR",
        "opened_at": "TIMESTAMPTZ",
        "last_anomalous_at": "TIMESTAMPTZ",
        "closed_at": "TIMESTAMPTZ",
        "closed_by": "VARCHAR",
        "peak_error": "DOUBLE",
        "peak_ratio": "DOUBLE",
        "windows": "BIGINT",
        "top_channels": "VARCHAR[]",
        "model_version": "VARCHAR",
        "source_topic": "VARCHAR",
        "source_partition": "INTEGER",
        "source_offset": "BIGINT",
        "suspected_regime_change": "BOOLEAN",
        "suppressed": "BOOLEAN",
        "date": "DATE",
    },
}

OutputFormat = Literal["table", "csv", "json", "parquet"]


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def connect(error_log_dir: Path, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per log table (empty views where nothing was written yet)."""
    connection = duckdb.connect(database)
    connection.execute("SET TimeZone = 'UTC'")
    for table in TABLES:
        folder = Path(error_log_dir) / table
        if any(folder.glob("**/*.parquet")):
            pattern = _sql_string(str(folder / "**" / "*.parquet"))
            source = f"read_parquet({pattern}, hive_partitioning = true, union_by_name = true)"
            select = f"SELECT * FROM {source}"
        else:
            columns = ", ".join(f'NULL::{kind} AS "{name}"' for name, kind in _EMPTY_COLUMNS[table].items())
            select = f"SELECT {columns} WHERE false"
        if table == "retraining":  # `at` is an ISO string (and an SQL keyword): offer a typed twin
            select = f'SELECT *, CAST("at" AS TIMESTAMPTZ) AS decided_at FROM ({select})'
        connection.execute(f"CREATE VIEW {table} AS {select}")
    return connection


def run_query(error_log_dir: Path, sql: str) -> pd.DataFrame:
    """Run ``sql`` against the views and return the result as a DataFrame.

    >>> import tempfile
    >>> run_query(Path(tempfile.mkdtemp()), "SELECT 1 AS one").to_dict("records")
    [{'one': 1}]
    """
    with connect(error_log_dir) as connection:
        return connection.execute(sql).df()


def write_result(frame: pd.DataFrame, output_format: OutputFormat, out: Path | None = None) -> str | None:
    """Render ``frame`` as text (table/csv/json) or write it to ``out`` (any format; parquet needs ``out``)."""
    if output_format == "parquet":
        if out is None:
            raise ValueError("--format parquet needs --out FILE")
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
        return None
    if output_format == "csv":
        text = frame.to_csv(index=False)
    elif output_format == "json":
        text = frame.to_json(orient="records", date_format="iso", lines=True)
    else:
        with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
            text = frame.to_string(index=False) if len(frame) else "(no rows)"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        return None
    return text
