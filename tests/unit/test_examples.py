"""Each file of examples/ through ``ipledger simulate``, as examples/README.md says to run it.

The decisions each example exists to show are asserted: the dual-stack cluster's CIDRs and
addresses (IPv6 first, next-fit, an idempotent retry, a release and reuse); the pool that ends in
``allocator full`` and serves the waiting node once it is expanded; a migration that keeps the
operator's exact CIDRs and allocates around them; a node network inside the pod pool flagged as a
conflict; every reason the core gives for refusing a valid event; every reason a record is not an
event at all. ``ipledger simulate`` runs as a user runs it (a process), and every file must give
one decision per line and leave the command's exit code 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def simulate(name: str, *extra: str) -> tuple[list[dict[str, Any]], str]:
    """The decisions of ``ipledger simulate --decisions examples/<name>``, and its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "simulate", "--decisions", f"examples/{name}"],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    records = [line for line in (EXAMPLES / name).read_bytes().splitlines() if line.strip()]
    assert len(decisions) == len(records)
    return decisions, result.stderr.decode()


def state_of(name: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "simulate", f"examples/{name}"],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    )
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def by_id(decisions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last decision of each id (a retried event repeats its id)."""
    return {d["id"]: d for d in decisions}


def test_every_example_is_described_in_the_readme() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for path in sorted(EXAMPLES.glob("*.jsonl")):
        assert f"`{path.name}`" in readme, path.name


def test_three_node_dual_stack_cluster() -> None:
    decisions, stderr = simulate("dual-stack-cluster.jsonl")
    assert stderr == ""
    assert all(d["error"] is None and d.get("conflict") is None for d in decisions)
    nodes = {d["id"]: d["podCIDRs"] for d in decisions if d["type"] == "node.added"}
    assert nodes == {
        "ds-0001": ["10.0.0.0/24", "fd00::/120"],
        "ds-0002": ["10.0.1.0/24", "fd00::100/120"],
        "ds-0003": ["10.0.2.0/24", "fd00::200/120"],
    }
    ips = [d["ips"] for d in decisions if d["id"] == "ds-0014"]
    assert ips == [["fd00::105", "10.0.1.5"]] * 2  # the retry gets the same addresses
    assert by_id(decisions)["ds-0015"]["ips"] == ["10.0.2.5"]  # family ipv4 only
    assert by_id(decisions)["ds-0016"]["ips"] == ["fd00::104", "10.0.1.4"]
    # Next-fit: the released pair is not handed out again straight away.
    assert by_id(decisions)["ds-0017"]["ips"] == ["fd00::106", "10.0.1.6"]
    state = state_of("dual-stack-cluster.jsonl")["clusters"]["default"]["nodes"]
    assert sorted(state) == ["cp-1", "worker-a", "worker-b"]
    assert sum(len(node["ips"]) for node in state.values()) == 2 * 11 + 1


def test_pool_exhaustion_then_expansion() -> None:
    decisions, _ = simulate("pool-exhaustion.jsonl")
    seen = by_id(decisions)
    assert seen["lab-0005"]["error"] == "allocator full"
    assert seen["lab-0005"]["podCIDRs"] == []
    assert seen["lab-0006"]["error"] == "node lab-3 has no ipv4 pod CIDR"
    assert seen["lab-pool-2"]["error"] is None
    # The expansion served the waiting node: its pods get addresses in the new element.
    assert seen["lab-0007"] == {
        "id": "lab-0007",
        "type": "ip.requested",
        "cluster": "lab",
        "error": None,
        "ips": ["10.20.8.1"],
    }
    nodes = state_of("pool-exhaustion.jsonl")["clusters"]["lab"]["nodes"]
    assert nodes["lab-3"]["podCIDRs"] == ["10.20.8.0/24"] and nodes["lab-3"]["error"] is None
    assert "lab-1" not in nodes  # deleted; its CIDR went back to the pool
    assert all(node["error"] is None for node in nodes.values())


def test_migration_keeps_the_operators_cidrs() -> None:
    decisions, _ = simulate("migration.jsonl")
    seen = by_id(decisions)
    adopted = {d["id"]: d for d in decisions if d["type"] == "node.adopted"}
    assert adopted["adopt-ip-172-31-0-11"]["podCIDRs"] == ["10.0.0.0/24", "fd00::/120"]
    assert adopted["adopt-ip-172-31-0-14"]["podCIDRs"] == ["10.0.3.0/24", "fd00::300/120"]
    repeats = [d for d in decisions if d["id"] == "adopt-ip-172-31-0-12"]
    assert len(repeats) == 2 and all(d["error"] is None for d in repeats)
    # New nodes are allocated around the adopted CIDRs: the gap first, then after the last.
    assert seen["mig-0001"]["podCIDRs"] == ["10.0.2.0/24", "fd00::200/120"]
    assert seen["mig-0002"]["podCIDRs"] == ["10.0.4.0/24", "fd00::400/120"]
    assert seen["adopt-ip-172-31-0-17"]["error"] == (
        "requested CIDR (10.0.1.0/24) is already allocated"
    )
    assert all(d.get("conflict") is None for d in decisions)


def test_a_node_network_inside_the_pod_pool_is_flagged() -> None:
    decisions, _ = simulate("node-overlap.jsonl")
    seen = by_id(decisions)
    assert seen["dc-0001"]["error"] is None  # allocated, as Cilium does, but flagged
    assert seen["dc-0001"]["conflict"] == (
        "node address 10.0.1.21 is inside the pod CIDR pool 10.0.0.0/8"
    )
    assert seen["dc-0005"]["conflict"] == "node address 10.0.1.1 is held by default/nginx-0"
    assert seen["dc-0006"]["conflict"] is None and seen["dc-0007"]["conflict"] is None
    state = state_of("node-overlap.jsonl")["clusters"]
    # A node's own address is never handed to a pod.
    assert "10.0.1.22" not in state["onprem"]["nodes"]["rack1-node2"]["ips"]


REFUSALS = (
    "no pool configured for cluster checks",
    "invalid CIDR '10.30.0.0/255.255.0.0': the prefix length must be a decimal number",
    "invalid CIDR '10.30.0.1/16': host bits set",
    "fd30::/104 is not an IPv4 CIDR",
    "clusterPoolIPv4MaskSize is required with a IPv4 pool",
    "clusterPoolIPv4MaskSize 12 is shorter than the prefix of 10.30.0.0/16",
    "pool elements 10.30.0.0/16 and 10.30.128.0/17 overlap",
    "clusterPoolIPv4MaskSize 32 leaves no pod address",
    "clusterPoolIPv4PodCIDRList may only be appended to",
    "clusterPoolIPv4MaskSize cannot change from 30 to 24",
    "ipv6 is not enabled in the pool",
    "unknown node ghost-1",
    "invalid address '192.168.070.12'",
    "invalid address 'fe80::1%eth0': zone identifiers are not accepted",
    "invalid CIDR '::ffff:10.30.9.0/120': IPv4-mapped IPv6 addresses are not accepted",
    "podCIDRs is empty",
    "allocator not configured for the requested CIDR 10.99.0.0/24",
    "node has CIDRs allocated ([10.30.0.0/30]) that conflict with requested CIDRs",
    "default/pod-1 holds no address on node early-1",
    "range is full",
    "requested CIDR (10.30.0.0/30) is already allocated",
    "10.30.0.1 is not held by default/pod-2 on node early-1",
    "invalid ip '10.30.0.256'",
)


def test_refused_events_show_every_reason_of_the_core() -> None:
    decisions, stderr = simulate("refused-events.jsonl")
    assert stderr == ""  # valid events all: refused by the rules, not malformed
    errors = [d["error"] for d in decisions if d["error"] is not None]
    for reason in REFUSALS:
        assert any(error.startswith(reason) for error in errors), reason
    # Only the two configurations meant to pass and the requests that fit do.
    accepted = [d["id"] for d in decisions if d["error"] is None]
    assert accepted == ["ref-10", "ref-24", "ref-25"]


MALFORMED = (
    "invalid event: `node` must be a DNS-1123 subdomain",
    "invalid event: unknown event type 'node.renamed'",
    "invalid event: Object missing required field `owner`",
    "invalid event: JSON is malformed",
    "invalid event: Expected `object`, got `array`",
    "invalid event: Object missing required field `id`",
    "invalid event: Expected `str` of length >= 1 - at `$.id`",
    "invalid event: `cluster` must be a DNS-1123 label",
    "invalid event: `time` '2026-02-30T10:00:00Z' is not a date-time",
    "invalid event: `time` must be an RFC 3339 date-time with an offset",
    "invalid event: Expected `array`, got `str` - at `$.addresses`",
    "invalid event: Expected `int | null`, got `float`",
    "invalid event: Invalid enum value 'ipv5'",
    "invalid event: `id` must be text without control characters",
    "record is not valid UTF-8",
)


@pytest.mark.parametrize("command", ["simulate", "append"])
def test_bad_events_show_every_reason_a_record_is_not_an_event(command: str) -> None:
    lines = [line for line in (EXAMPLES / "bad-events.jsonl").read_bytes().splitlines() if line]
    if command == "simulate":
        decisions, stderr = simulate("bad-events.jsonl")
        assert all(d["error"] for d in decisions)
        errors = [d["error"] for d in decisions]
        assert stderr.endswith(f"{len(lines)} malformed line(s) rejected\n")
    else:
        # Nothing is appended (nor opened: no valid line, so no database is needed).
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "append", "examples/bad-events.jsonl"],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
            env={"PATH": "/usr/bin:/bin", "IPLEDGER_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
        )
        assert result.returncode == 1
        assert f"appended 0 event(s), {len(lines)} invalid line(s)".encode() in result.stdout
        errors = [
            line.removesuffix(" (not appended)") for line in result.stderr.decode().splitlines()
        ]
    assert len(errors) == len(lines)
    for reason in MALFORMED:
        assert sum(reason in error for error in errors) >= 1, reason
