"""Making output durable when the disk or the broker fails for a while: back off, retry, give up late.

A durable write (a Parquet part, a drift event, a dead letter acked by the broker) that fails with a
disk-full, I/O or broker error is retried with exponential back-off; nothing is committed meanwhile,
so no offset ever runs ahead of what is durable. Writes resume by themselves once the fault clears.
After ``give_up_after_s`` of failures in a row the loop raises :class:`WriteOutageError`, and `driftline
serve` exits with :data:`EXIT_WRITE_OUTAGE` for its supervisor (the next start resumes from the last
commit).

Exit codes of `driftline serve` (documented in the README):

- 0: stopped cleanly (signal, bound reached), everything durable was committed;
- 69 (:data:`EXIT_BROKER_UNAVAILABLE`): no broker answered within ``kafka.connect_timeout_s`` at start;
- 74 (:data:`EXIT_WRITE_OUTAGE`): durable writes kept failing for ``sinks.max_write_outage_s``;
- 75 (:data:`EXIT_STOP_TIMEOUT`): asked to stop, but the final flush/commit did not finish within
  ``scoring.stop_timeout_s`` (e.g. the broker is away); nothing past the last commit was committed.

>>> attempts = []
>>> def flaky() -> str:
...     attempts.append(1)
...     if len(attempts) < 3:
...         raise OSError(28, "No space left on device")
...     return "written"
>>> RetryPolicy(initial_backoff_s=0.001).run(flaky, "error log")
'written'
>>> len(attempts)
3
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from kafka.errors import KafkaError

log = logging.getLogger(__name__)

EXIT_BROKER_UNAVAILABLE = 69
EXIT_WRITE_OUTAGE = 74
EXIT_STOP_TIMEOUT = 75

T = TypeVar("T")


class DurabilityError(RuntimeError):
    """A write could not be made durable (e.g. the broker refused a dead letter); safe to retry."""


class WriteOutageError(RuntimeError):
    """Durable writes failed for longer than the configured limit; the process should exit and restart."""


# What counts as a transient write fault: disk full / I/O errors, broker errors, refused acks.
RETRYABLE = (OSError, KafkaError, DurabilityError)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off for durable writes, bounded in total by ``give_up_after_s``."""

    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    give_up_after_s: float = 600.0

    def run(
        self,
        write: Callable[[], T],
        what: str,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Call ``write`` until it succeeds; raise :class:`WriteOutageError` after ``give_up_after_s`` of failures."""
        first_failure: float | None = None
        backoff = self.initial_backoff_s
        while True:
            try:
                result = write()
            except RETRYABLE as error:
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                if on_failure is not None:
                    on_failure(error)
                failing_for = now - first_failure
                if failing_for >= self.give_up_after_s:
                    raise WriteOutageError(
                        f"{what}: writes failed for {failing_for:.0f} s (last: {error}); giving up so a supervisor "
                        "can restart the scorer; nothing past the last durable write was committed"
                    ) from error
                log.warning(
                    "%s: write failed (%s: %s); nothing is committed until it succeeds; retrying in %.1f s",
                    what,
                    type(error).__name__,
                    error,
                    backoff,
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if first_failure is not None:
                log.info("%s: writes succeed again after %.1f s", what, time.monotonic() - first_failure)
            return result
