"""How a record's key chooses its partition in the logs that ipledger partitions itself.

Used by the in-memory log (``service.adapters.memory``) and the PostgreSQL table log
(``service.adapters.postgres.table_log``), so that both put a key in the same partition number.
Kafka is not among them: its producer partitions with murmur2 of the key, so a key keeps one
partition there too, but not necessarily the same partition number as here. Pure: no I/O.
"""

from __future__ import annotations

import zlib


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition of ``key``: CRC-32 of the key modulo ``partitions``; no key goes to 0.

    Stable across processes and Python versions (unlike ``hash``), because a key must land in
    the same partition for as long as the log exists.
    """
    if key is None:
        return 0
    return zlib.crc32(key) % partitions
