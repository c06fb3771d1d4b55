"""A self-contained HTML report of the error log, with the figures also written as PNGs.

Figures (matplotlib's object API on plain ``Figure`` objects: no pyplot, no display, no global state):

- ``errors_<sensor>.png``: reconstruction error over time per sensor, the threshold as a step line,
  anomalies as red dots, drift events as dashed vertical lines, model versions as shaded bands;
- ``top_anomalies.png``: per-channel contributions of the most anomalous windows (which channel drives
  each alarm);
- ``retraining.png``: each retraining decision: current vs candidate error on the recent slice and on
  the replay buffer, coloured by outcome;
- ``training_curves.png``: train and validation loss per epoch of every model version in the registry.

The HTML embeds the PNGs (base64), so it can be mailed or attached to a ticket as one file.

>>> import tempfile
>>> from pathlib import Path
>>> report = build_report(Path(tempfile.mkdtemp()), None, Path(tempfile.mkdtemp()))
>>> report.html.name, report.figures
('index.html', [])
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from pipeline.query import connect

MAX_SENSOR_FIGURES = 12
MAX_POINTS_PER_SENSOR = 5000


@dataclass
class Report:
    html: Path
    figures: list[Path] = field(default_factory=list)
    sensors: list[str] = field(default_factory=list)
    windows: int = 0


def _load(error_log_dir: Path, since: datetime | None, until: datetime | None, sensors: list[str] | None):
    error_clauses, error_params = _time_range("window_end", since, until)
    if sensors:
        error_clauses.append(f"sensor_id IN ({', '.join('?' for _ in sensors)})")
        error_params.extend(sensors)
    event_clauses, event_params = _time_range("ts", since, until)  # fleet events concern every sensor
    with connect(error_log_dir) as connection:
        errors = connection.execute(
            f"SELECT * FROM errors {_where(error_clauses)} ORDER BY window_end", error_params
        ).df()
        drift = connection.execute(f"SELECT * FROM drift_events {_where(event_clauses)} ORDER BY ts", event_params).df()
        retraining = connection.execute("SELECT * FROM retraining ORDER BY decided_at").df()
    return errors, drift, retraining


def _time_range(column: str, since: datetime | None, until: datetime | None) -> tuple[list[str], list[object]]:
    """SQL conditions (with ``?`` placeholders) and their parameters for ``since <= column <= until``."""
    clauses: list[str] = []
    params: list[object] = []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} <= ?")
        params.append(until)
    return clauses, params


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _version_bands(ax, frame: pd.DataFrame) -> None:
    """Shade each model version's stretch of time; label it at the top."""
    versions = frame["model_version"].to_numpy()
    times = frame["window_end"]
    change = np.flatnonzero(versions[1:] != versions[:-1]) + 1
    starts = [0, *change.tolist()]
    stops = [*(change - 1).tolist(), len(frame) - 1]
    for k, (a, b) in enumerate(zip(starts, stops, strict=True)):
        ax.axvspan(times.iloc[a], times.iloc[b], color="tab:blue" if k % 2 else "tab:green", alpha=0.06, lw=0)
        ax.text(times.iloc[a], 1.0, f" {versions[a]}", transform=ax.get_xaxis_transform(), va="top", fontsize=7)
        if k:
            ax.axvline(times.iloc[a], color="black", lw=1.2, alpha=0.7)


