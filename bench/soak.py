"""The kill -9 soak: ``ipledger run`` SIGKILLed again and again while a producer keeps appending.

    python -m bench --only soak --soak-cycles 1000          # the long mode (outside CI)
    python -m bench --only soak --quick                     # a smoke run of a few cycles

One PostgreSQL server and (for ``--soak-log kafka``, the default) one Kafka broker of the soak's
own. A producer process appends a realistic mix (``tests.streams.mixed_stream``: pools, nodes
coming and going, pods, malformed records) at a steady rate for the whole run and writes down
the position of every append the log acknowledged. Each cycle starts a real allocator process
and SIGKILLs it at a random moment: in some cycles anywhere from its start-up on (imports,
connecting, loading the state, waiting for the dead one's lease), in the others once it has
committed, a fraction of a second later (mid-batch, mid-commit, mid-publish). A fraction of the
cycles also restarts the broker or the PostgreSQL server under the working allocator, cleanly
or with SIGKILL, before the allocator itself is killed.

At the end the producer stops, one last allocator catches up, and the whole log is read back:

- the state document ``ipledger state`` prints from the projection must be byte for byte the
  one ``ipledger simulate`` prints over the whole log (same digest);
- ``lost``: log offsets without a committed decision, plus acknowledged appends that are not in
  the log where the producer was told they are;
- ``duplicates``: log offsets with more than one committed decision;
- ``twice applied``: committed decisions that differ from the oracle's decision at the same
  offset (a record applied twice, or skipped, changes every decision after it that touches the
  same pods);
- with Kafka, the decisions topic: offsets never published (lost) and published differently the
  second time (wrong); identical republications are at-least-once delivery, counted, allowed.

Each of those must be 0. The figures are returned as rows for the report; the soak does not stop
at the first difference, it counts them all.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import asyncpg

import bench
from service import cli, errors
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import reader as pg_reader
from service.adapters.postgres import table_log
from service.allocator.loop import HEAD_KEY
from service.domain import document, events
from tests.e2e.conftest import Allocators, simulate
from tests.e2e.test_kafka_allocator import Deployment, read_published
from tests.harness.kafka import KafkaBroker
from tests.streams import key_of, mixed_stream

NAME = "soak"
# --quick (a smoke run, when asked for: the soak is long and not in make bench-quick).
QUICK = {"cycles": 10}
SEED = 20261202
# How long one step may take before the soak is declared stuck (a finding, not a figure).
STEP_TIMEOUT_S = 180.0
CONSUMED_SQL = "SELECT coalesce(max(next_offset), 0) FROM consumer_offset"
PUBLISHED_SQL = "SELECT coalesce(max(next_offset), 0) FROM outbox_offset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--soak-cycles", type=int, default=1000, help="kill -9 cycles (--quick: 10)"
    )
    parser.add_argument(
        "--soak-log", choices=("kafka", "table"), default="kafka", help="the log the soak feeds"
    )
    parser.add_argument(
        "--soak-rate", type=int, default=40, help="events/s the producer appends throughout"
    )
    parser.add_argument(
        "--soak-budget-s",
        type=float,
        default=0.0,
        help="stop starting cycles after this many seconds (0: none); the cycles done are "
        "reported, held against the 1,000 of the long mode",
    )
    parser.add_argument(
        "--soak-instance-id",
        default="soak-allocator",
        help="IPLEDGER_INSTANCE_ID of every allocator (Kafka static membership, as a "
        "StatefulSet pod restarted under its own name); empty: none, each restart rejoins the "
        "consumer group and waits for its rebalance",
    )
    parser.add_argument(
        "--soak-spawn",
        choices=("fork", "exec"),
        default="fork",
        help="fork each allocator from a process that has imported the service (fast cycles), "
        "or exec python -m service.cli run afresh each cycle (imports included)",
    )
    parser.add_argument(
        "--soak-service-every",
        type=int,
        default=50,
        help="every Nth cycle (on average) also restarts the broker or PostgreSQL",
    )


@dataclass
class Tally:
    """What the cycles did, by kind, for the report."""

    kinds: Counter[str] = field(default_factory=Counter)
    cycle_s: list[float] = field(default_factory=list)
    # Seconds from the start of a service fault to the allocator's next commit after it.
    recovery_s: dict[str, list[float]] = field(default_factory=dict)
    # (seconds into the soak, consumed offset) at the start of each cycle, for the plot.
    progress: list[tuple[float, int]] = field(default_factory=list)
    load: list[float] = field(default_factory=list)


class Progress:
    """The consumed offset the projection has committed, over one connection kept open.

    The connection is reopened after a failure: the soak restarts the server under it.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._db: asyncpg.Connection | None = None

    async def consumed(self, sql: str = CONSUMED_SQL) -> int | None:
        """The highest committed next offset, or None while the server does not answer."""
        try:
            if self._db is None or self._db.is_closed():
                self._db = await asyncpg.connect(self.dsn, timeout=2)
            value = await self._db.fetchval(sql, timeout=2)
            return int(value)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            await self.close()
            return None

    async def wait_beyond(self, offset: int, timeout: float, allocators: Allocators) -> int:
        """Wait until more than ``offset`` is consumed; the consumed offset then."""
        deadline = time.monotonic() + timeout
        while True:
            at = await self.consumed()
            if at is not None and at > offset:
                return at
            if time.monotonic() > deadline:
                raise errors.IpledgerError(
                    f"soak stuck: consumed {at}, waited for more than {offset} for {timeout} s\n"
                    + allocators.logs()
                )
            await anyio.sleep(0.02)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.terminate()


