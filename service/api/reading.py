"""How the query API reads a request: names and addresses, ``as_of``, cursors, the basis, ETags.

Used by ``service.api.routes``. Names are checked as the event contract checks them (the
annotated types of ``service.domain.events``), addresses parsed by ``service.domain.addresses``
(Go's netip rules, what the allocator accepts), so the API answers about exactly the names and
addresses a record could have carried. A refused value is ``errors.QueryInvalidError`` naming the
parameter. No I/O but the read port's ``applied_offset``.

**The basis.** Every answer is the projection as it stood right after one record of the
cluster's partition, its basis: the last applied record, or the one ``as_of`` names (a log
offset: that record, or the last applied one if the log has not got that far; an RFC 3339 time:
the last record whose time, the event's else the log's, is at or before it). A cursor carries
the basis of the page that made it, so the pages of one listing all come from one basis even
while the allocator goes on. Because history is insert-only, the answer for a path, a query and a
basis never changes: the ETag is a hash of the three, checked before the answer's query runs,
or, on the routes that read the basis and the answer in one statement (``ports.Based``: an
address, its history, an owner, a node), before the body is built.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import json
import re
from typing import Any

import msgspec

from service import errors, ports
from service.domain import addresses, events

# Part of every ETag: a new version of the bodies' format must not match an old tag.
BODY_VERSION = "1"
_OFFSET = re.compile(r"[0-9]{1,19}")
_MAX_OFFSET = 2**63 - 1
_ClusterName = msgspec.json.Decoder(events.ClusterName)
_NodeName = msgspec.json.Decoder(events.NodeName)
_Owner = msgspec.json.Decoder(events.Owner)


def _checked(decoder: msgspec.json.Decoder[str], what: str, value: str) -> str:
    try:
        return decoder.decode(json.dumps(value))
    except msgspec.ValidationError as exc:
        raise errors.QueryInvalidError(f"{what} {value!r} is not valid: {exc}") from None


def cluster_name(value: str) -> str:
    """A cluster name as the contract allows it (a DNS-1123 label)."""
    return _checked(_ClusterName, "cluster", value)


def node_name(value: str) -> str:
    """A node name as the contract allows it (a DNS-1123 subdomain)."""
    return _checked(_NodeName, "node", value)


def owner_name(value: str) -> str:
    """An owner as the contract allows it (1-512 characters, no control character)."""
    return _checked(_Owner, "owner", value)


def address(value: str) -> ports.Address:
    """A pod address, read as the allocator reads one."""
    try:
        return addresses.parse_address(value)
    except ValueError as exc:
        raise errors.QueryInvalidError(f"ip {value!r} is not an address: {exc}") from None


def as_of(value: str | None) -> int | datetime.datetime | None:
    """``as_of``: a log offset (digits), an RFC 3339 time, or None (now)."""
    if value is None:
        return None
    if _OFFSET.fullmatch(value):
        offset = int(value)
        # Nineteen digits reach past a bigint: the database would refuse the argument (a
        # 503 for what is the client's mistake).
        if offset > _MAX_OFFSET:
            raise errors.QueryInvalidError(
                f"as_of {value!r} is past the largest log offset ({_MAX_OFFSET})"
            )
        return offset
    try:
        time = msgspec.json.decode(json.dumps(value), type=events.EventTime)
        moment = datetime.datetime.fromisoformat(time)
    except (msgspec.ValidationError, ValueError):
        raise errors.QueryInvalidError(
            f"as_of {value!r} is neither a log offset (digits) nor an RFC 3339 time "
            "(2026-11-17T10:00:00Z)"
        ) from None
    try:
        # Bound as a timestamptz, which the driver computes in UTC: 9999-12-31T23:59:59-01:00
        # is year 10000 there, and the OverflowError was answered as an outage (503).
        moment.astimezone(datetime.UTC)
    except OverflowError:
        raise errors.QueryInvalidError(
            f"as_of {value!r} is outside years 0001-9999 once in UTC"
        ) from None
    return moment


async def basis(
    reader: ports.ProjectionReader,
    cluster: str,
    partition: int,
    wanted: int | datetime.datetime | None,
) -> int:
    """The offset the answer reflects (see the module's docstring); 404 if there is none."""
    now = await reader.applied_offset(partition)
    if wanted is None:
        return settled(cluster, partition, wanted, now, now)
    if isinstance(wanted, int):
        return settled(cluster, partition, wanted, now, wanted)
    found = None if now is None else await reader.applied_offset(partition, at_time=wanted)
    return settled(cluster, partition, wanted, now, found)


def settled(
    cluster: str,
    partition: int,
    wanted: int | datetime.datetime | None,
    applied: int | None,
    found: int | None,
) -> int:
    """The basis from the partition's last ``applied`` offset and the record ``found`` for
    ``wanted`` (itself for an offset, the last at or before a time; ``ports.Based`` reads
    both in one go); 404 when nothing is applied yet, or nothing was at that time."""
    if applied is None:
        raise errors.QueryNotFoundError(f"no record of partition {partition} is applied yet")
    if found is None:
        when = rfc3339(wanted) if isinstance(wanted, datetime.datetime) else str(wanted)
        raise errors.QueryNotFoundError(f"cluster {cluster}: no record at or before {when}")
    return min(found, applied)


class Cursor(msgspec.Struct, frozen=True, array_like=True):
    """Where the next page starts (after ``key``), and the basis it is read at."""

    key: str | int
    basis: int


_cursor_decoder = msgspec.json.Decoder(Cursor)


def cursor(key: str | int, at: int) -> str:
    """The opaque ``next`` of a page."""
    return base64.urlsafe_b64encode(msgspec.json.encode(Cursor(key, at))).decode().rstrip("=")


def read_cursor(value: str | None) -> Cursor | None:
    """``after``, as a ``next`` of this API made it; 400 for anything else."""
    if value is None or value == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise errors.QueryInvalidError(
            f"after {value!r} is not a cursor: pass the `next` of the previous page"
        ) from None


def etag(path: str, query: str, bases: list[tuple[int, int]]) -> str:
    """The strong ETag of an answer: a hash of what determines it."""
    # Neither the query string (percent-encoded as received) nor the bases hold a NUL, so the
    # last two separators split the key unambiguously whatever the (decoded) path holds.
    key = f"{BODY_VERSION}\0{path}\0{query}\0{sorted(bases)}"
    return f'"{hashlib.sha256(key.encode()).hexdigest()[:32]}"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (or ``*``)."""
    if not if_none_match:
        return False
    candidates = {part.strip().removeprefix("W/") for part in if_none_match.split(",")}
    return "*" in candidates or tag in candidates


def rfc3339(moment: datetime.datetime) -> str:
    """A time on the wire: RFC 3339 in UTC with microseconds, as stored."""
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def network(text: Any) -> str:
    """A CIDR's one text (``addresses.format_network``)."""
    value = text if not isinstance(text, str) else ipaddress.ip_network(text)
    return addresses.format_network(value)