def _sensor_figure(sensor: str, frame: pd.DataFrame, drift: pd.DataFrame, out: Path) -> Path:
    if len(frame) > MAX_POINTS_PER_SENSOR:  # keep every anomaly, thin the rest
        keep = frame["anomaly"].to_numpy() | (np.arange(len(frame)) % (len(frame) // MAX_POINTS_PER_SENSOR + 1) == 0)
        frame = frame[keep]
    figure = Figure(figsize=(11, 3.2))
    ax = figure.subplots()
    _version_bands(ax, frame)
    ax.plot(frame["window_end"], frame["error"], lw=0.8, color="tab:blue", label="reconstruction error")
    ax.step(frame["window_end"], frame["threshold"], where="post", color="tab:orange", lw=1.2, label="threshold")
    alarms = frame[frame["anomaly"]]
    ax.scatter(alarms["window_end"], alarms["error"], s=9, color="tab:red", zorder=3, label="anomaly")
    if len(drift):
        for scope, style in (("sensor", {"lw": 0.6, "alpha": 0.5}), ("fleet", {"lw": 1.6, "alpha": 0.9})):
            mine = drift[(drift["scope"] == scope) & ((scope == "fleet") | (drift["sensor_id"] == sensor))]
            for k, ts in enumerate(mine["ts"]):
                label = f"drift ({'fleet-wide' if scope == 'fleet' else 'this sensor'})" if k == 0 else None
                ax.axvline(ts, color="tab:purple", ls="--", label=label, **style)
    ax.set_yscale("log")
    ax.set_ylabel("error (log)")
    ax.set_title(f"{sensor}: reconstruction error, threshold, anomalies, drift events, model versions", fontsize=10)
    locator = mdates.AutoDateLocator(maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    return _save(figure, out / f"errors_{_file_safe(sensor)}.png")


def alarm_episodes(errors: pd.DataFrame) -> pd.DataFrame:
    """The peak window of each alarm episode (a sensor's run of anomalous windows, gaps up to one window).

    >>> t = pd.to_datetime([0, 1, 2, 50, 51], unit="s", utc=True)
    >>> frame = pd.DataFrame({"sensor_id": "s", "window_start": t - pd.Timedelta("5s"), "window_end": t,
    ...                       "error": [1.0, 3.0, 2.0, 5.0, 4.0], "anomaly": True})
    >>> alarm_episodes(frame)[["error", "windows"]].to_dict("records")
    [{'error': 5.0, 'windows': 2}, {'error': 3.0, 'windows': 3}]
    """
    flagged = errors[errors["anomaly"]].sort_values(["sensor_id", "window_end"])
    if flagged.empty:
        return flagged.assign(windows=pd.Series(dtype=int))
    span = flagged["window_end"] - flagged["window_start"]
    gap = flagged.groupby("sensor_id")["window_end"].diff()
    episode = ((gap.isna()) | (gap > span)).cumsum()
    peaks = flagged.loc[flagged.groupby(episode)["error"].idxmax()]
    peaks = peaks.assign(windows=flagged.groupby(episode).size().to_numpy())
    return peaks.sort_values("error", ascending=False)


def _top_anomalies_figure(errors: pd.DataFrame, out: Path, top: int) -> Path | None:
    channel_columns = [c for c in errors.columns if c.startswith("error_")]
    flagged = alarm_episodes(errors).head(top) if len(errors) else errors
    if flagged.empty or not channel_columns:
        return None
    shares = flagged[channel_columns].to_numpy(dtype=float)
    labels = [f"{r.sensor_id} {r.window_end:%m-%d %H:%M:%S} ({r.windows} windows)" for r in flagged.itertuples()]
    figure = Figure(figsize=(11, 0.35 * len(flagged) + 1.5))
    ax = figure.subplots()
    left = np.zeros(len(flagged))
    colours = colormaps["tab10"]
    for i, column in enumerate(channel_columns):
        ax.barh(labels, shares[:, i], left=left, color=colours(i % 10), label=column.removeprefix("error_"))
        left += shares[:, i]
    ax.invert_yaxis()
    ax.set_xlabel("sum of per-channel errors at the episode's peak window (each colour: one channel's share)")
    ax.set_title(f"top {len(flagged)} alarm episodes: which channel drives each alarm", fontsize=10)
    ax.legend(fontsize=7, ncol=min(len(channel_columns), 6), loc="lower right")
    return _save(figure, out / "top_anomalies.png")


def _retraining_figure(retraining: pd.DataFrame, out: Path) -> Path | None:
    rows = retraining[retraining["outcome"] != "skipped"] if len(retraining) else retraining
    if rows.empty:
        return None
    figure = Figure(figsize=(11, 3.2))
    axes = figure.subplots(1, 2)
    x = np.arange(len(rows))
    names = [f"{r.at[5:16]}\n{r.outcome}" for r in rows.itertuples()]
    for ax, (current, candidate, title) in zip(
        axes,
        [
            ("current_recent_error", "candidate_recent_error", "held-out recent slice"),
            ("current_replay_error", "candidate_replay_error", "held-out replay windows (forgetting guard)"),
        ],
        strict=True,
    ):
        ax.bar(x - 0.2, rows[current].astype(float).fillna(0), 0.4, label="current model", color="tab:gray")
        colours = ["tab:green" if o == "promoted" else "tab:red" for o in rows["outcome"]]
        ax.bar(x + 0.2, rows[candidate].astype(float).fillna(0), 0.4, label="candidate", color=colours)
        ax.set_xticks(x, names, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("mean error")
        ax.legend(fontsize=7)
    figure.suptitle("retraining decisions (green: promoted, red: rejected)", fontsize=10)
    return _save(figure, out / "retraining.png")


def _training_curves_figure(registry_dir: Path | None, out: Path) -> Path | None:
    if registry_dir is None or not (registry_dir / "versions").is_dir():
        return None
    curves = {}
    for meta in sorted((registry_dir / "versions").glob("*/checkpoint.json")):
        try:
            history = (json.loads(meta.read_text()).get("training") or {}).get("history") or []
        except (OSError, json.JSONDecodeError):
            continue
        if history:
            curves[meta.parent.name] = history
    if not curves:
        return None
    figure = Figure(figsize=(11, 3.2))
    ax = figure.subplots()
    colours = colormaps["tab10"]
    for i, (version, history) in enumerate(curves.items()):
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], color=colours(i % 10), lw=1, label=f"{version} train")
        ax.plot(epochs, [h["val_loss"] for h in history], color=colours(i % 10), lw=1, ls="--", label=f"{version} val")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (log)")
    ax.set_title("training curves per model version (fine-tunes start from their parent's weights)", fontsize=10)
    ax.legend(fontsize=7, ncol=4)
    return _save(figure, out / "training_curves.png")


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _table(frame: pd.DataFrame, columns: list[str], max_rows: int = 30) -> str:
    present = [c for c in columns if c in frame.columns]
    if frame.empty or not present:
        return "<p class='muted'>none</p>"
    return frame[present].head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)


def _summary(errors: pd.DataFrame, drift: pd.DataFrame, retraining: pd.DataFrame) -> list[tuple[str, str]]:
    if errors.empty:
        return [("windows", "0 (nothing in the error log for this selection)")]
    versions = errors.groupby("model_version", sort=False)["window_end"].agg(["min", "count"])
    return [
        (
            "time range",
            f"{errors['window_end'].min():%Y-%m-%d %H:%M:%S} – {errors['window_end'].max():%Y-%m-%d %H:%M:%S} UTC",
        ),
        ("sensors", f"{errors['sensor_id'].nunique()}"),
        ("windows scored", f"{len(errors):,}"),
        ("anomalous windows", f"{int(errors['anomaly'].sum()):,} ({100 * errors['anomaly'].mean():.2f} %)"),
        ("drift events", f"{len(drift)} ({int((drift['scope'] == 'fleet').sum()) if len(drift) else 0} fleet-wide)"),
        (
            "model versions",
            ", ".join(
                f"{v} from {row['min']:%m-%d %H:%M:%S} ({row['count']:,} windows)" for v, row in versions.iterrows()
            ),
        ),
        (
            "retraining runs",
            ", ".join(f"{o}: {n}" for o, n in retraining["outcome"].value_counts().items())
            if len(retraining)
            else "none",
        ),
    ]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 2px 10px; text-align: left; }
