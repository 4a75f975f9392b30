"""Where the time goes: py-spy flame graphs of the allocator's hot path and of the query API.

Run by ``python -m bench`` (``--only profile``). Two targets, each a process of its own, sampled
from outside by py-spy (a sampling profiler reading the interpreter's stacks through ptrace, so
the code runs unmodified and at nearly full speed; as root ptrace is allowed):

- **allocator**: a fresh interpreter runs ``PartitionAllocator`` over a pre-filled Kafka topic
  (bench.allocator's workload) into a fresh PostgreSQL database until it has caught up. py-spy
  attaches once the process is ready and before it starts, so the profile is the steady apply
  loop: fetch, decode, decide, project, commit.
- **api**: ``ipledger api`` over a projection written by bench.api (``build``), under a closed
  loop of IP, node and owner lookups from this process for ``--profile-seconds``.

Each target is recorded twice at once (``--nonblocking``: the process is not paused to read its
stacks): as a flame graph SVG (``profile-<target>.svg`` in the ``--plots`` directory, default
``.data/bench-profile``; the report links it) and as raw collapsed stacks, which this module
folds into the "where the time goes" rows: the share of samples whose innermost frame lies in
each part of the code (``BUCKETS``: matched on the file path), and for the allocator that
share as microseconds of wall time per event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx

import bench
from service import allocator
from service.adapters.kafka import log as kafka_log
from service.adapters.postgres import projection as pg_projection

NAME = "profile"
# --quick (a smoke run): events through the profiled allocator; ms the API is profiled; the
# API's database (nodes of 110 pods, history rows).
QUICK = {"events": 10_000, "api_ms": 2000, "api_nodes": 64, "api_history": 10_000}
RATE = 250  # samples per second

# (bucket, substrings of a frame's "function (file:line)"), first match wins; checked in order.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("allocation core (service/domain)", ("service/domain/",)),
    ("event decoding (service/events, msgspec)", ("service/events", "msgspec")),
    ("projection writes (service/adapters/postgres)", ("service/adapters/postgres/",)),
    ("Kafka adapter (service/adapters/kafka)", ("service/adapters/kafka/",)),
    ("allocator loop (service/allocator)", ("service/allocator",)),
    ("query API handlers (service/api, service/processes/api)", ("service/api", "processes/api")),
    ("other ipledger code", ("service/",)),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("asyncpg (PostgreSQL driver)", ("asyncpg/",)),
    ("aiokafka (Kafka client)", ("aiokafka/", "kafka/")),
    (
        "HTTP server (litestar, uvicorn, h11, httptools)",
        ("litestar/", "uvicorn/", "h11", "httptools"),
    ),
    ("JSON (json, orjson)", ("json/", "orjson")),
    ("event loop (asyncio, anyio, selectors)", ("asyncio/", "anyio/", "selectors", "uvloop")),
    ("logging", ("logging/",)),
)
OTHER = "other (standard library, builtins, the rest)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile-events", type=int, default=200_000, help="profile: events the allocator applies"
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=20.0, help="profile: seconds of API load"
    )


def py_spy() -> str | None:
    """The py-spy executable (the bench extra installs it beside this interpreter)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def bucket_of(frame: str) -> str:
    for name, needles in BUCKETS:
        if any(needle in frame for needle in needles):
            return name
    return OTHER


def fold(raw: str) -> tuple[dict[str, int], dict[str, int], int]:
    """Raw collapsed stacks (``frame;frame;... count`` per line) -> samples per bucket of the
    innermost frame, samples per innermost function, total samples."""
    buckets: dict[str, int] = {}
    functions: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        leaf = stack.rsplit(";", 1)[-1]
        total += count
        buckets[bucket_of(leaf)] = buckets.get(bucket_of(leaf), 0) + count
        functions[leaf] = functions.get(leaf, 0) + count
    return buckets, functions, total


