"""Where each assigned partition stands and when the loop checkpoints (the Quix Streams checkpoint idea).

A *checkpoint* is a snapshot of the offsets to commit, taken on the consumer thread; the loop commits
it once everything produced before it is durable (:mod:`pipeline.consumer`). The checkpointer holds,
per partition:

- ``emit_from``: the committed offset the partition was assigned at. Windows ending before it were
  scored by the previous owner; readings before it are only replayed to rebuild open windows.
- ``read_to``: the next offset read (below ``processed`` while replaying from a rewind point).
- ``processed``: the next offset to commit; it never moves backwards.
- ``rewind_floor``: the rewind point it was assigned with, kept until the replay has read past
  ``emit_from`` (until then the partition's open windows exist only as that point).

Every commit carries ``{"v": 1, "rewind_offset": ...}``: the oldest offset still held in an open
window, so that the next owner can rebuild the windows (see :mod:`pipeline.consumer`).

The cadence is its own: a checkpoint is due when ``every_rows`` windows or ``every_s`` seconds have
passed since the last one (with anything new to commit), or when the source is idle.

>>> checkpointer = Checkpointer(CheckpointSettings(every_rows=100, every_s=60.0))
>>> checkpointer.assign(("t", 0), committed=40, rewind=25)
>>> checkpointer.read(("t", 0), 30)  # replaying: read 25..29
>>> checkpointer.offsets(rewind={("t", 0): 27})  # still behind the committed offset: the floor holds
{('t', 0): (40, {'v': 1, 'rewind_offset': 25})}
>>> checkpointer.read(("t", 0), 60)
>>> checkpointer.note(messages=30, windows=120)
>>> checkpointer.due(idle=False, now=checkpointer.last_checkpoint + 1.0)
True
>>> checkpointer.offsets(rewind={("t", 0): 52})
{('t', 0): (60, {'v': 1, 'rewind_offset': 52})}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pipeline.sources import TopicPartitionKey

#: What a commit holds per partition: the next offset and its metadata (the rewind point, open alarms).
CommitOffsets = dict[TopicPartitionKey, tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class CheckpointSettings:
    """How often to checkpoint: after ``every_rows`` scored windows or ``every_s`` seconds."""

    every_rows: int = 50_000
    every_s: float = 5.0


class Checkpointer:
    """Per-partition positions (emit-from, read, processed, rewind floor) and the checkpoint cadence."""

    def __init__(self, settings: CheckpointSettings = CheckpointSettings()) -> None:
        self.settings = settings
        self.emit_from: dict[TopicPartitionKey, int] = {}
        self._processed: dict[TopicPartitionKey, int] = {}
        self._read_to: dict[TopicPartitionKey, int] = {}
        self._rewind_floor: dict[TopicPartitionKey, int] = {}
        self.uncheckpointed = 0  # messages processed since the last checkpoint was taken
        self._rows = 0  # windows scored since then
        self.last_checkpoint = time.monotonic()

    # -- assignment ------------------------------------------------------------------------------
    def assign(self, tp: TopicPartitionKey, committed: int, rewind: int | None = None) -> None:
        """``tp`` was assigned at ``committed``; with a ``rewind`` point below it, reading starts there."""
        self.emit_from[tp] = committed
        self._processed[tp] = committed
        self._read_to[tp] = committed
        self._rewind_floor.pop(tp, None)
        if rewind is not None and 0 <= rewind < committed:
            self._read_to[tp] = rewind
            self._rewind_floor[tp] = rewind

    def revoke(self, tp: TopicPartitionKey) -> None:
        for positions in (self.emit_from, self._processed, self._read_to, self._rewind_floor):
            positions.pop(tp, None)

    @property
    def partitions(self) -> int:
        return len(self.emit_from)

    # -- progress --------------------------------------------------------------------------------
    def floor(self, tp: TopicPartitionKey) -> int:
        """The offset from which ``tp``'s windows are emitted (0 for a partition not seen before)."""
        return self.emit_from.setdefault(tp, 0)

    def read(self, tp: TopicPartitionKey, next_offset: int) -> None:
        """Offsets of ``tp`` up to ``next_offset - 1`` were read; ``processed`` follows, never backwards."""
        self._read_to[tp] = next_offset
        if next_offset > self._processed.get(tp, 0):
            self._processed[tp] = next_offset

    def note(self, *, messages: int = 0, windows: int = 0) -> None:
        """Count ``messages`` processed and ``windows`` scored towards the next checkpoint."""
        self.uncheckpointed += messages
        self._rows += windows

    def commit_failed(self) -> None:
        """A commit failed: the next checkpoint is due even without new messages."""
        self.uncheckpointed += 1

    # -- checkpoints -----------------------------------------------------------------------------
    def due(self, *, idle: bool, now: float) -> bool:
        """Whether to checkpoint now (``now``: ``time.monotonic()``)."""
        if not self.uncheckpointed:
            return False
        return idle or self._rows >= self.settings.every_rows or now - self.last_checkpoint >= self.settings.every_s

    def offsets(self, rewind: dict[TopicPartitionKey, int]) -> CommitOffsets:
        """What to commit for everything processed so far: next offsets, each with its rewind point.

        ``rewind``: the oldest offset each partition's open windows hold (the window assembler's). A
        partition still replaying towards its committed offset keeps the rewind point it was assigned
        with: its windows are not rebuilt yet, so the assembler alone would forget where they start.
        """
        offsets: CommitOffsets = {}
        for tp, offset in self._processed.items():
            point = min(rewind.get(tp, offset), offset)
            floor = self._rewind_floor.get(tp)
            if floor is not None:
                if self._read_to.get(tp, offset) >= self.emit_from.get(tp, 0):
                    del self._rewind_floor[tp]  # replayed: the assembler holds those readings again
                else:
                    point = min(point, floor)
            offsets[tp] = (offset, {"v": 1, "rewind_offset": point})
        return offsets

    def taken(self) -> None:
        """A checkpoint was taken now: the cadence starts again."""
        self.uncheckpointed = self._rows = 0
        self.last_checkpoint = time.monotonic()
