"""Scale-out over processes: 1 vs 2 ``ipledger run`` processes on a 4-partition log, and takeover.

Real Kafka broker and real PostgreSQL (fsync and synchronous_commit on), started here. Each run
gets a fresh topic of 4 partitions and a fresh database; the processes are started on the empty
topic and given time to share it (every partition led, 4/N each: Kafka's consumer group, or the
table log's member rows with ``--scaleout-log table``). Then a pre-generated workload is produced
as fast as the producer goes: eight clusters, two homed on each partition (clusters are spread by
key), each its own pool with nodes joining and pods coming and going. The figure is the events
committed per second from the first append to the last partition caught up, with the same
producer in both cases; runs alternate 1, 2, 1, 2, ... so that a drift of the machine's load
hits both alike, and the speed-up is the ratio of the medians.

After each 2-process run one process is killed with SIGKILL, and the takeover time is from the
kill to every one of its partitions led (a live lease) by the survivor.

The machine has few cores shared by PostgreSQL, the broker, the producer and the allocators, so
the speed-up measured here is a floor of what separate hosts give (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import anyio
import asyncpg
from aiokafka import AIOKafkaProducer

import bench
from bench.allocator import Services, workload
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import table_log
from service.domain import partitioning

NAME = "scaleout"
# --quick (a smoke run): events over the partitions; one run of 1 and of 2 processes.
QUICK = {"events": 8_000}
QUICK_REPEAT = 1
PARTITIONS = 4
CLUSTERS_PER_PARTITION = 2
SETTLE_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scaleout-events", type=int, default=160_000, help="events per run, over 8 clusters"
    )
    parser.add_argument(
        "--scaleout-log", choices=("kafka", "table"), default="kafka", help="the log (kafka)"
    )


def clusters() -> list[str]:
    """Cluster names, ``CLUSTERS_PER_PARTITION`` homed on each partition."""
    found: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    n = 0
    while any(len(names) < CLUSTERS_PER_PARTITION for names in found.values()):
        name = f"cluster-{n}"
        home = found[partitioning.partition_for(name.encode(), PARTITIONS)]
        if len(home) < CLUSTERS_PER_PARTITION:
            home.append(name)
        n += 1
    return sorted(name for names in found.values() for name in names)


def records(count: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs: each cluster's own workload, interleaved round robin."""
    names = clusters()
    streams = []
    for seed, name in enumerate(names, start=1):
        prefix = b'{"cluster":"%s",' % name.encode()
        streams.append([prefix + event[1:] for event in workload(count // len(names), seed=seed)])
    out = []
    for row in zip(*streams, strict=True):
        out.extend((name.encode(), value) for name, value in zip(names, row, strict=True))
    return out


async def produce(bootstrap: str, topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    try:
        for start in range(0, len(items), 5000):
            futures = [
                await producer.send(topic, value, key=key)
                for key, value in items[start : start + 5000]
            ]
            for future in futures:
                await future
    finally:
        await producer.stop()


async def append_table(dsn: str, items: Sequence[tuple[bytes, bytes]]) -> None:
    log = table_log.PostgresTableLog.from_dsn(dsn, partitions=PARTITIONS)
    try:
        for start in range(0, len(items), 5000):
            await log.append(list(items[start : start + 5000]))
    finally:
        await log.close()


class Deployment:
    """One run's topic (or table log), database and ``ipledger run`` processes."""

    def __init__(self, services: Services, dsn: str, kind: str, logs: Path) -> None:
        self.services = services
        self.dsn = dsn
        self.kind = kind
        self.topic = f"bench.scaleout.{uuid.uuid4().hex[:8]}"
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "IPLEDGER_DATABASE_URL": self.dsn,
            "IPLEDGER_LOG": self.kind,
            "IPLEDGER_PARTITIONS": str(PARTITIONS),
        }
        if self.kind == "kafka":
            env |= {
                "IPLEDGER_KAFKA_BOOTSTRAP": self.services.kafka.bootstrap,
                "IPLEDGER_EVENTS_TOPIC": self.topic,
                "IPLEDGER_DECISIONS_TOPIC": self.topic + ".decisions",
            }
        return env

    def start(self, count: int) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            with (self.logs / f"{self.topic}-{i}.log").open("wb") as out:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "service.cli", "run"],
                        env=self.env(),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def leaders(self) -> dict[int, int]:
        db = await asyncpg.connect(self.dsn)
        try:
            rows = await db.fetch(
                "SELECT partition, holder FROM writer_lease WHERE expires_at > clock_timestamp()"
            )
        finally:
            await db.close()
        return {row["partition"]: int(row["holder"].split(":")[1]) for row in rows}

    async def committed(self) -> int:
        db = await asyncpg.connect(self.dsn)
        try:
            total: int = await db.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_offset"
            )
        finally:
            await db.close()
        return total

    async def wait_spread(self, pids: set[int]) -> None:
        deadline = time.monotonic() + SETTLE_S
        while True:
            leaders = await self.leaders()
            counts = {pid: list(leaders.values()).count(pid) for pid in pids}
            if len(leaders) == PARTITIONS and set(counts.values()) == {PARTITIONS // len(pids)}:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"partitions not spread over {pids}: {leaders}")
            await anyio.sleep(0.05)


async def one_run(
    services: Services, kind: str, processes: int, items: Sequence[tuple[bytes, bytes]]
) -> tuple[float, float | None]:
    """Events/s with ``processes`` processes; and, with two, the takeover after a SIGKILL."""
    dsn = await services.fresh_database()
    deployment = Deployment(services, dsn, kind, services.postgres.root / "logs")
    if kind == "kafka":
        await kafka_log.ensure_topics(services.kafka.bootstrap, deployment.topic, PARTITIONS)
    deployment.start(processes)
    try:
        await deployment.wait_spread({p.pid for p in deployment.processes})
        started = time.perf_counter()
        if kind == "kafka":
            await produce(services.kafka.bootstrap, deployment.topic, items)
        else:
            await append_table(dsn, items)
        while await deployment.committed() < len(items):
            await anyio.sleep(0.02)
        rate = len(items) / (time.perf_counter() - started)
        takeover = None
        if processes == 2:
            victim, survivor = deployment.processes
            before = await deployment.leaders()
            orphaned = {p for p, pid in before.items() if pid == victim.pid}
            killed = time.perf_counter()
            victim.send_signal(signal.SIGKILL)
            while True:
                leaders = await deployment.leaders()
                if all(leaders.get(p) == survivor.pid for p in orphaned):
                    break
                await anyio.sleep(0.02)
            takeover = time.perf_counter() - killed
        return rate, takeover
    finally:
        deployment.stop()


def run(args: argparse.Namespace) -> list[bench.Result]:
    # --quick shares the servers with the other benchmarks of the run (bench.sharing).
    with bench.servers(Services, share=bool(args.quick)) as services:
        return anyio.run(_run, args, services)


async def _run(args: argparse.Namespace, services: Services) -> list[bench.Result]:
    quick = bool(args.quick)
    repeat = args.repeat or (QUICK_REPEAT if quick else 3)
    count = QUICK["events"] if quick else args.scaleout_events
    kind = args.scaleout_log
    items = records(count)
    rates: dict[int, list[float]] = {1: [], 2: []}
    takeovers: list[float] = []
    for _ in range(repeat):
        for processes in (1, 2):
            rate, takeover = await one_run(services, kind, processes, items)
            rates[processes].append(rate)
            if takeover is not None:
                takeovers.append(takeover)
    one, two = bench.median(rates[1]), bench.median(rates[2])
    detail = (
        f"{len(items):,} events, {PARTITIONS} partitions, {len(clusters())} clusters, {kind} log"
    )
    return [
        bench.Result.of_samples(
            NAME,
            f"1 process, {PARTITIONS} partitions",
            rates[1],
            "events/s",
            detail=detail,
            issue="13",
            better="higher",
        ),
        bench.Result.of_samples(
            NAME,
            f"2 processes, {PARTITIONS} partitions",
            rates[2],
            "events/s",
            detail=detail,
            issue="13",
            better="higher",
        ),
        bench.Result(
            NAME,
            "speed-up, 2 processes / 1",
            two / one,
            "ratio",
            detail="medians of alternated runs on one machine (cores shared with PG and Kafka)",
            issue="13",
            better="higher",
        ),
        bench.Result.of_samples(
            NAME,
            "takeover after SIGKILL",
            takeovers,
            "s",
            target="<= 10",
            met=bench.median(takeovers) <= 10 and max(takeovers) <= 10,
            detail="kill -> every partition of the killed process led by the survivor",
            issue="13",
            better="lower",
        ),
    ]
