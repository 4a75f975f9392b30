"""The one edge between ipledger and aiokafka: how clients are made and started, errors translated.

Used by ``log`` (the event log's producer and consumers) and ``sink`` (the decisions producer),
so that both produce with the same guarantees and report Kafka's failures the same way: every
aiokafka exception becomes the caller's ``errors.LogError`` subclass (``KafkaLogError``,
``KafkaSinkError``), raised from it, and goes no further.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from service import errors

# aiokafka reports failures as KafkaError subclasses, but lets socket errors and timeouts
# (asyncio.TimeoutError is TimeoutError, an OSError) through from some code paths.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError)


def milliseconds(seconds: float) -> int:
    """``seconds`` as the whole, positive milliseconds aiokafka's timeouts take."""
    return max(1, math.ceil(seconds * 1000))


def idempotent_producer(
    bootstrap: str, *, client_id: str, linger_ms: int, request_timeout_ms: int
) -> AIOKafkaProducer:
    """A producer (not started) whose sends return only once every in-sync replica has them.

    ``acks="all"`` with idempotence: the producer's retries can neither duplicate nor reorder
    records, and aiokafka never has more than one produce request in flight per partition (its
    sender mutes a partition until the request carrying it is answered), which is what
    ``max.in.flight.requests.per.connection=1`` gives a Java producer.
    """
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        request_timeout_ms=request_timeout_ms,
    )


def consumer(
    bootstrap: str,
    *,
    client_id: str,
    request_timeout_ms: int,
    group_id: str | None = None,
    auto_offset_reset: str = "latest",
) -> AIOKafkaConsumer:
    """A consumer (not started) that never commits on its own.

    ipledger's position is the one stored with its projection; a group, when there is one, only
    mirrors it for lag monitoring, and committing what was merely fetched would report events
    as processed before the projection has them.
    """
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        request_timeout_ms=request_timeout_ms,
    )


@contextlib.contextmanager
def translate(
    error: type[errors.LogError], doing: str, *, name_cause: bool = True
) -> Iterator[None]:
    """Raise ``error`` from any aiokafka error inside: ``"<doing>: <the error's repr>"``, or
    ``doing`` alone without ``name_cause``."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise error(f"{doing}: {exc!r}" if name_cause else doing) from exc


@contextlib.asynccontextmanager
async def starting(
    error: type[errors.LogError], doing: str, close: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    """Start clients inside; if anything fails, ``close`` first, so nothing is left open.

    An aiokafka error is then raised as ``error`` (as :func:`translate` words it), anything else
    (cancellation, the caller's own errors) as it is.
    """
    try:
        yield
    except BaseException as exc:
        await close()
        if isinstance(exc, DRIVER_ERRORS):
            raise error(f"{doing}: {exc!r}") from exc
        raise


async def send_in_order(
    producer: AIOKafkaProducer,
    topic: str,
    items: Sequence[tuple[bytes | None, bytes]],
    *,
    error: type[errors.LogError],
    doing: str,
    timestamp_ms: int | None = None,
) -> list[RecordMetadata]:
    """Send ``(key, value)`` pairs to ``topic`` in order; their metadata once all are acknowledged.

    On failure (raised as ``error``, see :func:`translate`) a prefix of the pairs of some
    partitions may have been written.
    """
    pending: list[asyncio.Future[RecordMetadata]] = []
    try:
        for key, value in items:
            # send() only queues the record; queueing all before awaiting any lets the producer
            # put them into as few batches as possible. Per partition, queue order is log order,
            # and idempotence keeps it through retries.
            pending.append(
                await producer.send(topic, value=value, key=key, timestamp_ms=timestamp_ms)
            )
        return await asyncio.gather(*pending)
    except DRIVER_ERRORS as exc:
        # Collect the other outcomes too, so no failed future is left unobserved.
        await asyncio.gather(*pending, return_exceptions=True)
        raise error(f"{doing}: {exc!r}") from exc
