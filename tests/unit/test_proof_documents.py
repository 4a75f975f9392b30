"""Inclusion proof documents checked offline (service.audit.proofs), without any database.

The leaf is SHA-256(0x00 || decision bytes || record bytes) with no length between the two
parts, so a document could move bytes across the boundary and keep the leaf; the check refuses
any decision bytes that are not one decision exactly as ipledger stores it.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from service import errors
from service.audit import proofs
from service.domain import events, merkle

RECORDS = [
    b'{"type":"pool.configured","id":"p","clusterPoolIPv4PodCIDRList":["10.0.0.0/8"],'
    b'"clusterPoolIPv4MaskSize":24}',
    b'  {"type":"node.added","id":"n1","node":"worker-1"}',  # leading blanks: still one record
    b'{"type":"node.added","id":"n2","node":"worker-2"}',
]
DECISIONS = [
    events.Decision(id="p", type="pool.configured", cluster="default", error=None),
    events.Decision(
        id="n1", type="node.added", cluster="default", error=None, pod_cidrs=("10.0.0.0/24",)
    ),
    events.Decision(
        id="n2", type="node.added", cluster="default", error=None, pod_cidrs=("10.0.1.0/24",)
    ),
]


def document(offset: int) -> dict[str, Any]:
    bodies = [events.encode_decision(d) for d in DECISIONS]
    leaves = [merkle.leaf_hash(b, r) for b, r in zip(bodies, RECORDS, strict=True)]
    tree = merkle.Tree.of_leaves(leaves)
    head = merkle.make_head(tree, 0, None, "2026-12-02T00:00:00.000Z", None)
    return proofs.inclusion_document(head, leaves, offset, bodies[offset], RECORDS[offset])


def moved(doc: dict[str, Any], shift: int) -> dict[str, Any]:
    """The same leaf with ``shift`` bytes moved from the record into the decision (negative:
    from the decision into the record)."""
    decision = base64.b64decode(doc["decisionBytes"])
    record = base64.b64decode(doc["recordBytes"])
    joined = decision + record
    cut = len(decision) + shift
    decision, record = joined[:cut], joined[cut:]
    assert merkle.leaf_hash(decision, record).hex() == doc["leaf"]
    return {
        **doc,
        "decisionBytes": base64.b64encode(decision).decode(),
        "recordBytes": base64.b64encode(record).decode(),
    }


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_a_proof_document_verifies_offline(offset: int) -> None:
    assert proofs.check_document(document(offset)).startswith("ok:")


@pytest.mark.parametrize("shift", [1, 2, -1, -5])
def test_bytes_moved_across_the_decision_record_boundary_are_refused(shift: int) -> None:
    # Offset 1's record starts with blanks, so moving them into the decision still leaves
    # valid JSON there: only the exact stored encoding tells the boundary.
    with pytest.raises(errors.AuditError, match="decision"):
        proofs.check_document(moved(document(1), shift))


def test_a_decision_with_a_field_ipledger_never_writes_is_refused() -> None:
    doc = document(2)
    decision = base64.b64decode(doc["decisionBytes"])
    doc["decisionBytes"] = base64.b64encode(decision[:-1] + b',"note":"x"}').decode()
    with pytest.raises(errors.AuditError, match="decision"):
        proofs.check_document(doc)
