"""A directory of immutable, versioned checkpoints with an atomically moved ``current`` pointer.

Layout::

    registry/
      versions/v000001/          immutable checkpoints (see models.checkpoint)
      versions/v000002/
      CURRENT.json               {"current": "v000002", "history": ["v000001"]}, replaced atomically
      decisions.jsonl            one line per publish / promote / rollback, append-only

``promote`` pushes the old current onto the history; ``rollback`` pops it back. Readers (the running
consumer) only ever read ``CURRENT.json`` and an immutable version directory, so they never see a
half-written state. A version is verified (sha256, structure) before it becomes current.

>>> import tempfile
>>> registry = ModelRegistry(Path(tempfile.mkdtemp()))
>>> registry.current_version() is None
True
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.atomic import atomic_file
from models.checkpoint import (
    CheckpointError,
    DataFingerprint,
    LoadedCheckpoint,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from models.detector import AnomalyDetector

log = logging.getLogger(__name__)

POINTER_FILE = "CURRENT.json"
DECISIONS_FILE = "decisions.jsonl"
VERSION_PATTERN = re.compile(r"^v(\d{6})$")


class RegistryError(RuntimeError):
    """A registry operation was refused; the message says why and what is still current."""


@dataclass(frozen=True)
class VersionInfo:
    """One line of ``driftline model list``: a version, where it lives, when, and whether it serves."""

    version: str
    path: Path
    created_at: str
    is_current: bool
    threshold: float | None
    val_loss: float | None
    regime_thresholds: tuple[float, ...] = ()  # one per regime when the model judges by regime


class ModelRegistry:
    """Immutable model versions under ``<root>/versions/v000001/...`` and the ``CURRENT.json`` pointer.

    :meth:`publish` writes a version (and promotes it if asked), :meth:`promote` / :meth:`rollback`
    move the pointer (after verifying the target loads), :meth:`load_for_serving` is what the scorer
    loads; every decision is appended to ``decisions.jsonl``.

    >>> import tempfile
    >>> import numpy as np
    >>> from models.detector import AnomalyDetector
    >>> from models.training_config import TrainingConfig
    >>> detector = AnomalyDetector.fit(np.random.default_rng(0).normal(size=(300, 2)), window=8, hidden_size=4,
    ...                                latent_size=1, training=TrainingConfig(epochs=1, progress=False))
    >>> registry = ModelRegistry(Path(tempfile.mkdtemp()))
    >>> registry.publish(detector, promote=True), registry.publish(detector), registry.current_version()
    ('v000001', 'v000002', 'v000001')
    >>> registry.promote("v000002"), registry.rollback()
    ('v000002', 'v000001')
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # -- reading -----------------------------------------------------------------------------
    def _pointer(self) -> dict[str, Any]:
        """The parsed pointer file; anything malformed is a :class:`RegistryError` that says what is wrong."""
        where = self.root / POINTER_FILE
        try:
            pointer = json.loads(where.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return {"current": None, "history": []}
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise RegistryError(f"{where} is corrupt ({type(error).__name__}: {error}); fix or remove it") from None
        if not isinstance(pointer, dict):
            raise RegistryError(f"{where} holds a {type(pointer).__name__}, not an object; fix or remove it")
        current, history = pointer.get("current"), pointer.get("history", [])
        if current is not None and not (isinstance(current, str) and VERSION_PATTERN.match(current)):
            raise RegistryError(f"{where}: 'current' is {str(current)[:40]!r}, not a version name like v000003")
        if not isinstance(history, list) or not all(isinstance(v, str) and VERSION_PATTERN.match(v) for v in history):
            raise RegistryError(f"{where}: 'history' must be a list of version names")
        return {"current": current, "history": list(history)}

    def current_version(self) -> str | None:
        current: str | None = self._pointer()["current"]
        return current

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if VERSION_PATTERN.match(p.name))

    def path_of(self, version: str) -> Path:
        if not VERSION_PATTERN.match(version):
            raise RegistryError(f"{version!r} is not a version name (expected e.g. v000003)")
        path = self.versions_dir / version
        if not path.is_dir():
            raise RegistryError(f"version {version} does not exist in {self.root}")
        return path

    def load(self, version: str | None = None, device: str = "cpu") -> LoadedCheckpoint:
        """Load ``version`` (default: current) fully verified."""
        version = version or self.current_version()
        if version is None:
            raise RegistryError(f"registry {self.root} has no current model; train one with `driftline train`")
        return load_checkpoint(self.path_of(version), device)

    def load_for_serving(self, device: str = "cpu") -> LoadedCheckpoint:
        """The current version; if the pointer itself is malformed, the newest version that verifies.

        A scorer (re)started while someone broke ``CURRENT.json`` keeps serving instead of exiting; its
        watcher swaps to the right version as soon as the pointer is valid again.
        """
        try:
            current = self.current_version()
        except RegistryError as error:
            for version in reversed(self.versions()):
                try:
                    loaded = load_checkpoint(self.path_of(version), device)
                except CheckpointError:
                    continue
                log.error("%s; serving the newest verified version %s until it is fixed", error, version)
                return loaded
            raise
        return self.load(current, device=device)

    def list(self) -> list[VersionInfo]:
        current = self.current_version()
        infos = []
        for version in self.versions():
            path = self.versions_dir / version
            try:
                meta = read_metadata(path)
            except CheckpointError:
                infos.append(VersionInfo(version, path, "unreadable", version == current, None, None))
                continue
            threshold = (meta.get("threshold") or {}).get("value")
            val_loss = (meta.get("training") or {}).get("best_val_loss")
            regimes = tuple((r.get("threshold") or {}).get("value", float("nan")) for r in meta.get("regimes") or ())
            infos.append(
                VersionInfo(
                    version, path, meta.get("created_at", "?"), version == current, threshold, val_loss, regimes
                )
            )
        return infos

    # -- writing -----------------------------------------------------------------------------
    def _next_version(self) -> str:
        numbers = [int(VERSION_PATTERN.match(v).group(1)) for v in self.versions()]  # type: ignore[union-attr]
        return f"v{max(numbers, default=0) + 1:06d}"

    def publish(
        self,
        detector: AnomalyDetector,
        *,
        fingerprint: DataFingerprint | None = None,
        extra: dict[str, Any] | None = None,
        promote: bool = False,
        reason: str = "",
    ) -> str:
        """Write ``detector`` as a new immutable version; optionally make it current."""
        for _ in range(50):  # another writer may take the same number; the rename into place decides who wins
            version = self._next_version()
            try:
                save_checkpoint(
                    detector,
                    self.versions_dir / version,
                    fingerprint=fingerprint,
                    extra={"version": version, **(extra or {})},
                )
                break
            except FileExistsError:
                continue
        else:
            raise RegistryError(f"could not allocate a new version in {self.root}")
        self._log("publish", version=version, reason=reason)
        if promote:
            self.promote(version, reason=reason or "published")
        return version

    def promote(self, version: str, reason: str = "") -> str:
        """Make ``version`` current after verifying it loads; the old current goes on the history."""
        try:
            load_checkpoint(self.path_of(version))
        except CheckpointError as error:
            still = self.current_version() or "none"
            raise RegistryError(f"refusing to promote {version}: {error}; still serving {still}") from None
        try:
            pointer = self._pointer()
            replaced = None
        except RegistryError as error:  # promoting a verified version is how a corrupt pointer gets repaired
            log.warning("%s; replacing it with a pointer to %s (history starts afresh)", error, version)
            pointer, replaced = {"current": None, "history": []}, str(error)
        if pointer["current"] == version:
            return version
        history = [*pointer["history"], pointer["current"]] if pointer["current"] else pointer["history"]
        self._write_pointer({"current": version, "history": history})
        self._log("promote", version=version, previous=pointer["current"], reason=reason, replaced_corrupt=replaced)
        return version

    def rollback(self, reason: str = "") -> str:
        """Return to the previously current version (verified first); return its name."""
        pointer = self._pointer()
        if not pointer["history"]:
            raise RegistryError(f"nothing to roll back to: {pointer['current'] or 'no version'} is the first current")
        previous: str = pointer["history"][-1]
        try:
            load_checkpoint(self.path_of(previous))
        except CheckpointError as error:
            raise RegistryError(
                f"refusing to roll back to {previous}: {error}; still serving {pointer['current']}"
            ) from None
        self._write_pointer({"current": previous, "history": pointer["history"][:-1]})
        self._log("rollback", version=previous, previous=pointer["current"], reason=reason)
        return previous

    def _write_pointer(self, pointer: dict[str, Any]) -> None:
        with atomic_file(self.root / POINTER_FILE, "w") as handle:
            json.dump({**pointer, "updated_at": datetime.now(UTC).isoformat(timespec="seconds")}, handle)

    def _log(self, action: str, **fields: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "action": action, **fields}
        with (self.root / DECISIONS_FILE).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
