"""What an audit proof costs: from the stored subtree roots (now) against from every leaf (before).

Part of ``python -m bench --only replay`` (``bench.replay`` calls ``proof_figures``). For each
size, a database is built **directly** rather than by running the allocator over that many
events: the table log's records, a decision row with its leaf for each, the tree heads every
10,000 records and the perfect subtree roots the allocator would store (``merkle.Tree``'s own
``completed``), all written with COPY. The trees are the allocator's (same hashing, same
heads), only the decisions are one fixed body, which a proof does not look into. Then, in one
run and alternated, ``ipledger audit proof`` / ``audit consistency`` as they are (O(log n)
stored roots) and as they were (every leaf of the partition read and hashed: the code kept as
the tests' oracle, ``proofs.inclusion_document`` / ``consistency_document``), each document
checked equal to the other. Wall time and this process's CPU time, beside the load average.
"""

from __future__ import annotations

import datetime
import functools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

import bench
from service import errors
from service.audit import proofs
from service.domain import events, merkle
from service.processes import audit as audit_process
from service.settings import Settings

NAME = "replay"
HEAD_EVERY = 10_000
_EPOCH = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
_DECISION = events.encode_decision(
    events.Decision(id="bench", type="node.added", cluster="default", error=None)
)


def _record(offset: int) -> bytes:
    return b'{"type":"node.added","id":"e%d","cluster":"default","node":"n%d"}' % (offset, offset)


async def build(dsn: str, size: int) -> None:
    """A partition 0 of ``size`` records with its tree as the allocator stores it (COPY)."""
    tree = merkle.Tree()
    heads: list[tuple[Any, ...]] = []
    decisions: list[tuple[Any, ...]] = []
    records: list[tuple[Any, ...]] = []
    for offset in range(size):
        value = _record(offset)
        leaf = merkle.leaf_hash(_DECISION, value)
        tree.append(leaf)
        moment = _EPOCH + datetime.timedelta(milliseconds=offset)
        records.append((0, offset, b"default", value, moment))
        decisions.append(
            (0, offset, "default", f"e{offset}", "node.added", None, _DECISION, moment, leaf)
        )
        if tree.size % HEAD_EVERY == 0 or tree.size == size:
            head = merkle.make_head(tree, 0, None, moment.isoformat(), tree.last_head)
            tree.last_head = head.hash()
            heads.append(
                (0, tree.size, tree.last_head, head.signed_bytes(), b"".join(tree.frontier))
            )
    db = await asyncpg.connect(dsn)
    try:
        await db.execute("INSERT INTO log_head (partition, next_offset) VALUES (0, $1)", size)
        await db.copy_records_to_table(
            "log_record",
            records=records,
            columns=["partition", "offset", "key", "value", "appended_at"],
        )
        await db.copy_records_to_table(
            "decision",
            records=[(*d[:7], d[7], d[7], d[7], d[8]) for d in decisions],
            columns=[
                "partition",
                "offset",
                "cluster",
                "event_id",
                "type",
                "error",
                "body",
                "event_time",
                "log_time",
                "applied_at",
                "leaf",
            ],
        )
        await db.copy_records_to_table(
            "tree_head", records=heads, columns=["partition", "size", "hash", "body", "frontier"]
        )
        await db.copy_records_to_table(
            "tree_node",
            records=[(0, s.level, s.start, s.hash) for s in tree.completed],
            columns=["partition", "level", "start", "hash"],
        )
        await db.execute("ANALYZE")
    finally:
        await db.close()


async def _every_leaf_inclusion(settings: Settings, offset: int) -> dict[str, Any]:
    """``audit proof`` as it was before the stored roots: every leaf read and hashed."""
    evidence = audit_process._Evidence(settings)
    try:
        head = await evidence.head(0, None)
        found = await evidence.audit.decisions(0, offset, 1)
        record = await evidence.record(0, offset)
        leaves = await evidence.leaves(0, head.size)
        return proofs.inclusion_document(head, leaves, offset, found[0].body, record.value)
    finally:
        await evidence.close()


async def _every_leaf_consistency(settings: Settings, old_size: int) -> dict[str, Any]:
    """``audit consistency`` as it was: every leaf read, both roots and the proof hashed."""
    evidence = audit_process._Evidence(settings)
    try:
        old, new = await evidence.head(0, old_size), await evidence.head(0, None)
        leaves = await evidence.leaves(0, new.size)
        document = proofs.consistency_document(old, new, leaves)
        if merkle.subtree_root(leaves, 0, old.size).hex() != old.root:
            raise errors.AuditError("rewritten")
        if merkle.subtree_root(leaves, 0, new.size).hex() != new.root:
            raise errors.AuditError("rewritten")
        proofs.check_document(document)
        return document
    finally:
        await evidence.close()


async def _timed(call: Callable[[], Awaitable[dict[str, Any]]]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    document = await call()
    return time.perf_counter() - wall, time.process_time() - cpu, document


async def proof_figures(
    fresh_database: Callable[[], Awaitable[str]], sizes: list[int], repeat: int
) -> list[bench.Result]:
    """The proof figures at each of ``sizes`` (leaves), ``repeat`` alternated pairs each."""
    results: list[bench.Result] = []
    for size in sizes:
        dsn = await fresh_database()
        started = time.perf_counter()
        await build(dsn, size)
        built_s = time.perf_counter() - started
        settings = Settings(database_url=dsn, log="table")
        offset, first = size // 3, HEAD_EVERY if size > HEAD_EVERY else size
        kinds: dict[str, tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]] = {
            "inclusion": (
                functools.partial(audit_process.proof, settings, 0, offset, None),
                functools.partial(_every_leaf_inclusion, settings, offset),
            ),
            "consistency": (
                functools.partial(audit_process.consistency, settings, (0, first), (0, size)),
                functools.partial(_every_leaf_consistency, settings, first),
            ),
        }
        for kind, (stored, every) in kinds.items():
            now: list[tuple[float, float]] = []
            before: list[tuple[float, float]] = []
            loads: list[float] = []
            for _ in range(repeat):
                loads.append(os.getloadavg()[0])
                wall, cpu, mine = await _timed(stored)
                now.append((wall, cpu))
                wall, cpu, theirs = await _timed(every)
                before.append((wall, cpu))
                if mine != theirs:
                    raise AssertionError(f"{kind} at {size:,} leaves: the two proofs differ")
            detail = (
                f"{size:,} leaves, built directly (COPY, {built_s:.0f} s; no allocator run); "
                f"load {min(loads):.1f}-{max(loads):.1f}; documents equal"
            )
            label = f"audit proof ({kind}), {size:,} leaves"
            results += [
                bench.Result.of_samples(
                    NAME,
                    f"{label}: stored subtree roots",
                    [w * 1000 for w, _ in now],
                    "ms",
                    detail=detail
                    + "; CPU of this process "
                    + ", ".join(f"{c * 1000:.0f}" for _, c in now)
                    + " ms",
                    issue="10",
                    better="lower",
                ),
                bench.Result.of_samples(
                    NAME,
                    f"{label}: every leaf (before)",
                    [w * 1000 for w, _ in before],
                    "ms",
                    detail=detail
                    + "; CPU of this process "
                    + ", ".join(f"{c * 1000:.0f}" for _, c in before)
                    + " ms",
                    issue="10",
                    better="lower",
                ),
                bench.Result.of_samples(
                    NAME,
                    f"{label}: every leaf / stored roots",
                    [b[0] / n[0] for n, b in zip(now, before, strict=True)],
                    "ratio",
                    detail="wall time, pairs run back to back",
                    issue="10",
                    better="higher",
                ),
            ]
    return results
