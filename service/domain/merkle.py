"""The Merkle tree of a partition's decisions (RFC 6962 hashing), its heads and their proofs.

Every log record of a partition is a leaf, in offset order: ``leaf_hash`` = SHA-256(0x00 ‖ the
decision's stored bytes ‖ the record's bytes), inner nodes SHA-256(0x01 ‖ left ‖ right), the
tree of n leaves split at the largest power of two below n (RFC 6962, section 2.1). A leaf
binds what was decided to what was read, so neither can be changed afterwards without changing
every root from that offset on.

``Tree`` is the right edge of the tree as the allocator extends it (the roots of its perfect
subtrees, O(log n) hashes: the *frontier*), which is all a writer needs to go on after a
restart; ``TreeHead`` is what is recorded every N records and at every batch boundary, chained
to the head before it. The proofs (inclusion of one leaf in a head, consistency of two heads)
are checked from the proof alone (RFC 9162, section 2.1.3 and 2.1.4), with no database: anyone
holding a head can check them.

Computing a proof needs the roots of O(log n) subtrees. ``inclusion_proof`` and
``consistency_proof`` hash them from all the leaves (O(n): the reference, kept as the tests'
oracle); ``inclusion_proof_from`` and ``consistency_proof_from`` take them from a ``Perfect``
source of *perfect* subtree roots ([start, start + 2^level), start a multiple of 2^level), since
every range RFC 6962's recursion asks for splits into a few of those. The writer keeps each one
it completes of ``STORED_LEVEL`` or more (``Tree.completed``: the hashes ``append`` makes
anyway), the projection stores them with the batch, and a proof is then O(log n) stored hashes
plus the leaves of at most a few ranges shorter than 2^STORED_LEVEL.

Pure: hashlib only, no I/O, no clock (a head's time is handed in).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"
_sha256 = hashlib.sha256
# Perfect subtrees of 2^STORED_LEVEL leaves and more are kept (``Tree.completed``): about one
# stored hash per 128 leaves, and the pieces a proof hashes from leaves are under 256 leaves.
STORED_LEVEL = 8
_STORED_MASK = (1 << STORED_LEVEL) - 1


class ProofError(ValueError):
    """A proof or head that does not check out (the message says which part and why)."""


def leaf_hash(decision: bytes, record: bytes) -> bytes:
    """SHA-256(0x00 ‖ ``decision`` (the stored decision bytes) ‖ ``record`` (the raw value))."""
    return _sha256(_LEAF + decision + record).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 ‖ ``left`` ‖ ``right``)."""
    return _sha256(_NODE + left + right).digest()


class Subtree(NamedTuple):
    """The root of the perfect subtree over leaves [start, start + 2^level)."""

    start: int
    level: int
    hash: bytes


