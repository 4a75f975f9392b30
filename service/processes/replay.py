"""``ipledger replay``: every partition of the log replayed and checked, in parallel.

Called by ``service.cli`` (``cmd_replay``). One partition replays in this process; several run
in a process each (forked; spawned where there is no fork; at most as many at once as there are
cores), each reporting its progress through a queue to this one, which shows it (rich: records,
rate, ETA) on standard error. Ctrl-C (or SIGTERM) stops every worker and returns None. The
work of a partition is ``service.audit.replay.replay_partition``; this module opens what it
reads from and writes into, through ``service.bootstrap``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from rich import console, progress

from service import bootstrap, errors
from service.audit import replay, signing
from service.settings import Settings


@dataclass(frozen=True, slots=True)
class Job:
    """What to replay: ``into`` a database URL (else memory), ``until`` a point (else all and
    verify), heads checked against ``public_key`` (a PEM file) when given."""

    into: str | None = None
    until: replay.Until | None = None
    public_key: Path | None = None


@dataclass(slots=True)
class Outcome:
    """Every partition's report, or the reason the log or a database could not be read."""

    reports: list[replay.PartitionReport]
    unreadable: str | None = None
    seconds: float = 0.0


async def _partitions(settings: Settings) -> list[int]:
    event_log = await bootstrap.open_replay_log(settings)
    try:
        return list(await event_log.partitions())
    finally:
        await event_log.close()


async def _one(
    settings: Settings,
    job: Job,
    partition: int,
    partitions: int,
    progress: Callable[[int, int], None],
) -> replay.PartitionReport:
    public_key = signing.load_public_key(job.public_key) if job.public_key else None
    event_log = await bootstrap.open_replay_log(settings)
    live = bootstrap.open_audit_reader(bootstrap.database_url(settings))
    target = bootstrap.open_projection_at(settings, job.into) if job.into else None
    target_rows = bootstrap.open_audit_reader(job.into) if job.into else None
    try:
        return await replay.replay_partition(
            event_log,
            live,
            partition,
            partitions,
            into=target,
            into_rows=target_rows,
            until=job.until,
            public_key=public_key,
            progress=progress,
        )
    finally:
        for closing in (target_rows, target, live, event_log):
            if closing is not None:
                await closing.close()


def _worker(
    settings: Settings, job: Job, partition: int, partitions: int, out: Any
) -> None:  # pragma: no cover - runs in a process of its own (tests run it end to end)
    """One partition in a process of its own: progress and the result go to ``out``."""
    # A forked worker starts with the handlers of the command (SIGTERM raising ``Terminated``):
    # the defaults instead, as a spawned one has, so that the terminate that ends it on Ctrl-C
    # ends it quietly and Ctrl-C itself is a KeyboardInterrupt.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    last = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 0.2:
            last = now
            out.put(("progress", partition, done, total))

    try:
        report = anyio.run(_one, settings, job, partition, partitions, progress)
        out.put(("done", partition, report))
    except KeyboardInterrupt:
        out.put(("stopped", partition, None))
    except errors.IpledgerError as exc:
        out.put(("unreadable", partition, f"partition {partition}: {exc}"))


def run(settings: Settings, job: Job, *, show_progress: bool = True) -> Outcome | None:
    """Replay every partition; None when interrupted (Ctrl-C, SIGTERM)."""
    started = time.perf_counter()
    if job.into is not None:
        live = bootstrap.database_url(settings)
        if _same_database(job.into, live):
            raise errors.ConfigurationError(
                "--into names the live database: a rebuild never writes the live projection"
            )
        anyio.run(bootstrap.migrate_url, job.into)
    partitions = anyio.run(_partitions, settings)
    with _Progress(partitions, show_progress) as shown:
        if len(partitions) == 1:
            outcome = _in_process(settings, job, partitions[0], shown)
        else:
            outcome = _in_processes(settings, job, partitions, shown)
    if outcome is not None:
        outcome.seconds = time.perf_counter() - started
        outcome.reports.sort(key=lambda r: r.partition)
    return outcome


