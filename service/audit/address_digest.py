"""Digests of the pod address tables (``pod_ip``, ``ip_history``), for ``replay --verify``.

At the end of a replay the committed projection's rows are compared with the replayed ones.
The two address tables are most of a long log's rows (600,000 of a million-event log's), and
reading them (asyncpg building a tuple, a text and two datetimes per row) and comparing them
were two thirds of that comparison. So a reader that can (``DigestingReader``: the PostgreSQL
adapter) has the server compute a digest of each table, the replay computes the same over its
own rows (``of``), and the rows are read and compared one by one only when a digest differs:
the first divergence is then found and named as ever.

The digest is the same bytes on both sides. A table's rows in key order (cluster by its bytes,
``COLLATE "C"``; the address family, the address; in ``ip_history`` the from offset), taken a
column at a time: each column is one byte string, and the table's digest is the SHA-256 of the
concatenated SHA-256 of its columns, beside the number of rows. A column is

- an integer: each value's big-endian bytes (``int4send``/``int8send``; the family and the mask
  length as 2 bytes);
- the address: each value's 4 (IPv4) or 16 bytes, which the family column delimits;
- a text: each value's UTF-8 length as 4 bytes, then (a column of its own) the values one after
  the other;
- a time: each value's seconds since 1970 as a big-endian IEEE double (``float8send``). Both
  sides round the same exact number of microseconds to the nearest double (PostgreSQL's
  ``extract(epoch ...)`` is exact, Python's ``datetime.timestamp`` divides integers), and within
  2**33 seconds of 1970 (years 1698 to 2242) the double's spacing is below a microsecond, so
  distinct times give distinct doubles; ``of`` declines (``None``) when a replayed time is
  outside that range.

Every column is typed and delimited, so two different sets of rows cannot give the same bytes;
equal digests then mean equal rows but for a SHA-256 collision. A committed row the replay cannot
have (an address with a shorter mask, a time not a microsecond multiple) gives a different
digest, never an equal one; its row by row comparison then names it.

Called by ``service.audit.replay``; no I/O.
"""

from __future__ import annotations

import array
import datetime
import hashlib
import itertools
import operator
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from service import ports

# Each table's digest: (rows, SHA-256 over its columns' SHA-256).
Digest = tuple[int, bytes]
# Within this many seconds of 1970 a double's spacing is below a microsecond (module docstring).
_TIME_RANGE_S = float(1 << 33)
_BIG_ENDIAN = sys.byteorder == "big"
_sha256 = hashlib.sha256
_TIMESTAMP = datetime.datetime.timestamp
_FIRST, _SECOND, _THIRD = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


@runtime_checkable
class DigestingReader(Protocol):
    """An ``AuditReader`` that also digests its address tables (the PostgreSQL adapter)."""

    async def address_digests(self, partition: int) -> dict[str, Digest]:
        """``{"pod_ip": ..., "ip_history": ...}`` of the clusters of ``partition``."""
        ...

    async def rows_besides_addresses(self, partitions: Sequence[int]) -> ports.ProjectionRows:
        """``AuditReader.rows`` with ``pod_ips`` and ``history`` left empty."""
        ...


def of(
    holding: dict[tuple[str, int, int], tuple[Any, ...]],
    finished: Sequence[tuple[Any, ...]],
) -> dict[str, Digest] | None:
    """The digests of a replay's address rows (``replay_apply.Addresses``' two collections), or
    None when a time is outside the range a double keeps to the microsecond."""
    # pod_ip: (cluster, family, address) -> (node, owner, partition, since offset, since time)
    keys = list(holding)
    values = list(holding.values())
    node, owner, partition, since_offset, since_time = _columns(values, 5)
    order = _order(since_offset, keys)
    if order is not None:
        keys = list(map(keys.__getitem__, order))
        node, owner, partition, since_offset, since_time = _columns(
            map(values.__getitem__, order), 5
        )
    pod_ip = _table(
        keys,
        (
            [_integers("q", since_offset)],
            _texts(node),
            _texts(owner),
            [_integers("i", partition)],
            _times(since_time),
        ),
    )
    # ip_history: (key, from offset, (node, owner, partition, from time, to offset, to time))
    rows = finished
    node, owner, partition, from_time, to_offset, to_time = _columns(map(_THIRD, rows), 6)
    order = _order(to_offset, list(map(_FIRST, rows)))
    if order is not None:
        rows = list(map(rows.__getitem__, order))
        node, owner, partition, from_time, to_offset, to_time = _columns(map(_THIRD, rows), 6)
    ip_history = _table(
        list(map(_FIRST, rows)),
        (
            [_integers("q", to_offset)],
            [_integers("q", map(_SECOND, rows))],
            _texts(node),
            _texts(owner),
            [_integers("i", partition)],
            _times(from_time),
            _times(to_time),
        ),
    )
    if pod_ip is None or ip_history is None:
        return None
    return {"pod_ip": pod_ip, "ip_history": ip_history}


def _order(offsets: list[int], keys: list[tuple[str, int, int]]) -> list[int] | None:
    """The positions of the rows in the server's ORDER BY (offset, cluster by its bytes, family,
    address), or None when they are in it already.

    The rows are kept in log order (a holding where it began, a finished one where it ended),
    so only the rows of one event can be out of that order, and the sort is of a sorted list
    but for those: Python's sort takes that in one pass. (Python orders texts by code point,
    which is the order of their UTF-8 bytes: COLLATE "C".)"""
    ordered = list(zip(offsets, keys, strict=True))
    if all(map(operator.lt, ordered, itertools.islice(ordered, 1, None))):
        return None
    return sorted(range(len(ordered)), key=ordered.__getitem__)


def _columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    columns = list(map(list, zip(*rows, strict=True)))
    return columns or [[] for _ in range(width)]


def _table(
    keys: list[tuple[str, int, int]], columns: Iterable[list[bytes] | None]
) -> Digest | None:
    clusters, families, addresses = _columns(keys, 3)
    if set(families) <= {4}:
        address_bytes = _integers("I", addresses)
    else:
        address_bytes = b"".join(
            a.to_bytes(4 if f == 4 else 16, "big") for f, a in zip(families, addresses, strict=True)
        )
    parts: list[bytes] = [
        *_texts(clusters),
        _integers("h", families),
        address_bytes,
        _integers("h", [32 if f == 4 else 128 for f in families]),
    ]
    for column in columns:
        if column is None:
            return None
        parts.extend(column)
    return len(keys), _sha256(b"".join(_sha256(part).digest() for part in parts)).digest()


def _integers(code: str, values: Iterable[int]) -> bytes:
    column = array.array(code, values)
    if not _BIG_ENDIAN:
        column.byteswap()
    return column.tobytes()


def _texts(values: list[str]) -> list[bytes]:
    """A text column: its values' UTF-8 lengths, and the values one after the other."""
    joined = "".join(values)
    if joined.isascii():
        lengths = _integers("i", map(len, values))
    else:
        lengths = _integers("i", map(len, map(str.encode, values)))
    return [lengths, joined.encode()]


def _times(values: list[datetime.datetime]) -> list[bytes] | None:
    seconds = array.array("d", map(_TIMESTAMP, values))
    if seconds and (max(seconds) >= _TIME_RANGE_S or min(seconds) <= -_TIME_RANGE_S):
        return None
    if not _BIG_ENDIAN:
        seconds.byteswap()
    return [seconds.tobytes()]
