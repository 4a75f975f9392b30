"""Trees measured alternately against one PostgreSQL and one Kafka broker (A B A B ...).

For before/after figures on a loaded machine: each tree (a ``git archive`` copy, say) runs in a
process of its own, from its own directory, with its own ``bench.allocator`` and ``service``,
against servers started once here; the load moves between runs, so the pairs share it.

    python -m bench.alternate ROUNDS MODE TREE... [--rate R --seconds S | --batch N --commits C
                                                   | --events E]

Modes: ``latency`` (``bench.allocator.latency`` with its phases, at ``--rate`` for
``--seconds``), ``commits`` (the latency stream applied and committed batch by batch, no Kafka:
wall and CPU per commit of ``--batch`` records), ``throughput`` (``allocator_rate`` over a topic
of ``--events``, beside the bare consumer), ``overlap`` (the throughput run with a timeline:
how much of the commits' time the loop spent applying, what each step of a commit waited,
PostgreSQL's CPU during the commits, the event loop's lateness; ``_Timeline``). One JSON line
per run on standard output. Not part of ``python -m bench``: a tool for pairing trees, not a
figure of record.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int)
    parser.add_argument("mode", choices=("latency", "commits", "throughput", "overlap"))
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--events", type=int, default=60_000)
    args = parser.parse_args()
    from bench import allocator  # noqa: PLC0415 - this tree's, for the servers only
    from service.adapters.kafka import log as kafka_log  # noqa: PLC0415

    with allocator.Services() as services:
        bootstrap = services.kafka.bootstrap
        if args.mode in ("throughput", "overlap"):

            async def fill() -> None:
                await kafka_log.ensure_topics(bootstrap, "alternate.throughput", 1)
                await allocator.fill_topic(
                    bootstrap, "alternate.throughput", allocator.workload(args.events)
                )

            anyio.run(fill)
        run = 0
        for _ in range(args.rounds):
            for tree in args.trees:
                run += 1
                # This file run as a script in the tree, which need not have it.
                worker = [
                    sys.executable,
                    str(Path(__file__).absolute()),
                    "--worker",
                    json.dumps(
                        {
                            **vars(args),
                            "trees": [],
                            "tag": f"r{run}_{tree.name}".replace("-", "_"),
                            "bootstrap": bootstrap,
                            "admin": services.postgres.server.dsn,
                            "data_dir": str(services.postgres.server.data_dir),
                        }
                    ),
                ]
                env = {**os.environ, "PYTHONPATH": str(tree.absolute())}
                done = subprocess.run(
                    worker, cwd=tree, env=env, capture_output=True, text=True, check=False
                )
                lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                print(lines[-1] if lines else json.dumps({"failed": str(tree)}), flush=True)
                if not lines:
                    print(done.stderr[-3000:], file=sys.stderr)


async def _worker(job: dict[str, Any]) -> dict[str, Any]:
    from bench import allocator, latency_phases, restart_db  # noqa: PLC0415 - the tree's own
    from service.adapters.kafka import log as kafka_log  # noqa: PLC0415
    from service.adapters.postgres import migrate  # noqa: PLC0415

    out: dict[str, Any] = {"tag": job["tag"], "tree": os.getcwd(), "load": os.getloadavg()[0]}
    admin = await asyncpg.connect(job["admin"])
    try:
        await admin.execute(f'CREATE DATABASE "{job["tag"]}"')
    finally:
        await admin.close()
    dsn = job["admin"].rsplit("/", 1)[0] + "/" + job["tag"]
    await migrate.upgrade(dsn)
    data_dir = Path(job["data_dir"])
    server_before, client_before = restart_db.server_cpu_s(data_dir), time.process_time()
    if job["mode"] == "latency":
        topic = f"alternate.{job['tag']}"
        await kafka_log.ensure_topics(job["bootstrap"], topic, 1)
        phases = latency_phases.Phases()
        samples = await allocator.latency(
            job["bootstrap"], topic, dsn, job["seconds"], job["rate"], [], phases
        )
        out |= {
            "p50_ms": samples[len(samples) // 2] * 1000,
            "p99_ms": samples[int(len(samples) * 0.99)] * 1000,
            "events": len(samples),
            "phases": phases.summary(),
        }
    elif job["mode"] == "commits":
        out |= await _commits(dsn, job["batch"], job["commits"], data_dir)
    elif job["mode"] == "overlap":
        timeline = _Timeline(data_dir)
        with timeline.recording():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(timeline.watch_loop)
                rate = await allocator.allocator_rate(
                    job["bootstrap"], "alternate.throughput", dsn, job["events"], data_dir
                )
                tasks.cancel_scope.cancel()
        out |= {"rate": rate.rate, "batch": rate.batch} | timeline.summary()
    else:
        bare = await allocator.bare_consumer_rate(
            job["bootstrap"], "alternate.throughput", job["events"]
        )
        rate = await allocator.allocator_rate(
            job["bootstrap"], "alternate.throughput", dsn, job["events"], data_dir
        )
        out |= {"rate": rate.rate, "bare": bare, "batch": rate.batch}
    out["client_cpu_s"] = time.process_time() - client_before
    out["server_cpu_s"] = restart_db.server_cpu_s(data_dir) - server_before
    out["load_end"] = os.getloadavg()[0]
    return out


async def _commits(dsn: str, size: int, count: int, data_dir: Path) -> dict[str, Any]:
    """Commit the latency stream in batches of ``size``; wall and CPU per commit."""
    from bench import allocator as bench_allocator  # noqa: PLC0415 - the tree's own
    from bench import restart_db  # noqa: PLC0415
    from service import allocator, ports  # noqa: PLC0415
    from service.adapters.postgres import projection as pg_projection  # noqa: PLC0415
    from service.domain import state  # noqa: PLC0415

    values = bench_allocator.workload(100, seed=3)
    values += [bench_allocator._steady_event(i) for i in range(size * count)]
    records = [
        ports.Record(0, offset, b"default", value, 1_764_000_000_000 + offset // 50)
        for offset, value in enumerate(values)
    ]
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name="bench", holder="bench")
    try:
        token = await projection.try_acquire(0)
        assert token is not None
        current = state.State(track_changes=True)
        first = allocator.apply_records(current, records[:100], 0, token, partitions=1)
        await projection.commit(first)
        walls: list[float] = []
        cpus: list[float] = []
        server_before = restart_db.server_cpu_s(data_dir)
        for start in range(100, len(records), size):
            batch = allocator.apply_records(
                current, records[start : start + size], 0, token, partitions=1
            )
            await anyio.sleep(0.002)  # the connection back in the pool a moment, as in the loop
            wall, cpu = time.perf_counter(), time.process_time()
            await projection.commit(batch)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        server = restart_db.server_cpu_s(data_dir) - server_before
    finally:
        await projection.close()
    walls.sort()
    return {
        "commits": len(walls),
        "commit_p50_ms": walls[len(walls) // 2] * 1000,
        "commit_p90_ms": walls[int(len(walls) * 0.9)] * 1000,
        "commit_client_cpu_ms": sum(cpus) / len(cpus) * 1000,
        "commit_server_cpu_ms": server / len(walls) * 1000,
    }


class _Timeline:
    """When the loop applied, committed and waited in one throughput run of this tree.

    Wraps this tree's own ``batch.apply_records``, ``PostgresProjection.commit`` and the asyncpg
    calls a commit makes (each round trip, each COPY) for the run, samples the server's CPU
    every 20 ms from a thread, and the event loop's lateness with a task sleeping 1 ms.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.spans: list[tuple[str, float, float]] = []
        self.late: list[float] = []
        self.server: list[tuple[float, float]] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        from bench import restart_db  # noqa: PLC0415 - the tree's own
        from service.adapters.postgres import projection  # noqa: PLC0415
        from service.allocator import batch  # noqa: PLC0415

        spans = self.spans
        saved: list[tuple[Any, str, Any]] = []

        def wrap(owner: Any, name: str, label: Callable[[tuple[Any, ...]], str]) -> None:
            original = getattr(owner, name)
            saved.append((owner, name, original))
            if inspect.iscoroutinefunction(original):

                async def timed_async(*args: Any, **kwargs: Any) -> Any:
                    started = time.perf_counter()
                    try:
                        return await original(*args, **kwargs)
                    finally:
                        spans.append((label(args), started, time.perf_counter()))

                setattr(owner, name, timed_async)
            else:

                def timed(*args: Any, **kwargs: Any) -> Any:
                    started = time.perf_counter()
                    try:
                        return original(*args, **kwargs)
                    finally:
                        spans.append((label(args), started, time.perf_counter()))

                setattr(owner, name, timed)

        wrap(batch, "apply_records", lambda args: "apply")
        wrap(batch, "take_rows", lambda args: "apply")
        wrap(projection.PostgresProjection, "commit", lambda args: "commit")
        for name in ("copy_records_to_table", "fetch", "fetchval", "execute", "executemany"):
            wrap(
                asyncpg.Connection,
                name,
                lambda args, name=name: f"{name} {str(args[1])[:24]}".strip(),
            )
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                cpu = restart_db.server_cpu_s(self.data_dir)
                self.server.append((time.perf_counter(), cpu))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield
        finally:
            done.set()
            sampler.join()
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)

    async def watch_loop(self) -> None:
        while True:
            started = time.perf_counter()
            await anyio.sleep(0.001)
            self.late.append(time.perf_counter() - started - 0.001)

    def summary(self) -> dict[str, Any]:
        applying = [(a, b) for kind, a, b in self.spans if kind == "apply"]
        commits = [(a, b) for kind, a, b in self.spans if kind == "commit"]
        steps: dict[str, list[float]] = {}
        for kind, a, b in self.spans:
            if kind not in ("apply", "commit"):
                # The wall time of each step, and how much of it the loop was applying.
                step = steps.setdefault(kind, [0, 0.0, 0.0])
                step[0] += 1
                step[1] += b - a
                step[2] += _overlap(applying, [(a, b)])
        server = 0.0
        for (t0, c0), (t1, c1) in zip(self.server, self.server[1:], strict=False):
            server += (c1 - c0) * _overlap(commits, [(t0, t1)]) / max(t1 - t0, 1e-9)
        commit_s = sum(b - a for a, b in commits)
        late = sorted(self.late) or [0.0]
        return {
            "apply_s": sum(b - a for a, b in applying),
            "commit_s": commit_s,
            "applying_while_committing_s": _overlap(applying, commits),
            "server_cores_while_committing": server / max(commit_s, 1e-9),
            "late_p99_ms": late[int(len(late) * 0.99)] * 1000,
            "late_max_ms": late[-1] * 1000,
            # Per step: calls, wall seconds, seconds of them the loop spent applying.
            "steps": {
                kind: step
                for kind, step in sorted(steps.items(), key=lambda item: -item[1][1])[:12]
            },
        }


def _overlap(first: list[tuple[float, float]], second: list[tuple[float, float]]) -> float:
    total = 0.0
    for a0, a1 in first:
        for b0, b1 in second:
            total += max(0.0, min(a1, b1) - max(a0, b0))
    return total


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.path[0] = os.getcwd()  # the tree's packages, not this file's directory
        print(json.dumps(anyio.run(_worker, json.loads(sys.argv[2]))), flush=True)
    else:
        main()