def _in_process(settings: Settings, job: Job, partition: int, shown: _Progress) -> Outcome | None:
    try:
        report = anyio.run(
            _one,
            settings,
            job,
            partition,
            1,
            lambda done, total: shown.update(partition, done, total),
        )
    except KeyboardInterrupt:
        return None
    except (errors.LogError, errors.ProjectionError) as exc:
        return Outcome([], unreadable=f"partition {partition}: {exc}")
    return Outcome([report])


def _in_processes(
    settings: Settings, job: Job, partitions: list[int], shown: _Progress
) -> Outcome | None:
    # Forked where the platform can: a spawned process imports everything again (~1.7 s each on
    # this machine, most of a short partition's replay), a forked one starts with the modules
    # this one has loaded. The child runs only ``_worker`` with a loop of its own and leaves by
    # ``os._exit`` (multiprocessing's), so nothing it inherited is finalised twice.
    methods = multiprocessing.get_all_start_methods()
    context: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    out: Any = context.Queue()
    waiting = list(partitions)
    running: dict[int, Any] = {}
    reports: list[replay.PartitionReport] = []
    unreadable: list[str] = []
    slots = max(1, min(len(partitions), os.cpu_count() or 1))
    try:
        while waiting or running:
            while waiting and len(running) < slots:
                partition = waiting.pop(0)
                process = context.Process(
                    target=_worker,
                    args=(settings, job, partition, len(partitions), out),
                    name=f"ipledger-replay-{partition}",
                )
                process.start()
                running[partition] = process
            try:
                kind, partition, *rest = out.get(timeout=0.5)
            except queue.Empty:
                for partition, process in list(running.items()):
                    if not process.is_alive() and process.exitcode not in (0, None):
                        unreadable.append(f"partition {partition}: its replay process died")
                        del running[partition]
                continue
            if kind == "progress":
                shown.update(partition, rest[0], rest[1])
                continue
            running.pop(partition).join()
            if kind == "done":
                reports.append(rest[0])
                shown.update(partition, rest[0].records, rest[0].records)
            elif kind == "unreadable":
                unreadable.append(rest[0])
            else:
                return None
    except KeyboardInterrupt:
        return None
    finally:
        for process in running.values():
            process.terminate()
        for process in running.values():
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    return Outcome(reports, unreadable="; ".join(unreadable) or None)


def _same_database(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return url.replace("postgresql+asyncpg://", "postgresql://").rstrip("/")

    return norm(a) == norm(b)


class _Progress:
    """Records replayed per partition with rate and ETA (rich, on standard error, when it is a
    terminal; nothing otherwise)."""

    def __init__(self, partitions: list[int], show: bool) -> None:
        self._bar: Any = None
        self._tasks: dict[int, Any] = {}
        if show and sys.stderr.isatty():
            self._bar = progress.Progress(
                progress.TextColumn("partition {task.fields[partition]}"),
                progress.BarColumn(),
                progress.MofNCompleteColumn(),
                progress.TextColumn("{task.fields[rate]}"),
                progress.TimeRemainingColumn(),
                console=console.Console(stderr=True),
                transient=True,
                # Redrawn from this thread in update(), not by rich's refresh thread: partition
                # workers are forked, and a thread that holds standard error's lock (drawing)
                # at the fork would leave the child's copy of that lock held for ever.
                auto_refresh=False,
            )
            for partition in partitions:
                self._tasks[partition] = self._bar.add_task(
                    "replay", total=None, partition=partition, rate=""
                )
        self._started = time.monotonic()
        self._drawn = 0.0

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            with contextlib.suppress(Exception):
                self._bar.stop()

    def update(self, partition: int, done: int, total: int) -> None:
        if self._bar is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        self._bar.update(
            self._tasks[partition],
            completed=done,
            total=total,
            rate=f"{done / elapsed:,.0f} records/s",
        )
        now = time.monotonic()
        if now - self._drawn >= 0.1 or done == total:
            self._drawn = now
            self._bar.refresh()