tr:nth-child(even) { background: #f6f6f6; } img { max-width: 100%; } .muted { color: #888; }
"""


def build_report(
    error_log_dir: Path,
    registry_dir: Path | None,
    out_dir: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    sensors: list[str] | None = None,
    top: int = 10,
) -> Report:
    """Write ``out_dir/index.html`` and its PNGs from the logs under ``error_log_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    errors, drift, retraining = _load(Path(error_log_dir), since, until, sensors)
    figures: list[Path] = []
    sections: list[str] = []
    names = sorted(errors["sensor_id"].unique()) if len(errors) else []
    ranked = (
        errors.groupby("sensor_id")["anomaly"].mean().sort_values(ascending=False).index.tolist()[:MAX_SENSOR_FIGURES]
        if len(errors)
        else []
    )
    for sensor in sorted(ranked):
        figures.append(_sensor_figure(sensor, errors[errors["sensor_id"] == sensor], drift, out_dir))
    extra = [
        ("Which channels drive the top anomalies", _top_anomalies_figure(errors, out_dir, top)),
        ("Retraining decisions", _retraining_figure(retraining, out_dir)),
        ("Training curves", _training_curves_figure(registry_dir, out_dir)),
    ]
    sections.append("<h2>Error over time per sensor</h2>")
    if len(names) > len(ranked):
        sections.append(f"<p class='muted'>{len(ranked)} of {len(names)} sensors, highest anomaly rate first.</p>")
    sections += [_img(path) for path in figures] or ["<p class='muted'>no scored windows</p>"]
    for title, path in extra:
        sections.append(f"<h2>{html.escape(title)}</h2>")
        if path is not None:
            figures.append(path)
            sections.append(_img(path))
        else:
            sections.append("<p class='muted'>nothing to show yet</p>")
        if title == "Retraining decisions":
            sections.append(
                _table(
                    retraining,
                    ["at", "trigger", "outcome", "reason", "current_version", "candidate_version", "recent_windows"],
                )
            )
    flagged = alarm_episodes(errors).head(top) if len(errors) else errors
    sections.insert(
        0,
        "<h2>Top alarm episodes (peak window of each)</h2>"
        + _table(
            flagged, ["sensor_id", "window_start", "window_end", "windows", "error", "threshold", "model_version"]
        ),
    )
    sections.insert(
        1,
        "<h2>Drift events</h2>"
        + _table(drift, ["ts", "scope", "sensor_id", "detector", "model_version", "observations", "recent_mean_error"]),
    )
    summary = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _summary(errors, drift, retraining)
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>driftline report</title>"
        f"<style>{_STYLE}</style></head><body><h1>driftline report</h1>"
        f"<p class='muted'>{html.escape(str(error_log_dir))}, generated {generated}</p>"
        f"<table>{summary}</table>{''.join(sections)}</body></html>"
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return Report(index, figures, names, len(errors))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<p><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'></p>"
