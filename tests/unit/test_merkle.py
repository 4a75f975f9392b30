"""The Merkle tree (service.domain.merkle) against RFC 6962's definition, computed the slow way.

The reference ``mth`` is the RFC's recursive definition, written out; the tree, its frontier
after a resume, the proofs and their checks must agree with it for every size and index up to
a few dozen leaves, and every flipped bit of a proof, a leaf or a root must make a check fail.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from service.domain import merkle


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1: MTH of a list of leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


LEAVES = [merkle.leaf_hash(b'{"id":"%d"}' % i, b"record %d" % i) for i in range(40)]


def _flip(value: bytes, rng: random.Random) -> bytes:
    raw = bytearray(value)
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return bytes(raw)


def test_the_hashes_are_rfc_6962s() -> None:
    assert merkle.leaf_hash(b"ab", b"cd") == hashlib.sha256(b"\x00abcd").digest()
    assert (
        merkle.node_hash(b"l" * 32, b"r" * 32)
        == hashlib.sha256(b"\x01" + b"l" * 32 + b"r" * 32).digest()
    )
    assert merkle.Tree().root() == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", range(41))
def test_the_tree_its_resumed_frontier_and_subtree_roots_agree_with_the_rfc(size: int) -> None:
    tree = merkle.Tree.of_leaves(LEAVES[:size])
    assert tree.root() == mth(LEAVES[:size]) == merkle.subtree_root(LEAVES[:size])
    assert len(tree.frontier) == size.bit_count()
    # A writer restarted from the stored frontier extends the same tree.
    resumed = merkle.Tree.resume(size, b"".join(tree.frontier), None)
    for leaf in LEAVES[size:]:
        resumed.append(leaf)
    assert resumed.root() == mth(LEAVES)


def test_a_frontier_that_cannot_edge_the_tree_is_refused() -> None:
    frontier = b"".join(merkle.Tree.of_leaves(LEAVES[:5]).frontier)
    with pytest.raises(merkle.ProofError):
        merkle.Tree.resume(7, frontier, None)  # three subtrees, not two
    with pytest.raises(merkle.ProofError):
        merkle.Tree.resume(5, frontier[:-1], None)


def test_inclusion_proofs_check_for_every_leaf_and_size_and_fail_when_flipped() -> None:
    rng = random.Random(1)
    for size in range(1, 33):
        root = mth(LEAVES[:size])
        for index in range(size):
            proof = merkle.inclusion_proof(LEAVES, index, size)
            merkle.verify_inclusion(LEAVES[index], index, size, proof, root)
            with pytest.raises(merkle.ProofError):
                merkle.verify_inclusion(_flip(LEAVES[index], rng), index, size, proof, root)
            with pytest.raises(merkle.ProofError):
                merkle.verify_inclusion(LEAVES[index], index, size, proof, _flip(root, rng))
            if proof:
                at = rng.randrange(len(proof))
                bad = [*proof[:at], _flip(proof[at], rng), *proof[at + 1 :]]
                with pytest.raises(merkle.ProofError):
                    merkle.verify_inclusion(LEAVES[index], index, size, bad, root)
                with pytest.raises(merkle.ProofError):
                    merkle.verify_inclusion(LEAVES[index], index, size, proof[:-1], root)
            if size > 1:
                with pytest.raises(merkle.ProofError):
                    merkle.verify_inclusion(LEAVES[index], (index + 1) % size, size, proof, root)


def test_consistency_proofs_check_for_every_pair_and_fail_for_a_rewritten_prefix() -> None:
    rng = random.Random(2)
    for new in range(1, 33):
        for old in range(new + 1):
            proof = merkle.consistency_proof(LEAVES, old, new)
            merkle.verify_consistency(old, new, mth(LEAVES[:old]), mth(LEAVES[:new]), proof)
            if 0 < old < new:
                # The same later tree, but a leaf before ``old`` rewritten: its proof cannot
                # lead to the old root the auditor kept.
                rewritten = list(LEAVES)
                rewritten[rng.randrange(old)] = merkle.leaf_hash(b"forged", b"")
                forged = merkle.consistency_proof(rewritten, old, new)
                with pytest.raises(merkle.ProofError):
                    merkle.verify_consistency(
                        old, new, mth(LEAVES[:old]), mth(rewritten[:new]), forged
                    )
                at = rng.randrange(len(proof))
                bad = [*proof[:at], _flip(proof[at], rng), *proof[at + 1 :]]
                with pytest.raises(merkle.ProofError):
                    merkle.verify_consistency(old, new, mth(LEAVES[:old]), mth(LEAVES[:new]), bad)


def test_a_head_hashes_its_signed_bytes_and_round_trips_its_json() -> None:
    tree = merkle.Tree.of_leaves(LEAVES[:7])
    head = merkle.make_head(tree, 3, None, "2026-12-02T00:00:00.000Z", b"\x11" * 32)
    assert head.size == 7 and head.root == mth(LEAVES[:7]).hex()
    assert head.hash() == hashlib.sha256(head.signed_bytes()).digest()
    assert merkle.decode_head(head.to_json()) == head
    with pytest.raises(merkle.ProofError):
        merkle.decode_head({**head.to_json(), "root": "zz"})