# --- the producer: a process of its own, appending until told to stop ---------------------------


async def produce(env_json: str, total: int, rate: int, acked_path: str, stop_path: str) -> None:
    """Append ``mixed_stream(total)`` at ``rate`` events/s until ``stop_path`` exists.

    Each acknowledged append is written to ``acked_path`` as ``offset index`` lines (index into
    the stream). A failed append is retried with a fresh log object: the failed one may or may
    not have reached the log, so a retried record can be in the log twice; that is allowed (the
    log decides), and only acknowledged appends are held against the log at the end.
    """
    env = json.loads(env_json)
    records = mixed_stream(total, seed=SEED)
    tick = 0.05
    per_tick = max(1, round(rate * tick))
    event_log: kafka_log.KafkaEventLog | table_log.PostgresTableLog | None = None
    index = 0
    started = time.monotonic()
    with open(acked_path, "w", encoding="ascii") as acked:
        while index < len(records) and not os.path.exists(stop_path):
            chunk = records[index : index + per_tick]
            try:
                if event_log is None:
                    if env["IPLEDGER_LOG"] == "kafka":
                        event_log = await kafka_log.KafkaEventLog.open(
                            env["IPLEDGER_KAFKA_BOOTSTRAP"], env["IPLEDGER_EVENTS_TOPIC"]
                        )
                    else:
                        event_log = table_log.PostgresTableLog.from_dsn(
                            env["IPLEDGER_DATABASE_URL"], pool_size=1
                        )
                with anyio.fail_after(10):
                    appended = await event_log.append([(key_of(r), r) for r in chunk])
            except Exception as exc:  # a load generator retries whatever failed
                # (opening the Kafka log while the broker is away raises aiokafka's own errors)
                print(f"append failed, retrying: {exc!r}", flush=True)
                if event_log is not None:
                    with (
                        anyio.move_on_after(5, shield=True),
                        contextlib.suppress(Exception),
                    ):
                        await event_log.close()
                    event_log = None
                await anyio.sleep(0.2)
                continue
            for number, record in enumerate(appended):
                acked.write(f"{record.offset} {index + number}\n")
            acked.flush()
            index += len(chunk)
            ahead = started + index / rate - time.monotonic()
            if ahead > 0:
                await anyio.sleep(ahead)
    if event_log is not None:
        await event_log.close()


# --- starting allocators: exec'd afresh, or forked from a process that has imported them ------