@contextmanager
def spying(pid: int, stem: Path, duration: float | None = None) -> Iterator[None]:
    """py-spy on ``pid`` while the block runs: ``stem``.svg and ``stem``.raw when it ends.

    Both recorders are attached (each has said it samples) before the block starts; they stop
    when the process exits, after ``duration`` seconds, or at the end of the block (SIGINT, on
    which py-spy writes what it has).
    """
    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    recorders = []
    for fmt, suffix in (("flamegraph", ".svg"), ("raw", ".raw")):
        command = [spy, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking"]
        command += ["--format", fmt, "--output", str(stem.with_suffix(suffix))]
        if duration is not None:
            command += ["--duration", str(max(1, round(duration)))]
        recorders.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    try:
        for recorder in recorders:
            # py-spy says so on its stdout; the rest of what it prints is drained at the end.
            assert recorder.stdout is not None
            said = [recorder.stdout.readline() for _ in range(1)]
            while said[-1] and "Sampling process" not in said[-1] and len(said) < 10:
                said.append(recorder.stdout.readline())
            if "Sampling process" not in said[-1]:
                raise RuntimeError(f"py-spy did not attach to {pid}: {''.join(said).strip()}")
        yield
    finally:
        for recorder in recorders:
            if recorder.poll() is None and duration is None:
                recorder.send_signal(2)
        for recorder in recorders:
            try:
                recorder.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.communicate()


def where_the_time_goes(
    target: str, raw: str, svg: Path, per_event_us: float | None, context: str
) -> list[bench.Result]:
    buckets, functions, total = fold(raw)
    if not total:
        return [bench.Result(NAME, f"{target}: samples", 0, "samples", detail="py-spy got none")]
    top = sorted(functions.items(), key=lambda item: -item[1])[:5]
    rows = [
        bench.Result(
            NAME,
            f"{target}: samples",
            total,
            "samples",
            detail=f"{context}; flame graph [{svg.name}](img/{svg.name}); hottest functions: "
            + "; ".join(f"{f} {100 * n / total:.1f} %" for f, n in top),
        )
    ]
    for bucket, count in sorted(buckets.items(), key=lambda item: -item[1]):
        share = 100 * count / total
        if per_event_us is None:
            rows.append(bench.Result(NAME, f"{target}: {bucket}", share, "%"))
        else:
            rows.append(
                bench.Result(
                    NAME,
                    f"{target}: {bucket}",
                    share * per_event_us / 100,
                    "µs/event",
                    detail=f"{share:.1f} % of samples",
                )
            )
    return rows


# --- the allocator --------------------------------------------------------------------------------


async def _apply(bootstrap: str, topic: str, dsn: str, count: int) -> float:
    """The allocator over the topic until ``count`` records are committed; events/s.

    Written here rather than borrowed from bench.allocator so that the profiled process runs
    nothing but the product's own loop (and so that this module follows that one's changes).
    """

    event_log = await kafka_log.KafkaEventLog.open(bootstrap, topic)
    projection = pg_projection.PostgresProjection.from_dsn(dsn, log_name="bench", holder="bench")
    worker = allocator.PartitionAllocator(event_log, projection, 0)
    stop = anyio.Event()
    try:
        started = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run, stop)
            while worker.metrics.next_offset.get(0, -1) < count:
                await anyio.sleep(0.01)
            elapsed = time.perf_counter() - started
            stop.set()
    finally:
        await projection.close()
        await event_log.close()
    return count / elapsed


def allocator_worker(bootstrap: str, topic: str, dsn: str, count: int) -> None:
    """In the profiled process: wait for "go" on stdin, apply ``count`` events, print the rate."""
    print("ready", flush=True)
    sys.stdin.readline()
    print(f"{anyio.run(_apply, bootstrap, topic, dsn, count)}", flush=True)


async def _prepare_allocator(services: object, count: int) -> tuple[str, str, str]:
    from bench import allocator as allocator_bench  # noqa: PLC0415
    from service.adapters.kafka import log as kafka_log  # noqa: PLC0415

    assert isinstance(services, allocator_bench.Services)
    topic = "bench.profile"
    bootstrap = services.kafka.bootstrap
    await kafka_log.ensure_topics(bootstrap, topic, 1)
    await allocator_bench.fill_topic(bootstrap, topic, allocator_bench.workload(count))
    return bootstrap, topic, await services.fresh_database()


