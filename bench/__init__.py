"""ipledger benchmarks: what ``make bench`` (``python -m bench``) runs and the results it prints.

Each benchmark is a module of this package with ``run(args) -> list[Result]`` and, optionally,
``add_arguments(parser)`` for options of its own; ``bench.__main__`` lists them by name. This
module holds what they share: the result row, pinning to one core, and a description of the
machine for the report. Performance is measured here and only here, never in timed tests.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import asyncpg

from service.adapters.postgres import embedded, migrate


@dataclass(frozen=True, slots=True)
class Result:
    """One measured figure, and the target it is held against when there is one.

    ``met`` is None for figures that have no target of their own (context for the others).
    """

    benchmark: str
    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    detail: str = ""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (no interpolation: a real sample)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, -(-len(sorted_values) * fraction // 1))
    return sorted_values[int(rank) - 1]


def pin_to_one_core() -> int | None:
    """Pin this process to one core (the last it may use); the core, or None where impossible.

    The targets are per core, and a process that migrates between cores of a busy machine
    measures the scheduler as much as the code.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1]
    os.sched_setaffinity(0, {core})
    return core


def machine() -> dict[str, str]:
    """What the figures were measured on, for the report."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = "unknown"
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                    break
    except OSError:
        pass
    load = "unknown"
    if hasattr(os, "getloadavg"):
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "memory": memory,
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "load average": load,
    }


class ScratchPostgres:
    """A PostgreSQL server of the benchmark's own (fsync on), handing out migrated databases.

    The data lives in a temporary directory that is readable by the account the server runs as
    when the benchmark runs as root. ``start``/``stop`` block; use it as a context manager, or
    call ``stop`` in a ``finally``: a ``start`` that fails half way has stopped what it started.
    """

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.root.chmod(0o755)
        self.server = embedded.EmbeddedPostgres(self.root / "pg", fsync=True)
        self._prefix = prefix.strip("-").replace("-", "_")
        self._databases = 0

    def start(self) -> None:
        try:
            self.server.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def fresh_database(self) -> str:
        """The DSN of a new, fully migrated database."""
        self._databases += 1
        name = f"{self._prefix}_{self._databases}"
        db = await asyncpg.connect(self.server.dsn)
        try:
            await db.execute(f'CREATE DATABASE "{name}"')
        finally:
            await db.close()
        dsn = self.server.dsn_for(name)
        await migrate.upgrade(dsn)
        return dsn
