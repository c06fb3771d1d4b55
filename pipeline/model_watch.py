"""Hot-swap: notice a new current model in the registry, load it off the hot path, swap between batches.

A background thread polls the registry's ``CURRENT.json`` (one small file read) every ``poll_s``; when it
names a version other than the one serving, the thread loads and verifies that checkpoint. The scoring
loop's ``before_batch`` hook then swaps the loaded model in between two micro-batches: no restart, no
reading skipped or scored twice, drift detectors reset. A checkpoint that fails verification is
refused with a logged reason and the old model keeps serving (it is not retried until the pointer moves).

The watcher cannot die of what it reads: a malformed pointer (``[]``, ``{"current": 5}``, invalid UTF-8)
or a broken version is refused with a logged reason and counted (``refusals``, the metric
``driftline_models_refused_total``), and the thread keeps watching, so a later valid version is still
swapped in. ``alive`` and ``last_check`` feed the scorer's ``/readyz``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from models.checkpoint import CheckpointError
from models.detector import AnomalyDetector
from models.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)


class RegistryWatcher:
    """Polls the registry's pointer in a thread and loads a new current version for the loop to swap in."""

    def __init__(
        self,
        registry: ModelRegistry,
        serving_version: str,
        poll_s: float = 1.0,
        device: str = "cpu",
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.serving_version = serving_version
        self.poll_s = poll_s
        self.device = device
        self.on_refused = on_refused  # called with a short reason code for each refusal
        self.refused: str | None = None
        self.refusals = 0
        self.last_check: float | None = None  # time.monotonic() of the last completed check
        self._last_problem: str | None = None  # logged once per distinct problem, not every poll
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

    @property
    def alive(self) -> bool:
        """True while the watching thread runs (always True when it was never started)."""
        return self._thread is None or self._thread.is_alive()

    def refuse(self, code: str, message: str, version: str | None = None) -> None:
        if version is not None:
            self.refused = version
        self.refusals += 1
        if self.on_refused is not None:
            self.on_refused(code)
        if message != self._last_problem:
            log.error("%s; still serving %s", message, self.serving_version)
            self._last_problem = message

    def check_once(self) -> None:
        """Load the current version if it is new (what the thread does every ``poll_s``); never raises."""
        try:
            self._check()
        except Exception as error:  # whatever the registry holds, the watcher must keep watching
            self.refuse("error", f"model registry check failed ({type(error).__name__}: {error})")
        self.last_check = time.monotonic()

    def _check(self) -> None:
        try:
            version = self.registry.current_version()
        except RegistryError as error:
            self.refuse("pointer", f"cannot read the model registry ({error})")
            return
        with self._lock:
            pending_version = self._pending[1] if self._pending else None
        if version is None or version in (self.serving_version, pending_version, self.refused):
            self._last_problem = None
            return
        try:
            loaded = self.registry.load(version, device=self.device)
        except (CheckpointError, RegistryError, OSError, ValueError) as error:
            self.refuse("checkpoint", f"new model {version} refused: {error}", version)
            return
        if loaded.detector.threshold is None:
            self.refuse("threshold", f"new model {version} has no threshold", version)
            return
        with self._lock:
            self._pending = (loaded.detector, version)
        self._last_problem = None
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

    def swap_if_ready(loop: Any) -> None:
        pending = watcher.take_pending()
        if pending is None:
            return
        detector, version = pending
        if detector.channels != loop.scorer.channels or detector.window != loop.scorer.window:
            watcher.refuse(
                "shape",
                f"model {version} expects channels {detector.channels} / window {detector.window}, serving needs "
                f"{loop.scorer.channels} / {loop.scorer.window}",
                version,
            )
            return
        started = time.perf_counter()
        previous = watcher.serving_version
        loop.swap_model(detector, version)
        watcher.serving_version = version
        watcher.last_swap_ms = (time.perf_counter() - started) * 1000
        log.info("hot-swapped model %s -> %s in %.2f ms", previous, version, watcher.last_swap_ms)

    return swap_if_ready
