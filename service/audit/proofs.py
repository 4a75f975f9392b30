"""Proof documents: one decision's inclusion in a tree head, and two heads' consistency.

A proof document is JSON that carries everything needed to check it with no database
(``check_document``): for inclusion, the decision's bytes and the record's bytes (base64), the
audit path and the head; for consistency, both heads and the path. ``ipledger audit proof``
and ``ipledger audit consistency`` build them (``inclusion_from_store``,
``consistency_from_store``) from O(log n) subtree roots the projection stores and the leaves of
a few short ranges (``subtree_roots``), each checked against its head before it is returned;
``inclusion_document`` and ``consistency_document`` build the same documents from every leaf
(the reference the tests compare with). ``ipledger audit verify-proof`` checks them. What the
check proves is only as good as the head: an auditor compares the head with one it kept (or
checks its signature with the operator's public key) before trusting the proof.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Sequence
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
    _check_stored_leaf(head, offset, leaves[offset], decision, record)
    proof = merkle.inclusion_proof(leaves, offset, head.size)
    return _inclusion(head, offset, decision, record, proof)


def _check_stored_leaf(
    head: merkle.TreeHead, offset: int, stored: bytes, decision: bytes, record: bytes
) -> None:
    if stored != merkle.leaf_hash(decision, record):
        raise errors.AuditError(
            f"partition {head.partition}, offset {offset}: the stored leaf is not the hash of "
            "the stored decision and the log's record (run `ipledger replay --verify`)"
        )


def _inclusion(
    head: merkle.TreeHead, offset: int, decision: bytes, record: bytes, proof: list[bytes]
) -> dict[str, Any]:
    return {
        "kind": INCLUSION,
        "partition": head.partition,
        "offset": offset,
        "decisionBytes": base64.b64encode(decision).decode(),
        "recordBytes": base64.b64encode(record).decode(),
        "decision": _json_or_none(decision),
        "leaf": merkle.leaf_hash(decision, record).hex(),
        "proof": [h.hex() for h in proof],
        "head": head.to_json(),
    }


def consistency_document(
    old: merkle.TreeHead, new: merkle.TreeHead, leaves: list[bytes]
) -> dict[str, Any]:
    """The consistency proof from ``old`` to ``new`` (``leaves``: the first ``new.size``)."""
    return _consistency(old, new, merkle.consistency_proof(leaves, old.size, new.size))


def _consistency(old: merkle.TreeHead, new: merkle.TreeHead, proof: list[bytes]) -> dict[str, Any]:
    return {
        "kind": CONSISTENCY,
        "partition": new.partition,
        "old": old.to_json(),
        "new": new.to_json(),
        "proof": [h.hex() for h in proof],
    }


# --- proofs from the stored subtree roots (O(log n) reads) --------------------------------------

# The stored roots of the perfect subtrees (start, level) asked for, those stored
# (``ports.AuditReader.subtrees`` of one partition).
NodeReader = Callable[[Sequence[tuple[int, int]]], Awaitable[dict[tuple[int, int], bytes]]]
# The leaves of offsets [start, end), every one of them (computed where none is stored).
LeafReader = Callable[[int, int], Awaitable[list[bytes]]]


async def subtree_roots(
    wanted: set[tuple[int, int]], size: int, read_nodes: NodeReader, read_leaves: LeafReader
) -> merkle.Perfect:
    """A source of the perfect subtree roots in ``wanted`` (of a tree of ``size`` leaves).

    Those of ``merkle.STORED_LEVEL`` or more come from the stored roots, in one read; the
    smaller ones are hashed from the leaves of the 2^STORED_LEVEL-aligned blocks they lie in
    (one range read per block, at most a few), and a large one that is not stored (a tree
    recorded before migration 0008) from its own leaves. Nothing read is trusted: the callers
    check what they build against the head's root.
    """
    shift = merkle.STORED_LEVEL
    known = await read_nodes(sorted(w for w in wanted if w[1] >= shift))
    ranges: list[tuple[int, int]] = []
    for start, level in wanted:
        if (start, level) in known:
            continue
        if level < shift:
            block = start >> shift << shift
            ranges.append((block, min(block + (1 << shift), size)))
        else:
            ranges.append((start, start + (1 << level)))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    blocks = [(start, await read_leaves(start, end)) for start, end in merged]

    def perfect(start: int, level: int) -> bytes:
        found = known.get((start, level))
        if found is not None:
            return found
        end = start + (1 << level)
        for first, leaves in blocks:
            if first <= start and end <= first + len(leaves):
                found = known[(start, level)] = merkle.subtree_root(
                    leaves, start - first, end - first
                )
                return found
        raise errors.AuditError(f"leaves {start} to {end - 1} were not read")  # a bug if ever

    return perfect


async def inclusion_from_store(
    head: merkle.TreeHead,
    offset: int,
    decision: bytes,
    record: bytes,
    read_nodes: NodeReader,
    read_leaves: LeafReader,
) -> dict[str, Any]:
    """``inclusion_document`` from the stored subtree roots, checked against ``head``."""
    if not 0 <= offset < head.size:
        raise errors.AuditError(
            f"offset {offset} is not covered by the tree head of size {head.size}"
        )
    wanted = merkle.wanted_subtrees(lambda p: merkle.inclusion_proof_from(p, offset, head.size))
    wanted.add((offset, 0))  # the stored leaf itself, checked against the bytes
    perfect = await subtree_roots(wanted, head.size, read_nodes, read_leaves)
    _check_stored_leaf(head, offset, perfect(offset, 0), decision, record)
    proof = merkle.inclusion_proof_from(perfect, offset, head.size)
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(decision, record),
            offset,
            head.size,
            proof,
            merkle.unhex(head.root, "root"),
        )
    except merkle.ProofError:
        raise errors.AuditError(
            f"partition {head.partition}: the stored tree does not lead to the root of the head "
            f"of size {head.size}: a stored leaf or subtree root before that offset was "
            "rewritten (run `ipledger replay --verify` to find which)"
        ) from None
    return _inclusion(head, offset, decision, record, proof)


async def consistency_from_store(
    old: merkle.TreeHead, new: merkle.TreeHead, read_nodes: NodeReader, read_leaves: LeafReader
) -> dict[str, Any]:
    """``consistency_document`` from the stored subtree roots; ``AuditError`` unless the
    stored tree has both heads' roots and the proof checks out."""

    def compute(p: merkle.Perfect) -> tuple[object, ...]:
        return (
            merkle.consistency_proof_from(p, old.size, new.size),
            merkle.range_root(p, 0, old.size),
            merkle.range_root(p, 0, new.size),
        )

    perfect = await subtree_roots(
        merkle.wanted_subtrees(compute), new.size, read_nodes, read_leaves
    )
    stored_old = merkle.range_root(perfect, 0, old.size).hex()
    stored_new = merkle.range_root(perfect, 0, new.size).hex()
    if stored_old != old.root:
        raise errors.AuditError(
            f"partition {old.partition}: the tree of the first {old.size} decisions now has "
            f"root {stored_old}, not the head's {old.root}: decisions or records before that "
            "offset (or the stored subtree roots over them) were rewritten"
        )
    if stored_new != new.root:
        raise errors.AuditError(
            f"partition {new.partition}: the tree of the first {new.size} decisions now has "
            f"root {stored_new}, not the head's {new.root}"
        )
    document = _consistency(old, new, merkle.consistency_proof_from(perfect, old.size, new.size))
    check_document(document)
    return document


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
