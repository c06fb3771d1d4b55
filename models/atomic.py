"""All-or-nothing file writes: a reader sees the old file or the new one, never a torn one, after a crash too.

The one atomic-write helper of the project (error-log parts, the replay buffer, the registry pointer,
checkpoints): write a temporary file in the target's folder, fsync it, rename it over the target, fsync
the folder so the rename itself survives a power cut.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> with atomic_file(folder / "CURRENT.json", "w") as handle:
...     _ = handle.write('{"current": "v000001"}')
>>> (folder / "CURRENT.json").read_text(), [p.name for p in folder.iterdir()]
('{"current": "v000001"}', ['CURRENT.json'])
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside the folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file to write ``path``'s new content; on success it replaces ``path`` durably.

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # hidden: dataset readers skip it
    # created as open() would (mode 0o666 less the umask: readable by analysts), never over another file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
