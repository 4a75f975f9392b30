"""``PartitionMembership`` of the table log: `run` processes share the partitions via PostgreSQL.

There is no broker to coordinate a group, so the database that already holds the writer leases
does: each process keeps a row in ``allocator_member`` alive (a heartbeat every
``heartbeat_s``, the row valid for ``ttl_s``), and with the same statement reads every live
member and every live lease holder. From those rows each process computes the whole assignment
with ``service.shares.assign`` (balanced quotas, sticky to the live leases, rendezvous hashing
for the rest) and keeps its own part. All processes compute the same function over the same
tables, so they agree after a heartbeat; in the meantime the writer lease decides (a process
told to lead a partition another still holds stands by until it is released or expires).

A process that stops deletes its row, so the others rebalance at their next heartbeat; one
that dies is left out once its row expires (``ttl_s``, the writer lease's TTL, after its last
heartbeat). Times are the database's (``clock_timestamp()``), as for the lease. Rows dead for
long are deleted by whoever heartbeats, so the table stays as small as the group.

The member name is the projection's lease holder (``host:pid:random``), which is what makes
"the leases a member holds" one join. Driver errors become ``errors.ProjectionError`` here; the
loop logs them, keeps the last assignment and retries.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Sequence

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from service import backoff, errors, shares
from service.adapters.postgres import driver

log = logging.getLogger("ipledger.members")
_translate = driver.Translation(errors.ProjectionError)
# Rows of members dead this long are deleted (kept a while for whoever looks into a takeover).
FORGET_AFTER = datetime.timedelta(hours=1)

_HEARTBEAT = """
WITH beat AS (
    INSERT INTO allocator_member (member, joined_at, expires_at)
    VALUES ($1, clock_timestamp(), clock_timestamp() + $2::interval)
    ON CONFLICT (member) DO UPDATE SET expires_at = EXCLUDED.expires_at
    RETURNING member
)
SELECT 'member' AS kind, member, NULL::integer AS partition
  FROM allocator_member WHERE expires_at > clock_timestamp() AND member <> $1
UNION ALL SELECT 'member', member, NULL FROM beat
UNION ALL
SELECT 'lease', holder, partition FROM writer_lease WHERE expires_at > clock_timestamp()
"""


class PostgresMembership:
    """This process's member row, and its share of ``partitions`` computed from the live rows."""

    def __init__(
        self,
        engine: AsyncEngine,
        partitions: Sequence[int],
        member: str,
        *,
        ttl_s: float = 6.0,
        heartbeat_s: float = 1.0,
        owns_engine: bool = False,
    ) -> None:
        self._engine = engine
        self.partitions = tuple(partitions)
        self.member = member
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self._owns_engine = owns_engine

    @classmethod
    def from_dsn(
        cls,
        dsn: str,
        partitions: Sequence[int],
        member: str,
        *,
        ttl_s: float = 6.0,
        heartbeat_s: float = 1.0,
    ) -> PostgresMembership:
        return cls(
            driver.engine(dsn, pool_size=1),
            partitions,
            member,
            ttl_s=ttl_s,
            heartbeat_s=heartbeat_s,
            owns_engine=True,
        )

    async def run(self, assigned: Callable[[frozenset[int]], None]) -> None:
        """Heartbeat and report this process's share until cancelled; then leave."""
        last: frozenset[int] | None = None
        failures = 0
        try:
            while True:
                try:
                    mine = await self.heartbeat()
                except errors.ProjectionError as exc:
                    failures += 1
                    delay = backoff.delay(failures, initial_s=self.heartbeat_s, max_s=self.ttl_s)
                    log.warning("membership heartbeat failed (retrying in %.1fs): %s", delay, exc)
                    await anyio.sleep(delay)
                    continue
                failures = 0
                if mine != last:
                    last = mine
                    assigned(mine)
                await anyio.sleep(self.heartbeat_s)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.heartbeat_s * 5):
                await self.leave()

    async def heartbeat(self) -> frozenset[int]:
        """Renew this member's row; its share of the partitions as the live rows give it now."""
        async with driver.connection(
            self._engine, _translate, "heartbeating the allocator membership", transaction=True
        ) as db:
            rows = await db.fetch(_HEARTBEAT, self.member, datetime.timedelta(seconds=self.ttl_s))
            await db.execute(
                "DELETE FROM allocator_member WHERE expires_at < clock_timestamp() - $1::interval",
                FORGET_AFTER,
            )
        members = {row["member"] for row in rows if row["kind"] == "member"}
        holders = {row["partition"]: row["member"] for row in rows if row["kind"] == "lease"}
        return shares.assign(self.partitions, members, holders).get(self.member, frozenset())

    async def leave(self) -> None:
        """Delete this member's row, so the others take its partitions at their next heartbeat."""
        try:
            async with driver.connection(
                self._engine, _translate, "leaving the allocator membership", transaction=True
            ) as db:
                await db.execute("DELETE FROM allocator_member WHERE member = $1", self.member)
        except errors.ProjectionError as exc:
            log.warning("could not leave the allocator membership: %s", exc)
        finally:
            if self._owns_engine:
                await self._engine.dispose()
