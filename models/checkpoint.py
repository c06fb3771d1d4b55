"""Self-describing checkpoints that load without executing code.

A checkpoint is a directory of two files:

- ``weights.safetensors``: the network's tensors (safetensors: plain data, no pickle);
- ``checkpoint.json``: format tag and version, network config, scaler, threshold (and the per-regime
  thresholds retraining adds after a regime change, :mod:`models.regimes`), alarm filter, channel
  names, training curves and metrics, a fingerprint of the training data, and the sha256 of the
  weights file.

:func:`load_checkpoint` is the one loader: it checks the format tag, the sha256, and that the tensors
match the network the JSON describes, and refuses anything else with :class:`CheckpointError`.

>>> import tempfile, numpy as np
>>> from models.detector import AnomalyDetector
>>> from models.training import TrainingConfig
>>> normal = np.random.default_rng(0).normal(size=(300, 2))
>>> detector = AnomalyDetector.fit(normal, window=10, hidden_size=8, latent_size=2,
...                                training=TrainingConfig(epochs=1, progress=False))
>>> path = save_checkpoint(detector, Path(tempfile.mkdtemp()) / "ckpt")
>>> load_checkpoint(path).detector.threshold == detector.threshold
True
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.atomic import fsync_dir
from models.detector import AnomalyDetector
from models.lstm_ae import LSTMAEConfig, LSTMAutoencoder
from models.preprocessing import StandardScaler
from models.regimes import Regimes
from models.threshold import AlarmFilter, Threshold

FORMAT = "driftline-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with or foreign; the message says which and where."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    detector: AnomalyDetector
    metadata: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class DataFingerprint:
    """What the model was trained on, without storing the data: shape, a content hash, a time range."""

    rows: int
    channels: int
    sha256: str
    start: str | None = None
    end: str | None = None
    sources: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        readings: np.ndarray,
        start: str | None = None,
        end: str | None = None,
        sources: list[str] | None = None,
    ) -> DataFingerprint:
        digest = hashlib.sha256(np.ascontiguousarray(readings, dtype=np.float64).tobytes()).hexdigest()
        return cls(int(readings.shape[0]), int(readings.shape[1]), digest, start, end, sources or [])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    detector: AnomalyDetector,
    path: Path,
    *,
    fingerprint: DataFingerprint | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``detector`` to the new directory ``path`` atomically (temp dir, fsync, rename).

    Refuses to overwrite: checkpoints are immutable once written.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"checkpoint {path} already exists; checkpoints are immutable")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        weights = staging / WEIGHTS_FILE
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in detector.model.state_dict().items()}
        save_file(state, str(weights))
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": {"type": "lstm_autoencoder", "config": detector.model.config.to_dict()},
            "channels": list(detector.channels),
            "scaler": detector.scaler.to_dict(),
            "threshold": detector.threshold.to_dict() if detector.threshold else None,
            "regimes": detector.regimes.to_list() if detector.regimes else None,
            "sample_period_s": detector.sample_period_s,
            "alarm": {"k": detector.alarm.k, "n": detector.alarm.n},
            "training": detector.training.to_dict() if detector.training else None,
            "data_fingerprint": fingerprint.__dict__ if fingerprint else None,
            "weights_sha256": file_sha256(weights),
            **(extra or {}),
        }
        (staging / META_FILE).write_text(json.dumps(metadata, indent=2, allow_nan=False))
        for item in (weights, staging / META_FILE):
            with item.open("rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(staging, path)
        except OSError as error:  # another writer renamed its checkpoint to the same name first
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(f"checkpoint {path} already exists; checkpoints are immutable") from error
            raise
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    """Parse and check the JSON half of a checkpoint (format tag and version) without touching weights."""
    meta_file = Path(path) / META_FILE
    try:
        metadata = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a driftline checkpoint: {META_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} is not valid JSON ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a driftline checkpoint (format tag {metadata.get('format')!r})"
            if isinstance(metadata, dict)
            else f"{path}: {META_FILE} is not an object"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {metadata.get('format_version')}; this driftline reads "
            f"version {FORMAT_VERSION}"
        )
    return metadata


def load_checkpoint(path: Path, device: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the detector stored at ``path``; raise :class:`CheckpointError` on any inconsistency."""
    path = Path(path)
    metadata = read_metadata(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS_FILE} is missing")
    actual = file_sha256(weights)
    if actual != metadata.get("weights_sha256"):
        raise CheckpointError(
            f"checkpoint {path} failed its sha256 check (weights {actual[:12]}..., "
            f"recorded {str(metadata.get('weights_sha256'))[:12]}...): truncated or tampered with"
        )
    try:
        config = LSTMAEConfig.from_dict(metadata["model"]["config"])
        scaler = StandardScaler.from_dict(metadata["scaler"])
        threshold = Threshold.from_dict(metadata["threshold"]) if metadata.get("threshold") else None
        regimes = Regimes.from_list(metadata["regimes"], config.n_channels) if metadata.get("regimes") else None
        alarm = AlarmFilter(**metadata.get("alarm", {"k": 1, "n": 1}))
        channels = tuple(metadata["channels"])
        model = LSTMAutoencoder(config)
        model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(f"checkpoint {path} does not describe a valid detector: {error}") from None
    if len(channels) != config.n_channels:
        raise CheckpointError(f"checkpoint {path}: {len(channels)} channel names for {config.n_channels} channels")
    model.to(device).eval()
    detector = AnomalyDetector(model, scaler, threshold, alarm, channels, regimes=regimes)
    period = metadata.get("sample_period_s")
    if isinstance(period, (int, float)) and not isinstance(period, bool) and period > 0:
        detector.sample_period_s = float(period)
    return LoadedCheckpoint(detector, metadata, path)
