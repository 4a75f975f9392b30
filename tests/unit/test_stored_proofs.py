"""Proofs from stored subtree roots (O(log n) reads) against the proofs from every leaf.

``merkle.inclusion_proof`` and ``merkle.consistency_proof`` hash the tree from all its leaves:
the reference. The writer keeps the perfect subtrees it completes (``Tree.completed``), and
``proofs.inclusion_from_store`` / ``consistency_from_store`` build the same documents from those
and a few short leaf ranges. Here, over random tree sizes and offsets, both documents must be
byte-identical, verify offline, read O(log n) hashes and few leaves, and a rewritten stored root
must be refused rather than printed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from service import errors
from service.audit import proofs
from service.domain import events, merkle

pytestmark = pytest.mark.anyio

LEVEL = merkle.STORED_LEVEL
SIZE = 5_000
DECISION = events.encode_decision(
    events.Decision(id="e", type="node.added", cluster="default", error=None)
)
RECORDS = [b'{"type":"node.added","id":"e","n":%d}' % i for i in range(SIZE)]
LEAVES = [merkle.leaf_hash(DECISION, record) for record in RECORDS]


def all_perfect_subtrees(size: int) -> dict[tuple[int, int], bytes]:
    """Every perfect subtree of level >= LEVEL within the first ``size`` leaves, the slow way."""
    found = {}
    level = LEVEL
    while 1 << level <= size:
        for start in range(0, size - (1 << level) + 1, 1 << level):
            found[(start, level)] = merkle.subtree_root(LEAVES, start, start + (1 << level))
        level += 1
    return found


class Store:
    """The stored roots and leaves of one partition, counting what a proof reads."""

    def __init__(self, size: int, nodes: dict[tuple[int, int], bytes]) -> None:
        self.size = size
        self.nodes = nodes
        self.nodes_read = 0
        self.leaves_read = 0
        self.reads = 0

    async def read_nodes(self, wanted: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        self.reads += 1
        self.nodes_read += len(wanted)
        return {w: self.nodes[w] for w in wanted if w in self.nodes}

    async def read_leaves(self, start: int, end: int) -> list[bytes]:
        assert 0 <= start < end <= self.size
        self.reads += 1
        self.leaves_read += end - start
        return LEAVES[start:end]


def head(size: int) -> merkle.TreeHead:
    return merkle.make_head(
        merkle.Tree.of_leaves(LEAVES[:size]), 0, None, "2026-12-02T00:00:00.000Z", None
    )


def test_the_tree_keeps_every_perfect_subtree_it_completes_and_only_those() -> None:
    tree = merkle.Tree()
    for leaf in LEAVES:
        tree.append(leaf)
    kept = {(s.start, s.level): s.hash for s in tree.completed}
    assert len(kept) == len(tree.completed)
    assert kept == all_perfect_subtrees(SIZE)
    # Completed in leaf order: each when its last leaf came.
    ends = [s.start + (1 << s.level) for s in tree.completed]
    assert ends == sorted(ends)
    assert tree.take_completed() and tree.completed == []


def test_a_copy_a_resume_and_taking_split_the_completed_subtrees_without_loss() -> None:
    tree = merkle.Tree()
    taken: list[merkle.Subtree] = []
    rng = random.Random(4)
    for i, leaf in enumerate(LEAVES):
        tree.append(leaf)
        if rng.random() < 0.01:
            copy = tree.copy()  # a refused rejection goes back to a copy: nothing lost
            assert copy.completed == tree.completed
            taken.extend(tree.take_completed())
            tree = merkle.Tree.resume(i + 1, b"".join(copy.frontier), None)
    taken.extend(tree.take_completed())
    assert {(s.start, s.level): s.hash for s in taken} == all_perfect_subtrees(SIZE)


@pytest.mark.parametrize("seed", range(4))
async def test_inclusion_proofs_from_the_store_are_the_leaf_proofs_byte_for_byte(
    seed: int,
) -> None:
    rng = random.Random(seed)
    nodes = all_perfect_subtrees(SIZE)
    for _ in range(60):
        size = rng.choice([1, 2, 255, 256, 257, 511, 512, 1024, rng.randrange(1, SIZE + 1)])
        offset = rng.randrange(size)
        tree_head = head(size)
        store = Store(size, nodes)
        built = await proofs.inclusion_from_store(
            tree_head, offset, DECISION, RECORDS[offset], store.read_nodes, store.read_leaves
        )
        oracle = proofs.inclusion_document(tree_head, LEAVES, offset, DECISION, RECORDS[offset])
        assert json.dumps(built) == json.dumps(oracle)
        assert proofs.check_document(built).startswith("ok")
        # O(log n): one read of stored roots, the leaves of at most two 256-leaf blocks.
        assert store.reads <= 3
        assert store.nodes_read <= 2 * size.bit_length()
        assert store.leaves_read <= 2 << LEVEL


@pytest.mark.parametrize("seed", range(4))
async def test_consistency_proofs_from_the_store_are_the_leaf_proofs_byte_for_byte(
    seed: int,
) -> None:
    rng = random.Random(100 + seed)
    nodes = all_perfect_subtrees(SIZE)
    for _ in range(60):
        new = rng.choice([1, 256, 257, 4096, rng.randrange(1, SIZE + 1)])
        old = rng.choice([0, 1, new, rng.randrange(0, new + 1), rng.randrange(0, new + 1)])
        store = Store(new, nodes)
        built = await proofs.consistency_from_store(
            head(old), head(new), store.read_nodes, store.read_leaves
        )
        oracle = proofs.consistency_document(head(old), head(new), LEAVES)
        assert json.dumps(built) == json.dumps(oracle)
        assert store.reads <= 4
        assert store.nodes_read <= 4 * new.bit_length()
        assert store.leaves_read <= 3 << LEVEL


async def test_without_stored_roots_proofs_read_the_leaves_and_are_the_same() -> None:
    # A tree recorded before migration 0008: nothing stored, the leaves are read instead.
    size, offset = 3_001, 1_234
    store = Store(size, {})
    built = await proofs.inclusion_from_store(
        head(size), offset, DECISION, RECORDS[offset], store.read_nodes, store.read_leaves
    )
    assert built == proofs.inclusion_document(head(size), LEAVES, offset, DECISION, RECORDS[offset])
    assert store.leaves_read >= size - (1 << LEVEL)
    consistency = await proofs.consistency_from_store(
        head(1_000), head(size), store.read_nodes, store.read_leaves
    )
    assert consistency == proofs.consistency_document(head(1_000), head(size), LEAVES)


async def test_a_rewritten_stored_root_is_refused_not_printed() -> None:
    size, offset = 4_000, 3_900
    nodes = all_perfect_subtrees(size)
    nodes[(0, 11)] = bytes(32)  # the left half of the tree's left subtree, rewritten
    store = Store(size, nodes)
    with pytest.raises(errors.AuditError, match="subtree root"):
        await proofs.inclusion_from_store(
            head(size), offset, DECISION, RECORDS[offset], store.read_nodes, store.read_leaves
        )
    with pytest.raises(errors.AuditError, match="rewritten"):
        await proofs.consistency_from_store(
            head(2_500), head(size), store.read_nodes, store.read_leaves
        )


async def test_a_stored_leaf_that_is_not_the_decision_and_record_is_refused() -> None:
    store = Store(300, all_perfect_subtrees(300))
    with pytest.raises(errors.AuditError, match="stored leaf"):
        await proofs.inclusion_from_store(
            head(300), 7, DECISION, RECORDS[8], store.read_nodes, store.read_leaves
        )
