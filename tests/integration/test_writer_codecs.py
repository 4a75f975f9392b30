"""The writer's own codecs (``projection._writer_codecs``) store and read what asyncpg's do.

The commit hands asyncpg IPv4 addresses as integers and IPv6 ones as 16 bytes; the writer's
connections encode those straight into PostgreSQL's binary inet instead of through an
``ipaddress`` object each. Any value, in any statement of such a connection (COPY, a parameter,
an array parameter) and any inet read back must be exactly what a connection with asyncpg's own
codec stores and returns, or the projection would differ with the codec's presence. The same
holds for timestamptz, which the writer encodes once per distinct UTC time.
"""

from __future__ import annotations

import datetime
import ipaddress

import asyncpg
import pytest

from service.adapters.postgres import projection as pg_projection

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

VALUES: list[object] = [
    0,
    1,
    167_772_161,
    (1 << 32) - 1,
    1 << 32,  # an integer past IPv4's range is an IPv6 address, as asyncpg takes it
    (1 << 128) - 1,
    bytes(range(16)),
    b"\x0a\x00\x00\x01",
    "10.1.2.3",
    "fd00::1",
    "10.1.2.3/24",
    "fd00::5/64",
    ipaddress.ip_address("10.9.9.9"),
    ipaddress.ip_address("fd00::9"),
]


async def test_the_writer_codec_stores_and_reads_what_asyncpgs_does(pg_dsn: str) -> None:
    plain = await asyncpg.connect(pg_dsn)
    writer = await asyncpg.connect(pg_dsn)
    try:
        await pg_projection._writer_codecs(writer)
        await pg_projection._writer_codecs(writer)  # a second call changes nothing
        await plain.execute("DROP TABLE IF EXISTS codec_check")
        await plain.execute("CREATE TABLE codec_check (k int, a inet)")
        for connection, base in ((plain, 0), (writer, 1000)):
            await connection.copy_records_to_table(
                "codec_check", records=[(base + i, v) for i, v in enumerate(VALUES)]
            )
            await connection.executemany(
                "INSERT INTO codec_check VALUES ($1, $2)",
                [(base + 500 + i, v) for i, v in enumerate(VALUES)],
            )
        rows = await plain.fetch("SELECT k, a::text AS text FROM codec_check")
        stored = {row["k"]: row["text"] for row in rows}
        for i, value in enumerate(VALUES):
            assert stored[1000 + i] == stored[i], value
            assert stored[1500 + i] == stored[500 + i] == stored[i], value
        query = "SELECT k, a FROM codec_check ORDER BY k"
        assert [tuple(r) for r in await writer.fetch(query)] == [
            tuple(r) for r in await plain.fetch(query)
        ]
        # 10.0.0.1 is in VALUES twice (an integer and 4 bytes), the 16 bytes once: 3 rows by
        # each of the four writes.
        wanted = [167_772_161, bytes(range(16))]
        count = "SELECT count(*) FROM codec_check WHERE a = ANY($1::inet[])"
        assert await writer.fetchval(count, wanted) == await plain.fetchval(count, wanted) == 12
        assert await writer.fetchval("SELECT $1::inet[]", wanted) == await plain.fetchval(
            "SELECT $1::inet[]", wanted
        )
    finally:
        await plain.execute("DROP TABLE IF EXISTS codec_check")
        await plain.close()
        await writer.close()


_UTC = datetime.UTC
TIMES: list[object] = [
    datetime.datetime(2026, 12, 2, 13, 0, 0, 123_456, tzinfo=_UTC),
    datetime.datetime(2026, 12, 2, 13, 0, 0, 123_456, tzinfo=_UTC),  # equal, another object
    datetime.datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=_UTC),  # before PostgreSQL's epoch
    datetime.datetime(2000, 1, 1, tzinfo=_UTC),
    datetime.datetime(1, 1, 1, tzinfo=_UTC),
    datetime.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=_UTC),  # asyncpg's infinity
    datetime.datetime(2026, 12, 2, 15, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    datetime.datetime(2026, 12, 2, 13, 0),  # naive: local time, as asyncpg takes it
    datetime.datetime.max,  # asyncpg's infinity
    datetime.datetime.min,  # asyncpg's -infinity
    datetime.date(2026, 12, 2),  # a date: midnight local time
    None,
]


async def test_the_writer_timestamptz_codec_stores_and_reads_what_asyncpgs_does(
    pg_dsn: str,
) -> None:
    plain = await asyncpg.connect(pg_dsn)
    writer = await asyncpg.connect(pg_dsn)
    try:
        await pg_projection._writer_codecs(writer)
        await plain.execute("DROP TABLE IF EXISTS codec_time_check")
        await plain.execute("CREATE TABLE codec_time_check (k int, t timestamptz)")
        for connection, base in ((plain, 0), (writer, 1000)):
            for _ in range(2):  # the second time from the writer's cache of encoded times
                await connection.copy_records_to_table(
                    "codec_time_check", records=[(base + i, v) for i, v in enumerate(TIMES)]
                )
            await connection.execute(
                "INSERT INTO codec_time_check SELECT * FROM unnest($1::int[], $2::timestamptz[])",
                [base + 500 + i for i in range(len(TIMES))],
                TIMES,
            )
        await plain.execute(
            "INSERT INTO codec_time_check VALUES (2000, 'infinity'), (2001, '-infinity'), "
            "(2002, '2000-01-01 00:00:00.000001+00'), (2003, '1970-01-01 00:00:00+00')"
        )
        rows = await plain.fetch("SELECT k, t::text AS text FROM codec_time_check")
        stored: dict[int, set[str | None]] = {}
        for row in rows:
            stored.setdefault(row["k"], set()).add(row["text"])
        for i, value in enumerate(TIMES):
            assert len(stored[i]) == 1, value
            assert stored[1000 + i] == stored[500 + i] == stored[1500 + i] == stored[i], value
        assert stored[5] == stored[8] == stored[2000] == {"infinity"}
        assert stored[9] == stored[2001] == {"-infinity"}
        query = "SELECT k, t FROM codec_time_check ORDER BY k, t"
        read = [tuple(r) for r in await writer.fetch(query)]
        assert read == [tuple(r) for r in await plain.fetch(query)]
        assert [type(t) for _, t in read if t is not None] == [datetime.datetime] * (
            len(read) - sum(1 for _, t in read if t is None)
        )
        assert await writer.fetchval("SELECT $1::timestamptz[]", TIMES) == await plain.fetchval(
            "SELECT $1::timestamptz[]", TIMES
        )
    finally:
        await plain.execute("DROP TABLE IF EXISTS codec_time_check")
        await plain.close()
        await writer.close()
