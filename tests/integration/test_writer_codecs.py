"""The writer's own inet codec (``projection._writer_codecs``) stores and reads what asyncpg's does.

The commit hands asyncpg IPv4 addresses as integers and IPv6 ones as 16 bytes; the writer's
connections encode those straight into PostgreSQL's binary inet instead of through an
``ipaddress`` object each. Any value, in any statement of such a connection (COPY, a parameter,
an array parameter) and any inet read back must be exactly what a connection with asyncpg's own
codec stores and returns, or the projection would differ with the codec's presence.
"""

from __future__ import annotations

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
