"""The table log written with plain SQL, as any writer of the table could, and the pure core's
verdict over the same records: what the tests of hostile and unstorable records compare with."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.adapters.postgres import table_log
from service.domain import allocation, events, state


def oracle(records: Sequence[bytes]) -> tuple[state.State, list[events.Decision]]:
    """What the pure core (``ipledger simulate``) decides over ``records``."""
    current = state.State()
    return current, [allocation.apply_record(current, record)[0] for record in records]


async def insert_raw(dsn: str, items: Sequence[tuple[bytes | None, bytes, str | None]]) -> None:
    """Append ``(key, value, appended_at)`` rows to partition 0 with plain SQL.

    ``appended_at`` is PostgreSQL's text of a ``timestamptz`` (``'infinity'`` too), or None for
    the server's clock. The partition's ``log_head`` row must exist (``partitions()`` makes it).
    """
    db = await asyncpg.connect(dsn)
    try:
        async with db.transaction():
            end = await db.fetchval(
                "UPDATE log_head SET next_offset = next_offset + $1 WHERE partition = 0 "
                "RETURNING next_offset",
                len(items),
            )
            await db.executemany(
                'INSERT INTO log_record (partition, "offset", key, value, appended_at) '
                "VALUES (0, $1, $2, $3, coalesce($4::text::timestamptz, clock_timestamp()))",
                [(end - len(items) + n, *item) for n, item in enumerate(items)],
            )
            await db.execute("SELECT pg_notify($1, '0')", table_log.DEFAULT_CHANNEL)
    finally:
        await db.close()
