"""Checkpoints load without running code and refuse anything tampered; the registry promotes, rolls back."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    DataFingerprint,
    load_checkpoint,
    save_checkpoint,
)
from models.detector import AnomalyDetector
from models.registry import ModelRegistry, RegistryError
from models.training import TrainingConfig


@pytest.fixture(scope="module")
def detector() -> AnomalyDetector:
    rng = np.random.default_rng(0)
    readings = np.cumsum(rng.normal(size=(400, 3)), axis=0) * 0.1
    return AnomalyDetector.fit(
        readings,
        window=10,
        hidden_size=8,
        latent_size=2,
        channels=("flow", "pressure", "current"),
        relative_channels=("current",),
        training=TrainingConfig(epochs=2, progress=False),
    )


def test_round_trip_keeps_scores_and_everything_needed_to_serve(detector: AnomalyDetector, tmp_path: Path) -> None:
    readings = np.random.default_rng(3).normal(size=(60, 3))
    path = save_checkpoint(detector, tmp_path / "ckpt", fingerprint=DataFingerprint.of(readings, sources=["x.csv"]))
    loaded = load_checkpoint(path)
    restored = loaded.detector
    assert restored.channels == ("flow", "pressure", "current")
    assert restored.scaler == detector.scaler
    assert restored.scaler.relative == (2,)
    assert restored.threshold == detector.threshold
    np.testing.assert_allclose(restored.score(readings)[1].error, detector.score(readings)[1].error, rtol=1e-6)
    assert loaded.metadata["data_fingerprint"]["rows"] == 60
    assert loaded.metadata["training"]["history"], "training curves travel with the checkpoint"


def test_a_per_step_bottleneck_survives_the_round_trip(tmp_path: Path) -> None:
    readings = np.random.default_rng(4).normal(size=(300, 3))
    fitted = AnomalyDetector.fit(
        readings, window=8, hidden_size=8, latent_size=2, bottleneck="step",
        training=TrainingConfig(epochs=1, progress=False),
    )  # fmt: skip
    restored = load_checkpoint(save_checkpoint(fitted, tmp_path / "ckpt")).detector
    assert restored.model.config.bottleneck == "step"
    np.testing.assert_allclose(restored.score(readings)[1].error, fitted.score(readings)[1].error, rtol=1e-6)


def test_checkpoints_are_immutable(detector: AnomalyDetector, tmp_path: Path) -> None:
    path = save_checkpoint(detector, tmp_path / "ckpt")
    with pytest.raises(FileExistsError):
        save_checkpoint(detector, path)


def test_tampered_weights_are_refused(detector: AnomalyDetector, tmp_path: Path) -> None:
    path = save_checkpoint(detector, tmp_path / "ckpt")
    blob = bytearray((path / WEIGHTS_FILE).read_bytes())
    blob[-5] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


def test_truncated_weights_are_refused(detector: AnomalyDetector, tmp_path: Path) -> None:
    path = save_checkpoint(detector, tmp_path / "ckpt")
    weights = path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or tampered"):
        load_checkpoint(path)


def test_foreign_checkpoints_are_refused_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):  # what a malicious pickle would run on load
            return (marker.touch, ())

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"model": Exploit()}, foreign / "model.pt")
    (foreign / WEIGHTS_FILE).write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError, match="not a driftline checkpoint"):
        load_checkpoint(foreign)
    (foreign / META_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a driftline checkpoint"):
        load_checkpoint(foreign)
    assert not marker.exists()


def test_pickled_weights_with_a_valid_looking_manifest_are_refused(detector: AnomalyDetector, tmp_path: Path) -> None:
    path = save_checkpoint(detector, tmp_path / "ckpt")
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (marker.touch, ())

    (path / WEIGHTS_FILE).write_bytes(pickle.dumps(Exploit()))
    meta = json.loads((path / META_FILE).read_text())
    from models.checkpoint import file_sha256

    meta["weights_sha256"] = file_sha256(path / WEIGHTS_FILE)  # an attacker can fix the hash too
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="valid detector"):
        load_checkpoint(path)
    assert not marker.exists()


def test_mismatched_architecture_is_refused(detector: AnomalyDetector, tmp_path: Path) -> None:
    path = save_checkpoint(detector, tmp_path / "ckpt")
    meta = json.loads((path / META_FILE).read_text())
    meta["model"]["config"]["hidden_size"] = 99
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="valid detector"):
        load_checkpoint(path)


def test_newer_format_version_says_so(detector: AnomalyDetector, tmp_path: Path) -> None:
    path = save_checkpoint(detector, tmp_path / "ckpt")
    meta = json.loads((path / META_FILE).read_text())
    meta["format_version"] = 99
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_registry_promote_and_rollback(detector: AnomalyDetector, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="no current model"):
        registry.load()
    v1 = registry.publish(detector, promote=True)
    v2 = registry.publish(detector)
    assert registry.current_version() == v1, "publishing alone does not promote"
    registry.promote(v2, reason="better")
    assert registry.current_version() == v2
    assert [info.is_current for info in registry.list()] == [False, True]
    assert registry.rollback() == v1
    assert registry.current_version() == v1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    actions = [json.loads(line)["action"] for line in (registry.root / "decisions.jsonl").read_text().splitlines()]
    assert actions == ["publish", "promote", "publish", "promote", "rollback"]


def test_registry_refuses_to_promote_a_broken_version(detector: AnomalyDetector, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    good = registry.publish(detector, promote=True)
    bad = registry.publish(detector)
    (registry.path_of(bad) / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(RegistryError, match=f"still serving {good}"):
        registry.promote(bad)
    assert registry.current_version() == good
    assert registry.list()[1].version == bad
