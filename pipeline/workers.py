"""More cores for the scorer: N ``serve`` processes in one consumer group, each pinned to its share of cores.

One scoring process keeps its Python work (Kafka client, decode, windows, drift) on one interpreter
lock while the model runs beside it; on a few cores those threads compete for the same cores.
Processes do not: each owns ``cores / N`` cores (``os.sched_setaffinity`` on Linux), sizes its model
threads from them (:func:`pipeline.service.default_model_threads`), and Kafka's group protocol splits
the partitions between them (give the topic at least N partitions, ideally a multiple of N).
Every guarantee of one process holds per process: each commits only what it made durable, and a
worker that dies is replaced in the group by a rebalance.

``driftline serve --workers N`` runs this supervisor: it starts the workers, forwards SIGINT/SIGTERM,
and when one worker fails stops the others and exits with its code, so an orchestrator restarts the
set. Each worker gets ``DRIFTLINE_WORKER=i`` and, when ``metrics.port`` is set, port ``metrics.port + i``.

>>> worker_cores([0, 1, 2, 3], 2, 1)
[2, 3]
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

WORKER_ENV = "DRIFTLINE_WORKER"
CORES_ENV = "DRIFTLINE_WORKER_CORES"  # the cores a worker pins itself to (pin_from_env), e.g. "2,3"


def available_cores() -> list[int]:
    """The cores this process may run on (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def worker_cores(cores: Sequence[int], workers: int, index: int) -> list[int]:
    """The cores of worker ``index`` of ``workers``: contiguous shares, the remainder to the first ones."""
    share, extra = divmod(len(cores), workers)
    if share == 0:
        return [cores[index % len(cores)]]
    start = index * share + min(index, extra)
    return list(cores[start : start + share + (1 if index < extra else 0)])


def pin_to_cores(cores: Sequence[int]) -> None:
    """Run this process on ``cores`` only (Linux); elsewhere a no-op."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))


def pin_from_env() -> list[int] | None:
    """Pin this process to the cores its supervisor chose (``DRIFTLINE_WORKER_CORES``), if any."""
    spec = os.environ.get(CORES_ENV)
    if not spec:
        return None
    cores = [int(core) for core in spec.split(",")]
    pin_to_cores(cores)
    return cores


def run_workers(command: Sequence[str], workers: int, metrics_port: int) -> int:
    """Run ``command`` (a ``serve`` command line) as ``workers`` pinned processes; return the exit code."""
    cores = available_cores()
    children: list[subprocess.Popen[bytes]] = []
    for index in range(workers):
        share = worker_cores(cores, workers, index)
        env = dict(os.environ, **{WORKER_ENV: str(index), CORES_ENV: ",".join(map(str, share))})
        argv = list(command)
        if metrics_port:
            argv[3:3] = ["--set", f"metrics.port={metrics_port + index}"]  # after "python -m pipeline.cli"
        children.append(subprocess.Popen(argv, env=env))
        log.info("worker %d: pid %d on cores %s", index, children[-1].pid, share)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = 0
        while any(child.poll() is None for child in children):
            failed = [child for child in children if child.returncode not in (None, 0)]
            if failed and not code:
                code = failed[0].returncode
                log.error("worker pid %d exited with %d; stopping the others", failed[0].pid, code)
                forward(signal.SIGTERM, None)
            time.sleep(0.2)
        return code or next((child.returncode for child in children if child.returncode), 0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def worker_command(argv: Sequence[str]) -> list[str]:
    """This process's ``driftline`` command line without ``--workers N`` (what each worker runs)."""
    out: list[str] = [sys.executable, "-m", "pipeline.cli"]
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out