@dataclass(slots=True)
class Tree:
    """The right edge of one partition's tree: its size, its frontier, the last head's hash.

    ``frontier`` holds the roots of the perfect subtrees the first ``size`` leaves split into,
    left to right (one per bit set in ``size``, largest first). ``last_head`` is the hash of
    the latest head recorded (None before the first), for the chain.
    """

    size: int = 0
    frontier: list[bytes] = field(default_factory=list)
    last_head: bytes | None = None
    # The perfect subtrees of STORED_LEVEL or more that appends completed, in the order they
    # were completed, until ``take_completed`` hands them to a batch.
    completed: list[Subtree] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash: merge it with the equal-sized subtrees it completes."""
        size = self.size
        frontier = self.frontier
        if size & _STORED_MASK == _STORED_MASK:
            # Once every 2^STORED_LEVEL leaves: the merges complete subtrees worth keeping.
            self._append_completing(leaf)
            return
        while size & 1:
            leaf = _sha256(_NODE + frontier.pop() + leaf).digest()
            size >>= 1
        frontier.append(leaf)
        self.size += 1

    def _append_completing(self, leaf: bytes) -> None:
        size = self.size
        frontier = self.frontier
        level = 0
        end = size + 1
        while size & 1:
            leaf = _sha256(_NODE + frontier.pop() + leaf).digest()
            size >>= 1
            level += 1
            if level >= STORED_LEVEL:
                self.completed.append(Subtree(end - (1 << level), level, leaf))
        frontier.append(leaf)
        self.size = end

    def take_completed(self) -> list[Subtree]:
        """The subtrees completed since the last call (for the batch that stores them)."""
        completed, self.completed = self.completed, []
        return completed

    def root(self) -> bytes:
        """The tree's root hash (RFC 6962's MTH of the first ``size`` leaves)."""
        frontier = self.frontier
        if not frontier:
            return EMPTY_ROOT
        root = frontier[-1]
        for left in reversed(frontier[:-1]):
            root = _sha256(_NODE + left + root).digest()
        return root

    def copy(self) -> Tree:
        return Tree(self.size, list(self.frontier), self.last_head, list(self.completed))

    def check(self) -> None:
        """Raise ``ProofError`` if the frontier cannot be the edge of a tree of ``size`` leaves."""
        if self.size < 0 or len(self.frontier) != self.size.bit_count():
            raise ProofError(
                f"a frontier of {len(self.frontier)} hashes cannot edge a tree of {self.size}"
            )
        if any(len(h) != HASH_SIZE for h in self.frontier):
            raise ProofError("a frontier hash is not 32 bytes")

    @classmethod
    def resume(cls, size: int, frontier: bytes, last_head: bytes | None) -> Tree:
        """The tree edged by ``frontier`` (its hashes concatenated, as the projection stores
        them) at ``size`` leaves; ``ProofError`` if they do not fit."""
        tree = cls(
            size=size,
            frontier=[frontier[i : i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)],
            last_head=last_head,
        )
        tree.check()
        return tree

    @classmethod
    def of_leaves(cls, leaves: Sequence[bytes]) -> Tree:
        tree = cls()
        for leaf in leaves:
            tree.append(leaf)
        return tree


class TreeHead(msgspec.Struct, frozen=True, kw_only=True):
    """A signed-off checkpoint of one partition's tree.

    ``size`` is the number of leaves, i.e. the next offset; ``root`` the root hash (hex);
    ``state_digest`` the state digest (``document.digest``) after the record at ``size - 1``,
    or None on a head that carries none (see docs/audits.md: the digest is not taken at every
    head); ``time`` when it was recorded (RFC 3339, the writer's clock: information, not
    evidence); ``previous`` the hash (hex) of the head before it, None on the first.
    ``signature`` (hex, Ed25519 over ``signed_bytes``) and ``key_id`` are set when the writer
    has a signing key.
    """

    partition: int
    size: int
    root: str
    state_digest: str | None
    time: str
    previous: str | None
    signature: str | None = None
    key_id: str | None = None

    def signed_bytes(self) -> bytes:
        """The canonical bytes the head's hash and signature cover (all but the signature)."""
        return _canonical.encode(
            {
                "partition": self.partition,
                "size": self.size,
                "root": self.root,
                "state_digest": self.state_digest,
                "time": self.time,
                "previous": self.previous,
            }
        )

    def hash(self) -> bytes:
        return _sha256(self.signed_bytes()).digest()

    def to_json(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


_canonical = msgspec.json.Encoder()


def decode_head(raw: Any) -> TreeHead:
    """A head from its JSON object (as ``to_json`` gives it); ``ProofError`` if it is not one."""
    try:
        head = msgspec.convert(raw, TreeHead)
    except msgspec.ValidationError as exc:
        raise ProofError(f"not a tree head: {exc}") from None
    _hex(head.root, "root")
    if head.size < 0:
        raise ProofError("a tree head's size cannot be negative")
    return head


def make_head(
    tree: Tree, partition: int, state_digest: str | None, time: str, previous: bytes | None
) -> TreeHead:
    return TreeHead(
        partition=partition,
        size=tree.size,
        root=tree.root().hex(),
        state_digest=state_digest,
        time=time,
        previous=None if previous is None else previous.hex(),
    )


# --- proofs from the leaves (RFC 6962 section 2.1.1 and 2.1.2) ----------------------------------


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_root(leaves: Sequence[bytes], start: int = 0, end: int | None = None) -> bytes:
    """MTH of ``leaves[start:end]``, iteratively (a million leaves would nest 20 calls deep
    only, but a loop over levels hashes every level in one pass)."""
    end = len(leaves) if end is None else end
    if end <= start:
        return EMPTY_ROOT
    level = list(leaves[start:end])
    while len(level) > 1:
        # Pairing left to right and carrying an odd last node up gives RFC 6962's tree: the
        # left subtree of each split is always perfect.
        paired = [
            _sha256(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` of ``leaves``."""
    if not 0 <= index < size <= len(leaves):
        raise ProofError(f"no leaf {index} in a tree of {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(subtree_root(leaves, start + k, end))
            end = start + k
        else:
            proof.append(subtree_root(leaves, start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(leaves: Sequence[bytes], old: int, new: int) -> list[bytes]:
    """The proof that the tree of the first ``new`` leaves extends that of the first ``old``."""
    if not 0 <= old <= new <= len(leaves):
        raise ProofError(f"no consistency between trees of {old} and {new} leaves")
    if old in (0, new):
        return []
    proof: list[bytes] = []

    def walk(m: int, start: int, end: int, whole: bool) -> None:
        n = end - start
        if m == n:
            if not whole:
                proof.append(subtree_root(leaves, start, end))
            return
        k = _split(n)
        if m <= k:
            walk(m, start, start + k, whole)
            proof.append(subtree_root(leaves, start + k, end))
        else:
            walk(m - k, start + k, end, False)
            proof.append(subtree_root(leaves, start, start + k))

    walk(old, 0, new, True)
    return proof


# --- proofs from perfect subtree roots (O(log n) hashes) -----------------------------------------

# The root of the perfect subtree [start, start + 2^level): ``Perfect(start, level)``.
Perfect = Callable[[int, int], bytes]


def range_root(perfect: Perfect, start: int, end: int) -> bytes:
    """MTH of leaves [start, end), from the perfect subtrees that range splits into.

    RFC 6962 splits a range at the largest power of two below its length, so its root is
    node(P1, node(P2, ... Pm)) over the perfect subtrees of its length's bits, largest first.
    Every range the proofs' recursion asks for starts at a multiple of its first piece, so each
    piece is a perfect subtree of the tree (a node the writer completed).
    """
    if end <= start:
        return EMPTY_ROOT
    pieces: list[bytes] = []
    at, rest = start, end - start
    while rest:
        level = rest.bit_length() - 1
        if at & ((1 << level) - 1):
            raise ValueError(f"[{at}, {at + (1 << level)}) is not a subtree of the tree")
        pieces.append(perfect(at, level))
        at += 1 << level
        rest -= 1 << level
    root = pieces[-1]
    for left in reversed(pieces[:-1]):
        root = _sha256(_NODE + left + root).digest()
    return root


def inclusion_proof_from(perfect: Perfect, index: int, size: int) -> list[bytes]:
    """``inclusion_proof`` from perfect subtree roots: the same bytes, O(log n) of them read."""
    if not 0 <= index < size:
        raise ProofError(f"no leaf {index} in a tree of {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            proof.append(range_root(perfect, start + k, end))
            end = start + k
        else:
            proof.append(perfect(start, k.bit_length() - 1))
            start += k
    proof.reverse()
    return proof


def consistency_proof_from(perfect: Perfect, old: int, new: int) -> list[bytes]:
    """``consistency_proof`` from perfect subtree roots: the same bytes, O(log n) read."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency between trees of {old} and {new} leaves")
    if old in (0, new):
        return []
    proof: list[bytes] = []
    # RFC 6962's SUBPROOF, unrolled: the path down to the old tree's last complete subtree,
    # collecting the sibling of each step, then those siblings innermost first.
    siblings: list[bytes] = []
    m, start, end, whole = old, 0, new, True
    while True:
        n = end - start
        if m == n:
            if not whole:
                proof.append(range_root(perfect, start, end))
            break
        k = _split(n)
        if m <= k:
            siblings.append(range_root(perfect, start + k, end))
            end = start + k
        else:
            siblings.append(perfect(start, k.bit_length() - 1))
            m, start, whole = m - k, start + k, False
    proof.extend(reversed(siblings))
    return proof


def wanted_subtrees(compute: Callable[[Perfect], object]) -> set[tuple[int, int]]:
    """The perfect subtrees (start, level) ``compute`` asks its source for.

    Which ones a proof needs depends only on the sizes and the index, never on the hashes,
    so a dry run with placeholder hashes lists them, and they can be read in one go.
    """
    wanted: set[tuple[int, int]] = set()

    def note(start: int, level: int) -> bytes:
        wanted.add((start, level))
        return EMPTY_ROOT

    compute(note)
    return wanted


# --- checking proofs (RFC 9162 section 2.1.3.2 and 2.1.4.2) -------------------------------------


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows ``leaf`` at ``index`` of the tree ``root``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} cannot be in a tree of {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("the inclusion proof does not lead to the head's root")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ``ProofError`` unless ``proof`` shows the tree ``new_root`` extends ``old_root``."""
    if not 0 <= old <= new:
        raise ProofError(f"a tree of {new} cannot extend one of {old}")
    if old == new:
        if proof:
            raise ProofError("equal sizes take an empty consistency proof")
        if old_root != new_root:
            raise ProofError("two heads of one size with different roots: the log was rewritten")
        return
    if old == 0:
        if proof:
            raise ProofError("a consistency proof from the empty tree is empty")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is itself a node of the path
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError("the consistency proof does not lead to the older head's root")
    if sr != new_root:
        raise ProofError("the consistency proof does not lead to the newer head's root")


def _hex(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise ProofError(f"{what} is not hexadecimal") from None
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a 32-byte hash")
    return value


def unhex(text: str, what: str) -> bytes:
    """A 32-byte hash from hex, or ``ProofError`` naming ``what``."""
    return _hex(text, what)
