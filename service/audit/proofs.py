"""Proof documents: one decision's inclusion in a tree head, and two heads' consistency.

A proof document is JSON that carries everything needed to check it with no database
(``check_document``): for inclusion, the decision's bytes and the record's bytes (base64), the
audit path and the head; for consistency, both heads and the path. ``ipledger audit proof``
and ``ipledger audit consistency`` build them (``inclusion_document``, ``consistency_document``)
from the leaves the projection stores; ``ipledger audit verify-proof`` checks them. What the
check proves is only as good as the head: an auditor compares the head with one it kept (or
checks its signature with the operator's public key) before trusting the proof.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519

from service import errors
from service.audit import signing
from service.domain import events, merkle

INCLUSION = "ipledger.inclusion-proof/v1"
CONSISTENCY = "ipledger.consistency-proof/v1"


def inclusion_document(
    head: merkle.TreeHead,
    leaves: list[bytes],
    offset: int,
    decision: bytes,
    record: bytes,
) -> dict[str, Any]:
    """The inclusion proof of the decision at ``offset`` in ``head`` (``leaves``: the first
    ``head.size`` leaves of the partition)."""
    leaf = merkle.leaf_hash(decision, record)
    if leaves[offset] != leaf:
        raise errors.AuditError(
            f"partition {head.partition}, offset {offset}: the stored leaf is not the hash of "
            "the stored decision and the log's record (run `ipledger replay --verify`)"
        )
    return {
        "kind": INCLUSION,
        "partition": head.partition,
        "offset": offset,
        "decisionBytes": base64.b64encode(decision).decode(),
        "recordBytes": base64.b64encode(record).decode(),
        "decision": _json_or_none(decision),
        "leaf": leaf.hex(),
        "proof": [h.hex() for h in merkle.inclusion_proof(leaves, offset, head.size)],
        "head": head.to_json(),
    }


def consistency_document(
    old: merkle.TreeHead, new: merkle.TreeHead, leaves: list[bytes]
) -> dict[str, Any]:
    """The consistency proof from ``old`` to ``new`` (``leaves``: the first ``new.size``)."""
    return {
        "kind": CONSISTENCY,
        "partition": new.partition,
        "old": old.to_json(),
        "new": new.to_json(),
        "proof": [h.hex() for h in merkle.consistency_proof(leaves, old.size, new.size)],
    }


def check_document(
    document: Any,
    *,
    public_key: ed25519.Ed25519PublicKey | None = None,
    kept_head: merkle.TreeHead | None = None,
) -> str:
    """Check a proof document offline; a one-line summary, or ``AuditError`` saying what fails.

    ``public_key``: the head(s) must be signed by it. ``kept_head``: a head the auditor kept;
    the proof's head must be that one (inclusion) or extend from it (consistency: its old head).
    """
    if not isinstance(document, dict):
        raise errors.AuditError("not a proof document (a JSON object)")
    try:
        kind = document.get("kind")
        if kind == INCLUSION:
            return _check_inclusion(document, public_key, kept_head)
        if kind == CONSISTENCY:
            return _check_consistency(document, public_key, kept_head)
    except merkle.ProofError as exc:
        raise errors.AuditError(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.AuditError(f"a malformed proof document: {exc!r}") from None
    raise errors.AuditError(f"unknown proof kind {document.get('kind')!r}")


def _check_inclusion(
    document: dict[str, Any],
    public_key: ed25519.Ed25519PublicKey | None,
    kept_head: merkle.TreeHead | None,
) -> str:
    head = merkle.decode_head(document["head"])
    _check_head(head, public_key, kept_head)
    offset = int(document["offset"])
    if int(document["partition"]) != head.partition:
        raise merkle.ProofError("the proof's partition is not its head's")
    decision = base64.b64decode(document["decisionBytes"], validate=True)
    record = base64.b64decode(document["recordBytes"], validate=True)
    _check_canonical_decision(decision)
    leaf = merkle.leaf_hash(decision, record)
    if document.get("leaf") is not None and merkle.unhex(document["leaf"], "leaf") != leaf:
        raise merkle.ProofError("the leaf is not the hash of the decision and the record")
    path = [merkle.unhex(h, "a proof hash") for h in document["proof"]]
    merkle.verify_inclusion(leaf, offset, head.size, path, merkle.unhex(head.root, "root"))
    return (
        f"ok: the decision at partition {head.partition}, offset {offset} is in the tree head "
        f"of size {head.size} (root {head.root})"
    )


def _check_canonical_decision(decision: bytes) -> None:
    """The leaf hashes the decision's bytes and the record's bytes with nothing between them,
    so bytes moved across that boundary would give the same leaf: a document whose decision
    ends with the record's first bytes (or lacks its own last ones) would prove a decision that
    was never made. A decision is stored exactly as ``events.encode_decision`` writes it, so
    only bytes that decode to one decision and encode back to themselves are accepted, which
    leaves one place for the boundary."""
    try:
        parsed = msgspec.json.decode(decision, type=events.Decision)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise merkle.ProofError(f"the decision bytes are not one decision: {exc}") from None
    if events.encode_decision(parsed) != decision:
        raise merkle.ProofError(
            "the decision bytes are not a decision as ipledger stores it (encoded anew they "
            "differ): the boundary between the decision and the record is not where the leaf "
            "puts it"
        )


def _check_consistency(
    document: dict[str, Any],
    public_key: ed25519.Ed25519PublicKey | None,
    kept_head: merkle.TreeHead | None,
) -> str:
    old = merkle.decode_head(document["old"])
    new = merkle.decode_head(document["new"])
    if old.partition != new.partition:
        raise merkle.ProofError("the two heads are of different partitions")
    _check_head(new, public_key, None)
    _check_head(old, public_key, kept_head)
    path = [merkle.unhex(h, "a proof hash") for h in document["proof"]]
    merkle.verify_consistency(
        old.size, new.size, merkle.unhex(old.root, "root"), merkle.unhex(new.root, "root"), path
    )
    return (
        f"ok: the tree head of size {new.size} extends the one of size {old.size} "
        f"(partition {new.partition}): nothing before offset {old.size} was rewritten"
    )


def _check_head(
    head: merkle.TreeHead,
    public_key: ed25519.Ed25519PublicKey | None,
    kept_head: merkle.TreeHead | None,
) -> None:
    if kept_head is not None and kept_head.signed_bytes() != head.signed_bytes():
        raise errors.AuditError(
            f"the proof's head (size {head.size}, root {head.root}) is not the kept one "
            f"(size {kept_head.size}, root {kept_head.root})"
        )
    if public_key is not None:
        signing.verify(head, public_key)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
