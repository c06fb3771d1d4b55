"""CPU time of each stage of the scoring loop, measured on the thread that runs it.

``time.thread_time`` counts the calling thread only: the consumer thread's stages (poll, decode,
windows) and the scorer thread's (model, judge, drift, alarms, sink, durable) are each charged to their own
stage even when both threads run at once. Threads that a library starts on its own (PyTorch's
intra-op pool, the Kafka client's I/O thread) are not in any stage; the throughput benchmark measures
the machine's total beside them.

>>> clock = StageClock()
>>> with clock.measure("decode"):
...     _ = sum(range(1000))
>>> clock.cpu_s["decode"] >= 0.0, clock.cpu_s["model"]
(True, 0.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: The stages, in the order a batch goes through them.
STAGES = ("poll", "decode", "windows", "model", "judge", "drift", "alarms", "sink", "durable", "commit")


class StageClock:
    """Thread CPU seconds per stage, summed over the loop's life; ``on_measure`` sees each measurement."""

    def __init__(self, on_measure: Callable[[str, float], None] | None = None) -> None:
        self.cpu_s: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.on_measure = on_measure

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        started = time.thread_time()
        try:
            yield
        finally:
            spent = time.thread_time() - started
            self.cpu_s[stage] += spent
            if self.on_measure is not None:
                self.on_measure(stage, spent)

    def per_item_us(self, items: int) -> dict[str, float]:
        """Microseconds of CPU per item (e.g. per reading) in each stage."""
        return {stage: seconds * 1e6 / max(items, 1) for stage, seconds in self.cpu_s.items()}
