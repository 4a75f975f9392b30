"""Trees measured alternately against one PostgreSQL and one Kafka broker (A B A B ...).

For before/after figures on a loaded machine: each tree (a ``git archive`` copy, say) runs in a
process of its own, from its own directory, with its own ``bench.allocator`` and ``service``,
against servers started once here; the load moves between runs, so the pairs share it.

    python -m bench.alternate ROUNDS MODE TREE... [--rate R --seconds S | --batch N --commits C
                                                   | --events E]

Modes: ``latency`` (``bench.allocator.latency`` with its phases, at ``--rate`` for
``--seconds``), ``commits`` (the latency stream applied and committed batch by batch, no Kafka:
wall and CPU per commit of ``--batch`` records), ``throughput`` (``allocator_rate`` over a topic
of ``--events``, beside the bare consumer). One JSON line per run on standard output. Not part
of ``python -m bench``: a tool for pairing trees, not a figure of record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import asyncpg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int)
    parser.add_argument("mode", choices=("latency", "commits", "throughput"))
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
        if args.mode == "throughput":

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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.path[0] = os.getcwd()  # the tree's packages, not this file's directory
        print(json.dumps(anyio.run(_worker, json.loads(sys.argv[2]))), flush=True)
    else:
        main()