def zygote() -> int:
    """Import what ``ipledger run`` imports once, then fork one allocator per request.

    Requests come on stdin, one a line, each answered on stdout: ``spawn LOG`` forks a child that
    runs ``ipledger run`` (``service.cli.main(["run"])``, the command's own code from there on)
    with its output in LOG and answers its pid; ``kill PID`` / ``term PID`` send it SIGKILL /
    SIGTERM and answer once it is reaped. At end of input every child still running is killed.

    Why: a fresh interpreter spends over a second of CPU importing the service, several seconds
    on a loaded machine, which would make the cycles' time mostly imports. A forked child is a
    process of its own, killed for real; only the imports are shared, not any state (nothing
    connects or starts a loop before the fork).
    """
    # What the command imports lazily, imported once here so that no child has to.
    for module in ("service.bootstrap", "service.processes.allocator"):
        importlib.import_module(module)
    live: set[int] = set()
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "spawn":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                code = 70
                try:
                    fd = os.open(argument, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    os.close(fd)
                    null = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(null, 0)
                    code = cli.main(["run"])
                finally:
                    os._exit(code)
            live.add(pid)
            print(pid, flush=True)
        elif command in ("kill", "term"):
            pid = int(argument)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if command == "kill" else signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            live.discard(pid)
            print(status, flush=True)
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return 0


class Forked:
    """Allocators forked by a ``zygote`` process of this soak's own."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "zygote"],
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _ask(self, request: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise errors.IpledgerError(f"the soak's zygote ended (asked {request!r})")
        return answer.strip()

    async def start(self) -> int:
        self.count += 1
        log = self.workdir / f"forked-{self.count}.log"
        return int(await anyio.to_thread.run_sync(self._ask, f"spawn {log}"))

    async def kill(self, pid: int) -> None:
        await anyio.to_thread.run_sync(self._ask, f"kill {pid}")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class Execed:
    """Allocators started as ``python -m service.cli run``, imports and all."""

    def __init__(self, env: dict[str, str], allocators: Allocators) -> None:
        self.env = env
        self.allocators = allocators
        self.running: dict[int, subprocess.Popen[bytes]] = {}

    async def start(self) -> int:
        process = self.allocators.start(self.env)
        self.running[process.pid] = process
        return process.pid

    async def kill(self, pid: int) -> None:
        process = self.running.pop(pid)
        process.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(lambda: process.wait(timeout=30))

    def close(self) -> None:
        pass


# --- the soak --------------------------------------------------------------------------------


@dataclass
class Soak:
    args: argparse.Namespace
    services: _Services
    dsn: str
    env: dict[str, str]
    workdir: Path
    allocators: Allocators
    launcher: Forked | Execed
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    tally: Tally = field(default_factory=Tally)

    async def cycle(self, progress: Progress, service_every: int) -> None:
        began = time.monotonic()
        before = await progress.consumed()
        pid = await self.launcher.start()
        if self.rng.random() < 0.3:
            # Anywhere from its start on: connecting, loading, the lease wait, work.
            await anyio.sleep(self.rng.uniform(0.0, 2.0))
            at = await progress.consumed()
            committed = at is not None and before is not None and at > before
            moment = "at random, after it committed" if committed else "at random, in start-up"
        else:
            await progress.wait_beyond(before or 0, STEP_TIMEOUT_S, self.allocators)
            if service_every and self.rng.randrange(service_every) == 0:
                await self.service_fault(progress)
            await anyio.sleep(self.rng.uniform(0.0, 0.3))
            moment = "0-0.3 s after a commit"
        await self.launcher.kill(pid)
        self.tally.kinds[f"allocator kill -9 ({moment})"] += 1
        self.tally.cycle_s.append(time.monotonic() - began)

    async def service_fault(self, progress: Progress) -> None:
        """Restart the broker or PostgreSQL under the working allocator; wait for its recovery."""
        kafka = self.services.kafka
        choices = ["postgres restart", "postgres kill -9"]
        if kafka is not None:
            choices += ["broker restart", "broker kill -9"]
        kind = self.rng.choice(choices)
        began = time.monotonic()
        server = self.services.postgres.server
        if kind == "postgres restart":
            await anyio.to_thread.run_sync(server.restart)
        elif kind == "postgres kill -9":
            await anyio.to_thread.run_sync(server.kill)
            await anyio.to_thread.run_sync(server.start)
        elif kafka is not None and kind == "broker restart":
            await anyio.to_thread.run_sync(kafka.restart)
        elif kafka is not None:
            await anyio.to_thread.run_sync(kafka.kill)
            await anyio.to_thread.run_sync(kafka.start)
        self.tally.kinds[kind] += 1
        await progress.close()
        at = await progress.wait_beyond(0, STEP_TIMEOUT_S, self.allocators)
        # Recovered: it commits again after the fault, not only what it had committed before.
        await progress.wait_beyond(at, STEP_TIMEOUT_S, self.allocators)
        self.tally.recovery_s.setdefault(kind, []).append(time.monotonic() - began)


@dataclass
class _Services:
    postgres: bench.ScratchPostgres
    kafka: KafkaBroker | None


def run(args: argparse.Namespace) -> list[bench.Result]:
    postgres = bench.ScratchPostgres("ipledger-soak-")
    kafka: KafkaBroker | None = None
    try:
        postgres.start()
        if args.soak_log == "kafka":
            kafka = KafkaBroker(postgres.root / "kafka", heap="512m")
            kafka.start()
        return anyio.run(_run, args, _Services(postgres, kafka))
    finally:
        try:
            if kafka is not None:
                kafka.close()
        finally:
            postgres.stop()


async def _run(args: argparse.Namespace, services: _Services) -> list[bench.Result]:
    cycles = QUICK["cycles"] if args.quick else args.soak_cycles
    rate = args.soak_rate
    workdir = services.postgres.root / "soak"
    workdir.mkdir()
    dsn = await services.postgres.fresh_database()
    deployment: Deployment | None = None
    if services.kafka is not None:
        deployment = Deployment.new(dsn, services.kafka.bootstrap)
        await deployment.init()
        env = deployment.env()
    else:
        env = {"IPLEDGER_DATABASE_URL": dsn, "IPLEDGER_LOG": "table"}
    # Small batches so that kills land mid-stream; the shortest lease, so a dead writer's lease
    # is taken over within a second.
    env |= {"IPLEDGER_BATCH_MAX_RECORDS": "50", "IPLEDGER_LEASE_TTL_S": "1"}
    if args.soak_instance_id and deployment is not None:
        env["IPLEDGER_INSTANCE_ID"] = args.soak_instance_id

    allocators = Allocators(workdir)
    launcher: Forked | Execed = (
        Forked(env, workdir) if args.soak_spawn == "fork" else Execed(env, allocators)
    )
    soak = Soak(args, services, dsn, env, workdir, allocators, launcher)
    acked_path = workdir / "acked.txt"
    stop_path = workdir / "stop"
    # Enough records for the longest run the cycles could take (6 s a cycle, service faults
    # included); the producer running dry ends the soak as a failure.
    total = rate * (cycles * 6 + 600)
    producer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "produce",
            json.dumps(env),
            str(total),
            str(rate),
            str(acked_path),
            str(stop_path),
        ],
        stdout=(workdir / "producer.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    progress = Progress(dsn)
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        done = 0
        for number in range(cycles):
            if args.soak_budget_s and time.monotonic() - started > args.soak_budget_s:
                print(f"soak: time budget spent after {number} cycles", file=sys.stderr)
                break
            if producer.poll() is not None:
                raise errors.IpledgerError(
                    "soak producer ended early:\n"
                    + (workdir / "producer.log").read_text(errors="replace")[-3000:]
                )
            soak.tally.progress.append((time.monotonic() - started, await progress.consumed() or 0))
            await soak.cycle(progress, args.soak_service_every)
            soak.tally.load.append(os.getloadavg()[0])
            done = number + 1
            if (number + 1) % 50 == 0:
                print(
                    f"soak: {number + 1}/{cycles} cycles, {time.monotonic() - started:.0f} s, "
                    f"consumed {await progress.consumed()}, {dict(soak.tally.kinds)}",
                    file=sys.stderr,
                    flush=True,
                )
        stop_path.touch()
        await anyio.to_thread.run_sync(lambda: producer.wait(timeout=60))
        soak_s = time.monotonic() - started
        load_after = os.getloadavg()
        final = allocators.start(env, name="final")
        end = await _log_end(env)
        # Everything consumed and, with Kafka, published (the relay runs after the commit).
        while (await progress.consumed() or 0) < end or (
            deployment is not None and (await progress.consumed(PUBLISHED_SQL) or 0) < end
        ):
            await anyio.sleep(0.05)
            if final.poll() is not None:
                raise errors.IpledgerError("the last allocator ended:\n" + allocators.logs())
        final.send_signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(lambda: final.wait(timeout=60))
        figures, digest = await _verify(env, dsn, deployment, acked_path)
    except BaseException:
        # The scratch directory goes with the server; the logs say what went wrong.
        kept = Path(tempfile.mkdtemp(prefix="ipledger-soak-failed-"))
        shutil.copytree(workdir, kept, dirs_exist_ok=True)
        print(f"soak: failed; its logs are kept in {kept}", file=sys.stderr)
        raise
    finally:
        stop_path.touch()
        if producer.poll() is None:
            producer.kill()
            producer.wait(timeout=10)
        await progress.close()
        launcher.close()
        allocators.close()

    kinds = soak.tally.kinds
    asked, cycles = cycles, done
    allocator_kills = sum(v for k, v in kinds.items() if k.startswith("allocator"))
    machine_load = (
        f"load average {' '.join(f'{x:.2f}' for x in load_before)} at the start, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} at the end"
    )
    detail_kinds = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
    log_kind = args.soak_log
    results = [
        bench.Result(
            NAME,
            f"kill -9 cycles ({log_kind} log)",
            cycles,
            "cycles",
            ">= 1,000 (long mode)",
            cycles >= 1000 if not args.quick else None,
            f"{cycles} of {asked} asked; {detail_kinds}; producer at {rate} events/s "
            f"throughout; {machine_load}",
        ),
        bench.Result(NAME, "allocator SIGKILLs", allocator_kills, "kills"),
        bench.Result(
            NAME,
            "broker restarts and kills",
            kinds["broker restart"] + kinds["broker kill -9"],
            "restarts",
        ),
        bench.Result(
            NAME,
            "PostgreSQL restarts and kills",
            kinds["postgres restart"] + kinds["postgres kill -9"],
            "restarts",
        ),
        bench.Result.of_samples(
            NAME,
            "cycle time",
            soak.tally.cycle_s,
            "s",
            detail="start an allocator, let it work, SIGKILL it (service faults included)",
            series=(
                bench.Series.of(
                    "soak-progress",
                    "records consumed",
                    [t for t, _ in soak.tally.progress],
                    [c for _, c in soak.tally.progress],
                    title=f"Soak: consumed offset through {cycles} kill -9 cycles",
                    x_label="seconds into the soak",
                    y_label="records committed",
                ),
            ),
        ),
        *(
            bench.Result.of_samples(
                NAME, f"{kind}: fault to next commit", values, "s", detail=f"{len(values)} faults"
            )
            for kind, values in sorted(soak.tally.recovery_s.items())
        ),
        bench.Result(
            NAME,
            "load average during the soak (1 min, median)",
            bench.median(soak.tally.load),
            "load",
            detail=f"min {min(soak.tally.load):.2f}, max {max(soak.tally.load):.2f}",
        ),
        bench.Result(NAME, "soak wall time", soak_s, "s"),
        bench.Result(NAME, "records in the log", figures["records"], "records"),
        bench.Result(NAME, "acknowledged appends", figures["acked"], "records"),
    ]
    for name, key in (
        ("lost records", "lost"),
        ("duplicate decisions", "duplicates"),
        ("twice-applied records (decision differs from simulate)", "twice_applied"),
    ):
        results.append(bench.Result(NAME, name, figures[key], "records", "0", figures[key] == 0))
    results.append(
        bench.Result(
            NAME,
            "ipledger state == ipledger simulate (whole log)",
            figures["digest_equal"],
            "bool",
            "1",
            figures["digest_equal"] == 1,
            f"digest {digest}",
        )
    )
    if deployment is not None:
        results += [
            bench.Result(
                NAME,
                "decisions never published",
                figures["unpublished"],
                "records",
                "0",
                figures["unpublished"] == 0,
            ),
            bench.Result(
                NAME,
                "decisions republished differently",
                figures["published_wrong"],
                "records",
                "0",
                figures["published_wrong"] == 0,
            ),
            bench.Result(
                NAME,
                "decisions republished identically (at least once)",
                figures["republished"],
                "records",
            ),
        ]
    return results


async def _open_log(env: dict[str, str]) -> kafka_log.KafkaEventLog | table_log.PostgresTableLog:
    if env["IPLEDGER_LOG"] == "kafka":
        return await kafka_log.KafkaEventLog.open(
            env["IPLEDGER_KAFKA_BOOTSTRAP"], env["IPLEDGER_EVENTS_TOPIC"]
        )
    return table_log.PostgresTableLog.from_dsn(env["IPLEDGER_DATABASE_URL"])


async def _log_end(env: dict[str, str]) -> int:
    event_log = await _open_log(env)
    try:
        return await event_log.end_offset(0)
    finally:
        await event_log.close()


async def _read_log(env: dict[str, str]) -> list[bytes]:
    event_log = await _open_log(env)
    try:
        end = await event_log.end_offset(0)
        out: list[bytes] = []
        while len(out) < end:
            batch = await event_log.read(0, len(out), 5000, 1.0)
            for record in batch:
                if record.offset != len(out):
                    raise errors.IpledgerError(f"the log skips from {len(out)} to {record.offset}")
                out.append(record.value)
        return out
    finally:
        await event_log.close()


async def _cli(env: dict[str, str], *args: str, stdin: bytes | None = None) -> bytes:
    result = await anyio.run_process(
        [sys.executable, "-m", "service.cli", *args],
        input=stdin,
        env={**os.environ, **env},
        check=False,
    )
    if result.returncode != 0:
        raise errors.IpledgerError(
            f"ipledger {' '.join(args)} exited {result.returncode}: "
            + result.stderr.decode(errors="replace")[-2000:]
        )
    return bytes(result.stdout)


async def _verify(
    env: dict[str, str], dsn: str, deployment: Deployment | None, acked_path: Path
) -> tuple[dict[str, int], str]:
    records = await _read_log(env)
    # Acknowledged appends: each must be in the log at the offset the log acknowledged.
    acked = 0
    lost = 0
    stream = mixed_stream(
        max(
            (int(line.split()[1]) for line in acked_path.read_text().split("\n") if line), default=0
        )
        + 1,
        seed=SEED,
    )
    for line in acked_path.read_text().splitlines():
        offset, index = (int(x) for x in line.split())
        acked += 1
        if offset >= len(records) or records[offset] != stream[index]:
            lost += 1

    # The documents both commands print, from the projection and from the log.
    whole_log = b"".join(r.replace(b"\n", b" ") + b"\n" for r in records)
    simulated = await _cli({}, "simulate", "-", stdin=whole_log)
    projected = await _cli(env, "state")
    oracle_state, oracle = simulate(records)
    digest = document.digest(oracle_state)
    reader = pg_reader.PostgresProjectionReader.from_dsn(dsn)
    try:
        committed = await reader.decisions(0)
    finally:
        await reader.close()
    per_offset = Counter(d.offset for d in committed)
    lost += sum(1 for offset in range(len(records)) if per_offset[offset] == 0)
    duplicates = sum(n - 1 for n in per_offset.values() if n > 1)
    twice_applied = 0
    seen: set[int] = set()
    for decision in committed:
        if decision.offset in seen or decision.offset >= len(oracle):
            twice_applied += decision.offset >= len(oracle)
            continue
        seen.add(decision.offset)
        if _comparable(decision.body) != _comparable(
            events.encode_decision(oracle[decision.offset])
        ):
            twice_applied += 1
    figures: dict[str, int] = {
        "records": len(records),
        "acked": acked,
        "lost": lost,
        "duplicates": duplicates,
        "twice_applied": twice_applied,
        "digest_equal": int(simulated == projected),
    }
    if deployment is not None:
        messages = await read_published(
            deployment.bootstrap, deployment.decisions_topic, len(records), 120
        )
        first: dict[int, dict[str, object]] = {}
        republished = wrong = 0
        for key, value in messages:
            if key == HEAD_KEY:
                continue
            body = json.loads(value)
            if body["offset"] in first:
                if first[body["offset"]] == body:
                    republished += 1
                else:
                    wrong += 1
                continue
            first[body["offset"]] = body
        for offset, oracle_decision in enumerate(oracle):
            expected = {
                "partition": 0,
                "offset": offset,
                **json.loads(events.encode_decision(oracle_decision)),
            }
            if offset in first and first[offset] != expected:
                wrong += 1
        unpublished = [offset for offset in range(len(records)) if offset not in first]
        if unpublished:
            print(f"soak: decisions never published: {_ranges(unpublished)}", file=sys.stderr)
        figures |= {
            "unpublished": len(unpublished),
            "published_wrong": wrong,
            "republished": republished,
        }
    return figures, digest


def _ranges(offsets: Sequence[int]) -> str:
    """``0-9, 15, 20-22``: sorted offsets as runs, to say where a gap is."""
    runs: list[list[int]] = []
    for offset in offsets:
        if runs and runs[-1][1] == offset - 1:
            runs[-1][1] = offset
        else:
            runs.append([offset, offset])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def _comparable(body: bytes) -> dict[str, object]:
    """A decision as JSON without its log position (the committed body carries it)."""
    value = json.loads(body)
    value.pop("partition", None)
    value.pop("offset", None)
    return dict(value)


def _main(argv: Sequence[str]) -> int:
    if argv == ["zygote"]:
        return zygote()
    if len(argv) == 6 and argv[0] == "produce":
        anyio.run(produce, argv[1], int(argv[2]), int(argv[3]), argv[4], argv[5])
        return 0
    print("usage: python -m bench.soak produce ENV_JSON TOTAL RATE ACKED_PATH STOP_PATH")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
