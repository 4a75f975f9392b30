"""The event log as an append-only PostgreSQL table: the ``EventLog`` port without Kafka.

``PostgresTableLog`` stores records in ``log_record`` (see ``schema.py``) and is built by the
composition root when the log is configured to live in PostgreSQL (``make run`` does this). It
must not hand a reader an offset while a smaller offset of the same partition can still appear,
because readers continue from the last offset they saw and would skip it forever. A ``bigserial``
has exactly that flaw: concurrent appenders draw 10 and 11, 11 commits first, a reader consumes
it and moves on to 12, then 10 commits behind it. Here an appender instead reserves its offsets
by incrementing the partition's ``log_head`` row and holds that row lock until it commits, so
the appenders of a partition commit one after another, in offset order, and offsets are dense
(a rolled-back append releases its reservation). Readers wait for ``NOTIFY`` rather than poll.

Driver exceptions are translated (``driver.Translation``) into ``errors.TableLogError``, a
``errors.LogError``; asyncpg stays inside.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Sequence
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import errors, ports
from service.adapters.postgres import driver, schema
from service.domain import partitioning

_log = logging.getLogger(__name__)

DEFAULT_CHANNEL = "ipledger_log"
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MILLISECOND = datetime.timedelta(milliseconds=1)
# Every failure is a TableLogError, one that blames the values appended too: the allocator
# backs off and retries a log error. Its messages have never named the driver's class.
_translate = driver.Translation(errors.TableLogError, name_driver_error=False)
# appended_at within datetime's range (years 1-9999 in UTC, less its first microsecond, which
# would be stored as -infinity): a row any client inserted may hold 'infinity' (no bigint) or a
# time before year 1 (no datetime), which would stop the partition.
_SELECT = (
    'SELECT "offset", key, value, floor(extract(epoch FROM least(greatest(appended_at, '
    "'0001-01-01 00:00:00.001+00'), '9999-12-31 23:59:59.999+00')) * 1000)::int8 "
    'FROM log_record WHERE partition = $1 AND "offset" >= $2 ORDER BY "offset" LIMIT $3'
)


class PostgresTableLog:
    """``ports.EventLog`` over the ``log_head`` and ``log_record`` tables.

    The partition count is fixed for the life of the database: the first log opened on it
    creates that many ``log_head`` rows, and using it later with another count raises
    ``errors.ConfigurationError``, since keys would move to other partitions. A key goes where
    Kafka's default partitioner would put it (``service.domain.partitioning``), so a cluster has
    the same home partition in either log. ``channel`` is the ``LISTEN``/``NOTIFY`` channel that
    wakes readers; ``fallback_poll_s`` bounds how long a reader sleeps when a notification is
    lost (the listening connection broke). The engine is disposed by :meth:`close` only when
    ``owns_engine``, as for logs made by :meth:`from_dsn`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        partitions: int = 1,
        channel: str = DEFAULT_CHANNEL,
        fallback_poll_s: float = 1.0,
        owns_engine: bool = False,
    ) -> None:
        if partitions < 1:
            raise errors.ConfigurationError(f"the log needs at least 1 partition, not {partitions}")
        self._engine = engine
        self._partitions = partitions
        self._channel = channel
        self._fallback_poll_s = fallback_poll_s
        self._owns_engine = owns_engine
        self._heads_checked = False
        self._listen_lock: anyio.Lock | None = None
        self._listen_connection: AsyncConnection | None = None
        self._listen_driver: Any = None  # the asyncpg connection under _listen_connection
        self._wakeups: dict[int, anyio.Event] = {}
        self._closed = False

    @classmethod
    def from_dsn(
        cls,
        dsn: str,
        *,
        partitions: int = 1,
        channel: str = DEFAULT_CHANNEL,
        fallback_poll_s: float = 1.0,
        pool_size: int = 5,
    ) -> PostgresTableLog:
        """A log with its own engine for ``dsn`` (``postgresql://...``); connects on first use."""
        return cls(
            driver.engine(dsn, pool_size=pool_size),
            partitions=partitions,
            channel=channel,
            fallback_poll_s=fallback_poll_s,
            owns_engine=True,
        )

    async def partitions(self) -> Sequence[int]:
        """The partition numbers, ``0`` to ``partitions - 1``."""
        await self._check_heads()
        return range(self._partitions)

    async def append(self, items: Sequence[tuple[bytes | None, bytes]]) -> Sequence[ports.Record]:
        """Append ``(key, value)`` pairs in one transaction; return them with their offsets.

        Items of one partition get consecutive offsets in the order given. The append is durable
        (committed) when this returns.
        """
        if not items:
            return []
        await self._check_heads()
        by_partition: dict[int, list[int]] = {}
        for index, (key, _) in enumerate(items):
            partition = partitioning.partition_for(key, self._partitions)
            by_partition.setdefault(partition, []).append(index)
        records: list[ports.Record | None] = [None] * len(items)
        rows: list[dict[str, object]] = []
        head = schema.log_head
        with _translate("appending to the table log"):
            async with self._engine.begin() as connection:
                # Ascending partition order, so that two multi-partition appends cannot deadlock.
                for partition in sorted(by_partition):
                    indexes = by_partition[partition]
                    reserve = (
                        sa.update(head)
                        .where(head.c.partition == partition)
                        .values(next_offset=head.c.next_offset + len(indexes))
                        .returning(head.c.next_offset, sa.func.clock_timestamp())
                    )
                    # The row lock taken here is what orders commits; it is held until commit.
                    end, appended_at = (await connection.execute(reserve)).one()
                    for offset, index in enumerate(indexes, start=end - len(indexes)):
                        key, value = items[index]
                        records[index] = ports.Record(
                            partition, offset, key, value, _to_ms(appended_at)
                        )
                        rows.append(
                            {
                                "partition": partition,
                                "offset": offset,
                                "key": key,
                                "value": value,
                                "appended_at": appended_at,
                            }
                        )
                await connection.execute(sa.insert(schema.log_record), rows)
                # Delivered at commit, never before: a woken reader finds the records.
                notified = sa.func.unnest(
                    sa.literal(sorted(by_partition), postgresql.ARRAY(sa.Integer))
                ).column_valued("notified")
                await connection.execute(
                    sa.select(sa.func.pg_notify(self._channel, sa.cast(notified, sa.Text)))
                )
        return [record for record in records if record is not None]

    async def read(
        self, partition: int, start: int, max_records: int, max_wait_s: float
    ) -> Sequence[ports.Record]:
        """Records of ``partition`` from offset ``start`` on, in order, at most ``max_records``.

        When there are none yet, waits up to ``max_wait_s`` for an append to notify, then
        returns what there is (possibly nothing).
        """
        self._check_partition(partition)
        if start < 0 or max_records < 1:
            raise errors.TableLogError(f"cannot read {max_records} records from offset {start}")
        await self._check_heads()
        deadline = anyio.current_time() + max_wait_s
        while True:
            if self._closed:
                raise errors.TableLogError("the table log was closed while reading")
            if max_wait_s > 0:
                await self._ensure_listening()
            # Registered before the query, so a notification between the query and the wait
            # is not lost: it sets this event and the wait returns at once.
            wakeup = self._wakeups.setdefault(partition, anyio.Event())
            records = await self._select(partition, start, max_records)
            remaining = deadline - anyio.current_time()
            if records or remaining <= 0:
                return records
            with anyio.move_on_after(min(remaining, self._fallback_poll_s)):
                await wakeup.wait()

    async def end_offset(self, partition: int) -> int:
        """The offset the next record appended to ``partition`` will get."""
        self._check_partition(partition)
        await self._check_heads()
        head = schema.log_head
        query = sa.select(head.c.next_offset).where(head.c.partition == partition)
        with _translate("reading the end of the table log"):
            async with self._engine.connect() as connection:
                end: int = (await connection.execute(query)).scalar_one()
        return end

    async def close(self) -> None:
        """Stop listening, release connections; dispose the engine when this log owns it."""
        self._closed = True
        await self._stop_listening()
        for wakeup in self._wakeups.values():
            wakeup.set()
        self._wakeups.clear()
        if self._owns_engine:
            await self._engine.dispose()

    async def _check_heads(self) -> None:
        if self._closed:
            raise errors.TableLogError("the table log is closed")
        if self._heads_checked:
            return
        head = schema.log_head
        with _translate("creating the table log's partitions"):
            async with self._engine.begin() as connection:
                existing = (
                    await connection.execute(sa.select(sa.func.count()).select_from(head))
                ).scalar_one()
                if existing == 0:
                    # Two processes may both find the table empty; the loser's rows are no-ops.
                    await connection.execute(
                        postgresql.insert(head)
                        .values(
                            [{"partition": p, "next_offset": 0} for p in range(self._partitions)]
                        )
                        .on_conflict_do_nothing()
                    )
                found = (
                    (
                        await connection.execute(
                            sa.select(head.c.partition).order_by(head.c.partition)
                        )
                    )
                    .scalars()
                    .all()
                )
        if list(found) != list(range(self._partitions)):
            # The same refusal as the Kafka adapter's for a topic of another size: a cluster's
            # home partition depends on the count, so changing it would move clusters.
            raise errors.ConfigurationError(
                f"the table log has {len(found)} partitions but {self._partitions} are "
                "configured; changing the count would move clusters to other partitions"
            )
        self._heads_checked = True

    def _check_partition(self, partition: int) -> None:
        if not 0 <= partition < self._partitions:
            raise errors.TableLogError(
                f"no partition {partition}: the table log has {self._partitions} partition(s)"
            )

    async def _select(self, partition: int, start: int, max_records: int) -> list[ports.Record]:
        # asyncpg directly, the time as milliseconds computed by the server (numeric, exact,
        # floored as ``_to_ms`` floors): SQLAlchemy's result rows and a datetime per record
        # were most of a long read's time (``ipledger replay`` reads the whole log).
        async with driver.connection(
            self._engine, _translate, "reading the table log", transaction=False
        ) as db:
            rows = await db.fetch(_SELECT, partition, start, max_records)
        return [ports.Record(partition, offset, key, value, ms) for offset, key, value, ms in rows]

    async def _ensure_listening(self) -> None:
        if self._is_listening():
            return
        if self._listen_lock is None:
            self._listen_lock = anyio.Lock()
        async with self._listen_lock:
            if self._is_listening():
                return
            await self._stop_listening()
            self._listen_connection, self._listen_driver = await driver.listen(
                self._engine,
                _translate,
                "listening for table log appends",
                self._channel,
                self._on_notify,
                no_driver="the listening connection has no asyncpg connection",
            )

    def _is_listening(self) -> bool:
        return self._listen_driver is not None and not self._listen_driver.is_closed()

    async def _stop_listening(self) -> None:
        connection, listen_driver = self._listen_connection, self._listen_driver
        self._listen_connection = self._listen_driver = None
        if connection is None:
            return
        await driver.close_listening(
            connection,
            listen_driver,
            self._channel,
            self._on_notify,
            log=_log,
            broke="the listening connection broke while closing",
        )

    def _on_notify(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            wakeup = self._wakeups.pop(int(payload), None)
            if wakeup is not None:
                wakeup.set()


def _to_ms(moment: datetime.datetime) -> int:
    # Integer arithmetic on timedeltas: float seconds would round some milliseconds down.
    return (moment - _EPOCH) // _MILLISECOND
