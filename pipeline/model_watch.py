"""Hot-swap: notice a new current model in the registry, load it off the hot path, swap between batches.

A background thread polls the registry's ``CURRENT.json`` (one small file read) every ``poll_s``; when it
names a version other than the one serving, the thread loads and verifies that checkpoint. The scoring
loop's ``before_batch`` hook then swaps the loaded model in between two micro-batches: no restart, no
reading skipped or scored twice, drift detectors reset. A checkpoint that fails verification is
refused with a logged reason and the old model keeps serving (it is not retried until the pointer moves).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from models.checkpoint import CheckpointError
from models.detector import AnomalyDetector
from models.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)


class RegistryWatcher:
    def __init__(self, registry: ModelRegistry, serving_version: str, poll_s: float = 1.0, device: str = "cpu") -> None:
        self.registry = registry
        self.serving_version = serving_version
        self.poll_s = poll_s
        self.device = device
        self.refused: str | None = None
        self.last_swap_ms: float | None = None
        self._pending: tuple[AnomalyDetector, str] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RegistryWatcher:
        self._thread = threading.Thread(target=self._watch, name="registry-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check_once(self) -> None:
        """Load the current version if it is new (what the thread does every ``poll_s``)."""
        try:
            version = self.registry.current_version()
        except RegistryError as error:
            log.error("cannot read the model registry (%s); still serving %s", error, self.serving_version)
            return
        with self._lock:
            pending_version = self._pending[1] if self._pending else None
        if version is None or version in (self.serving_version, pending_version, self.refused):
            return
        try:
            loaded = self.registry.load(version, device=self.device)
        except (CheckpointError, RegistryError) as error:
            self.refused = version
            log.error("new model %s refused: %s; still serving %s", version, error, self.serving_version)
            return
        if loaded.detector.threshold is None:
            self.refused = version
            log.error("new model %s has no threshold; still serving %s", version, self.serving_version)
            return
        with self._lock:
            self._pending = (loaded.detector, version)
        log.info("model %s loaded in the background; it will serve from the next micro-batch", version)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check_once()

    def take_pending(self) -> tuple[AnomalyDetector, str] | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


def hot_swap_hook(watcher: RegistryWatcher) -> Callable[..., None]:
    """A ``before_batch`` hook for :class:`pipeline.consumer.ScoringLoop` that swaps in loaded models."""

    def swap_if_ready(loop) -> None:  # type: ignore[no-untyped-def]
        pending = watcher.take_pending()
        if pending is None:
            return
        detector, version = pending
        if detector.channels != loop.scorer.channels or detector.window != loop.scorer.window:
            watcher.refused = version
            log.error(
                "model %s expects channels %s / window %d, serving needs %s / %d; still serving %s",
                version,
                detector.channels,
                detector.window,
                loop.scorer.channels,
                loop.scorer.window,
                watcher.serving_version,
            )
            return
        started = time.perf_counter()
        previous = watcher.serving_version
        loop.swap_model(detector, version)
        watcher.serving_version = version
        watcher.last_swap_ms = (time.perf_counter() - started) * 1000
        log.info("hot-swapped model %s -> %s in %.2f ms", previous, version, watcher.last_swap_ms)

    return swap_if_ready