def profile_allocator(count: int, out: Path, *, share: bool = False) -> list[bench.Result]:
    from bench import allocator as allocator_bench  # noqa: PLC0415

    # share (--quick): the run's servers, if another benchmark started them (bench.sharing).
    with bench.servers(allocator_bench.Services, share=share) as services:
        bootstrap, topic, dsn = anyio.run(_prepare_allocator, services, count)
        command = [sys.executable, "-m", "bench.profile", "allocator", bootstrap, topic, dsn]
        worker = subprocess.Popen(
            [*command, str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert worker.stdin is not None and worker.stdout is not None
        try:
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError("the profiled allocator did not start")
            stem = out / "profile-allocator"
            with spying(worker.pid, stem):
                worker.stdin.write("go\n")
                worker.stdin.flush()
                rate = float(worker.stdout.readline())
                worker.wait(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    raw = stem.with_suffix(".raw").read_text(encoding="utf-8")
    return where_the_time_goes(
        "allocator",
        raw,
        stem.with_suffix(".svg"),
        1e6 / rate,
        f"{count:,} events from a pre-filled Kafka topic at {rate:,.0f} events/s "
        f"({1e6 / rate:.1f} µs per event, wall)",
    )


# --- the query API --------------------------------------------------------------------------------


async def _closed_loop(
    base: str, paths: Sequence[str], seconds: float, clients: int
) -> dict[int, int]:
    """``clients`` requests in flight for ``seconds``; answers counted by status."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client(k: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10.0) as http:
            i = k
            while time.monotonic() < deadline:
                status = (await http.get(paths[i % len(paths)])).status_code
                statuses[status] = statuses.get(status, 0) + 1
                i += clients

    await asyncio.gather(*(client(k) for k in range(clients)))
    return statuses


def profile_api(seconds: float, quick: bool, out: Path) -> list[bench.Result]:
    from bench import api as api_bench  # noqa: PLC0415

    shape = api_bench.Shape(
        nodes=QUICK["api_nodes"] if quick else 4096,
        history=QUICK["api_history"] if quick else 100_000,
    )
    with bench.ScratchPostgres("ipledger-bench-profile-") as postgres:
        dsn = asyncio.run(postgres.fresh_database())
        asyncio.run(api_bench.build(dsn, shape))
        # The API connects as its read-only role, which ipledger init creates (as operators do).
        env = {**os.environ, "IPLEDGER_DATABASE_URL": dsn, "IPLEDGER_LOG": "table"}
        subprocess.run([sys.executable, "-m", "service.cli", "init"], env=env, check=True)
        port = api_bench._free_port()
        server = api_bench.start_api(dsn, port)
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(api_bench.wait_ready(base, server))
            rng = random.Random(14)
            lookups = [k for k in api_bench.kinds(shape) if k.name in {"ip", "node", "owner"}]
            lookups = lookups or api_bench.kinds(shape)
            paths = [lookups[i % len(lookups)].paths(rng) for i in range(5000)]
            stem = out / "profile-api"
            with spying(server.pid, stem, duration=seconds):
                statuses = asyncio.run(_closed_loop(base, paths, seconds, 8))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    raw = stem.with_suffix(".raw").read_text(encoding="utf-8")
    rate = sum(statuses.values()) / seconds
    answers = ", ".join(f"{n:,} x {status}" for status, n in sorted(statuses.items()))
    return where_the_time_goes(
        "api",
        raw,
        stem.with_suffix(".svg"),
        None,
        f"ipledger api, {shape.nodes:,} nodes, 8 clients in a closed loop of IP, node and owner "
        f"lookups for {seconds:.0f} s: {rate:,.0f} requests/s answered ({answers})",
    )


def run(args: argparse.Namespace) -> list[bench.Result]:
    if py_spy() is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    out = Path(getattr(args, "plots", None) or ".data/bench-profile")
    out.mkdir(parents=True, exist_ok=True)
    quick = bool(args.quick)
    results = profile_allocator(QUICK["events"] if quick else args.profile_events, out, share=quick)
    results += profile_api(QUICK["api_ms"] / 1000 if quick else args.profile_seconds, quick, out)
    for raw in out.glob("profile-*.raw"):
        raw.unlink()
    return results


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "allocator":
        allocator_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        sys.exit("usage: python -m bench.profile allocator BOOTSTRAP TOPIC DSN COUNT")
