"""``check.compare``: the differences between the projection's nodes and the CiliumNodes.

Pure, so every case is a few values: each kind of problem, the order, what counts as equal (an
absent error and an empty one; CIDR text as ipledger writes it, in its order), and the note that
says what the sync worker recorded. The command around it is tested against the real API server
in tests/integration/test_status_and_check.py.
"""

from __future__ import annotations

import datetime
import ipaddress

from service import ports
from service.processes import check

T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def node(name: str, *cidrs: str, error: str | None = None, version: int = 7) -> ports.NodeView:
    return ports.NodeView(
        cluster="c",
        name=name,
        pod_cidrs=tuple(ipaddress.ip_network(c) for c in cidrs),
        error=error,
        conflict=None,
        addresses=(),
        waiting=not cidrs,
        pinned=False,
        ipv4_pod_ips=0,
        ipv6_pod_ips=0,
        version=version,
        updated_at=T0,
    )


def seen(name: str, *cidrs: str, error: str | None = None) -> ports.ObservedNode:
    return ports.ObservedNode(name=name, pod_cidrs=cidrs, error=error)


def synced(
    name: str, version: int, at: int | None, *, error: str | None = None, deleted: bool = False
) -> ports.NodeSync:
    return ports.NodeSync(
        name=name, version=version, deleted=deleted, synced_version=at, error=error
    )


def test_what_agrees_is_no_problem() -> None:
    nodes = [node("a", "10.0.0.0/24", "fd00::/120"), node("b", error="allocator full")]
    observed = [seen("a", "10.0.0.0/24", "fd00::/120"), seen("b", error="allocator full")]
    assert check.compare("c", nodes, observed, {}) == []
    # No error, absent or empty, is the same.
    assert (
        check.compare("c", [node("d", "10.0.1.0/24")], [seen("d", "10.0.1.0/24", error="")], {})
        == []
    )


def test_each_kind_by_node_name() -> None:
    nodes = [
        node("delta", "10.0.3.0/24"),
        node("bravo", "10.0.1.0/24"),
        node("charlie", error="allocator full"),
        node("alpha", "10.0.0.0/24", "fd00::/120"),
    ]
    observed = [
        seen("zulu", "10.9.0.0/24"),
        seen("charlie"),
        seen("bravo", "10.0.1.0/25"),
        # The same CIDRs in another order are not what ipledger writes.
        seen("alpha", "fd00::/120", "10.0.0.0/24"),
    ]
    problems = check.compare("c", nodes, observed, {})
    assert [(p.name, p.kind) for p in problems] == [
        ("alpha", check.POD_CIDRS),
        ("bravo", check.POD_CIDRS),
        ("charlie", check.ERROR),
        ("delta", check.MISSING),
        ("zulu", check.UNKNOWN),
    ]
    bravo = problems[1]
    assert (bravo.ipledger, bravo.other) == (["10.0.1.0/24"], ["10.0.1.0/25"])
    assert bravo.message == "spec.ipam.podCIDRs are [10.0.1.0/25], ipledger has [10.0.1.0/24]"
    charlie = problems[2]
    assert (charlie.ipledger, charlie.other) == ("allocator full", None)
    assert charlie.message == (
        "status.ipam.operator-status.error is empty, ipledger has 'allocator full'"
    )
    assert (problems[3].ipledger, problems[3].other) == (["10.0.3.0/24"], None)
    assert (problems[4].ipledger, problems[4].other) == (None, ["10.9.0.0/24"])
    assert all(p.check == "kubernetes" and p.cluster == "c" for p in problems)


def test_a_node_can_differ_in_both_fields() -> None:
    problems = check.compare(
        "c", [node("a", "10.0.0.0/24")], [seen("a", error="allocator full")], {}
    )
    assert [p.kind for p in problems] == [check.POD_CIDRS, check.ERROR]


def test_the_note_says_what_the_sync_worker_recorded() -> None:
    nodes = [node("a", "10.0.0.0/24", version=9)]
    wrong = [seen("a", "10.0.9.0/24")]

    def note(progress: dict[str, ports.NodeSync]) -> str:
        (problem,) = check.compare("c", nodes, wrong, progress)
        return problem.note

    assert "has not mirrored this node yet" in note({})
    assert "has not mirrored this node yet" in note({"a": synced("a", 9, None)})
    assert note({"a": synced("a", 9, 7)}) == (
        "the sync worker has mirrored version 7, not yet 9: it may be in flight"
    )
    assert note({"a": synced("a", 9, 9, error="403 Forbidden")}) == (
        "the sync worker's last write failed: 403 Forbidden"
    )
    assert "changed by someone else" in note({"a": synced("a", 9, 9)})
    (missing,) = check.compare("c", nodes, [], {"a": synced("a", 9, 9)})
    assert "deleted by someone else" in missing.note


def test_an_unknown_ciliumnode_of_a_deleted_node_says_so() -> None:
    (problem,) = check.compare(
        "c", [], [seen("gone", "10.0.0.0/24")], {"gone": synced("gone", 12, 12, deleted=True)}
    )
    assert problem.kind == check.UNKNOWN
    assert problem.note.startswith("deleted in ipledger at offset 12")
    (never,) = check.compare("c", [], [seen("new")], {})
    assert "ipledger adopt --from-kubernetes" in never.note


def test_the_report_ends_with_the_count() -> None:
    report = check.Report()
    report.checked.append(check.Checked("kubernetes", "c", 1, 0))
    report.problems.extend(check.compare("c", [node("a", "10.0.0.0/24")], [], {}))
    lines = report.lines()
    assert lines[0] == "kubernetes: cluster c: 1 node(s) in ipledger, 0 CiliumNode(s)"
    assert lines[1].startswith("  a: no CiliumNode (")
    assert lines[-1] == "found 1 problem"
    assert report.as_json()["found"] == 1
    assert check.Report().lines() == ["found 0 problems"]
