"""``ipledger run`` with several partitions, on Kafka and on the table log, as an operator runs it.

The reported defect: with ``IPLEDGER_PARTITIONS`` above 1 on Kafka, ``ipledger run`` led every
partition but applied nothing, and ``ipledger state --wait-caught-up`` timed out. Here
``ipledger init``, ``ipledger append`` and ``ipledger run`` are real processes on real services,
with eight clusters spread so that every partition is the home of at least one; the state
``ipledger state`` prints must be ``simulate``'s, with one decision per offset in every partition.
A changed partition count is refused by ``ipledger run`` with the reason.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from service.domain import document, events, partitioning
from tests.e2e.conftest import Allocators, assert_projection_matches, simulate
from tests.e2e.test_kafka_allocator import Deployment
from tests.streams import key_of, mixed_stream

pytestmark = pytest.mark.anyio
CLUSTERS = ("default", "east", "west", "alpha", "beta", "north", "lab", "edge")
CLI_TIMEOUT_S = 120.0


def environment(
    kind: str, pg_dsn: str, request: pytest.FixtureRequest
) -> tuple[dict[str, str], str]:
    """The environment of a deployment on ``kind``'s log, and the log's name in the projection."""
    if kind == "table":
        return {"IPLEDGER_DATABASE_URL": pg_dsn, "IPLEDGER_LOG": "table"}, "table"
    deployment = Deployment.new(pg_dsn, request.getfixturevalue("kafka_broker").bootstrap)
    return deployment.env(), deployment.log_name


async def cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    with anyio.fail_after(CLI_TIMEOUT_S):
        result = await anyio.run_process(
            [sys.executable, "-m", "service.cli", *args], env={**os.environ, **env}, check=False
        )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


@pytest.mark.parametrize("partitions", [2, 4])
@pytest.mark.parametrize(
    "kind", ["table", pytest.param("kafka", marks=pytest.mark.kafka)], ids=["table", "kafka"]
)
async def test_run_applies_every_partition_as_simulate_does(
    kind: str,
    partitions: int,
    pg_dsn: str,
    request: pytest.FixtureRequest,
    allocators: Allocators,
    tmp_path: Path,
) -> None:
    base, log_name = environment(kind, pg_dsn, request)
    env = {**base, "IPLEDGER_PARTITIONS": str(partitions), "IPLEDGER_BATCH_MAX_RECORDS": "300"}
    records = [
        r
        for r in mixed_stream(3000, seed=41, clusters=CLUSTERS)
        if not isinstance(events.decode(r), events.DecodeFailure)
    ]
    per_partition: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    for record in records:
        per_partition[partitioning.partition_for(key_of(record), partitions)].append(record)
    assert all(per_partition.values()), "a partition without records tests nothing"
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b"\n".join(records) + b"\n")

    code, output = await cli(env, "init")
    assert code == 0, output
    code, output = await cli(env, "append", str(events_file))
    assert code == 0, output
    allocators.start(env)
    code, output = await cli(env, "state", "--wait-caught-up", "--timeout", "90")

    assert code == 0, output + allocators.logs()
    oracle, _ = simulate(records)
    assert json.loads(output) == json.loads(
        document.encode_document(document.state_document(oracle))
    )
    await assert_projection_matches(pg_dsn, log_name, per_partition)


@pytest.mark.parametrize(
    "kind", ["table", pytest.param("kafka", marks=pytest.mark.kafka)], ids=["table", "kafka"]
)
async def test_run_refuses_another_partition_count_than_the_log_was_built_with(
    kind: str, pg_dsn: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    base, _ = environment(kind, pg_dsn, request)
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b"\n".join(mixed_stream(50, seed=42, clusters=CLUSTERS)[:8]) + b"\n")
    two = {**base, "IPLEDGER_PARTITIONS": "2"}
    code, output = await cli(two, "init")
    assert code == 0, output
    code, output = await cli(two, "append", str(events_file))
    assert code == 0, output

    code, output = await cli({**base, "IPLEDGER_PARTITIONS": "3"}, "run")

    assert code == 1, output
    assert "2 partitions but 3 are configured" in output, output
    assert "Traceback" not in output, output
