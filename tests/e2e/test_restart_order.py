"""Issue 7.1 with real processes: a restart between two nodes' arrival and IPv6 being enabled.

Cluster ``c2`` has an IPv4-only pool; ``worker-b`` joins, then ``worker-a``; the allocator stops
(SIGTERM, or ``kill -9``) and starts again; then IPv6 is enabled. IPv6 CIDRs go to existing nodes
in arrival order, so ``worker-b`` must get ``fd20::/120`` and ``worker-a`` ``fd20::100/120``, in
the projection (``ipledger state``) exactly as in ``ipledger simulate`` over the same events. The
live service once restored the nodes by name and gave them the other way round.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from tests.e2e.conftest import Allocators, assert_projection_matches, wait_consumed

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

BEFORE_THE_RESTART = [
    {
        "type": "pool.configured",
        "id": "c2-pool-v4",
        "cluster": "c2",
        "clusterPoolIPv4PodCIDRList": ["10.20.0.0/16"],
        "clusterPoolIPv4MaskSize": 24,
    },
    {"type": "node.added", "id": "c2-add-b", "cluster": "c2", "node": "worker-b"},
    {"type": "node.added", "id": "c2-add-a", "cluster": "c2", "node": "worker-a"},
]
AFTER_THE_RESTART = [
    {
        "type": "pool.configured",
        "id": "c2-pool-dual",
        "cluster": "c2",
        "clusterPoolIPv4PodCIDRList": ["10.20.0.0/16"],
        "clusterPoolIPv4MaskSize": 24,
        "clusterPoolIPv6PodCIDRList": ["fd20::/104"],
        "clusterPoolIPv6MaskSize": 120,
    },
]
EXPECTED_CIDRS = {
    "worker-b": ["10.20.0.0/24", "fd20::/120"],
    "worker-a": ["10.20.1.0/24", "fd20::100/120"],
}


async def ipledger(env: dict[str, str], *args: str) -> bytes:
    """Run one ``ipledger`` command to completion; its standard output."""
    result = await anyio.run_process(
        [sys.executable, "-m", "service.cli", *args], env={**os.environ, **env}, check=False
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def write_events(path: Path, bodies: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(body) + "\n" for body in bodies))
    return path


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_ipv6_enabled_after_a_restart_goes_to_the_nodes_in_arrival_order(
    pg_dsn: str, allocators: Allocators, tmp_path: Path, stop: signal.Signals
) -> None:
    # A short lease, so that after kill -9 the new writer takes over within a second or so.
    env = {"IPLEDGER_DATABASE_URL": pg_dsn, "IPLEDGER_LOG": "table", "IPLEDGER_LEASE_TTL_S": "1"}
    first = write_events(tmp_path / "first.jsonl", BEFORE_THE_RESTART)
    second = write_events(tmp_path / "second.jsonl", AFTER_THE_RESTART)
    every = write_events(tmp_path / "all.jsonl", BEFORE_THE_RESTART + AFTER_THE_RESTART)

    await ipledger(env, "append", str(first))
    before = allocators.start(env, "before")
    await wait_consumed(pg_dsn, len(BEFORE_THE_RESTART), 60, allocators)
    before.send_signal(stop)
    code = before.wait(timeout=20)
    assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL), allocators.logs()

    allocators.start(env, "after")
    await ipledger(env, "append", str(second))
    total = len(BEFORE_THE_RESTART) + len(AFTER_THE_RESTART)
    await wait_consumed(pg_dsn, total, 60, allocators)

    projected = await ipledger(env, "state", "--wait-caught-up", "--timeout", "30")
    simulated = await ipledger({}, "simulate", str(every))
    nodes = json.loads(projected)["clusters"]["c2"]["nodes"]
    assert {name: node["podCIDRs"] for name, node in nodes.items()} == EXPECTED_CIDRS
    assert json.loads(projected) == json.loads(simulated)
    assert projected == simulated
    records = [line.encode() for line in every.read_text().splitlines()]
    await assert_projection_matches(pg_dsn, "table", records)
