"""The Kafka adapter of the ``DecisionSink`` port: committed decisions go to a Kafka topic.

The composition root builds a ``KafkaDecisionSink`` for the decisions topic (``ipledger.decisions``
unless configured otherwise; ``log.ensure_decisions_topic`` creates it) and the allocator publishes
each batch's decisions through it after the projection has committed them. The topic is a feed,
not the source of truth: a decision lost with Kafka's retention can be recomputed from the log.

Publishing is at least once and in order per partition. The producer is the event log's kind
(``driver.idempotent_producer``: idempotent with ``acks="all"``, one request in flight per
partition), so its retries neither duplicate nor reorder records. A failed ``publish`` may have
delivered a prefix of its items; the caller publishes them again, and consumers de-duplicate by
the log partition and offset in each value.

No aiokafka exception leaves this module: driver errors become ``errors.KafkaSinkError``, a
``errors.LogError``, translated by ``driver`` as the event log's are.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from aiokafka import AIOKafkaProducer

from service import errors
from service.adapters.kafka import driver

DEFAULT_TOPIC = "ipledger.decisions"


class KafkaDecisionSink:
    """``ports.DecisionSink`` over one Kafka topic, written by one process (the allocator).

    Use ``await KafkaDecisionSink.open(...)`` or ``async with KafkaDecisionSink(...)``;
    ``close()`` is required. Concurrent ``publish`` calls are serialised, so each call's items
    stay together and in call order.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_TOPIC,
        *,
        client_id: str = "ipledger-decisions",
        request_timeout_s: float = 30.0,
        linger_ms: int = 0,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._client_id = client_id
        self._request_timeout_ms = driver.milliseconds(request_timeout_s)
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._publish_lock = anyio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        bootstrap: str,
        topic: str = DEFAULT_TOPIC,
        *,
        client_id: str = "ipledger-decisions",
        request_timeout_s: float = 30.0,
        linger_ms: int = 0,
    ) -> KafkaDecisionSink:
        """A started sink; see ``start()``."""
        sink = cls(
            bootstrap,
            topic,
            client_id=client_id,
            request_timeout_s=request_timeout_s,
            linger_ms=linger_ms,
        )
        await sink.start()
        return sink

    @property
    def topic(self) -> str:
        """The decisions topic this sink writes."""
        return self._topic

    async def start(self) -> None:
        """Connect the producer and check that the topic exists.

        Raises ``KafkaSinkError`` when Kafka cannot be reached or the topic is missing (create
        it with ``log.ensure_decisions_topic``); nothing is left open then.
        """
        if self._closed:
            raise errors.KafkaSinkError(f"the decision sink of {self._topic!r} is closed")
        if self._producer is not None:
            return
        self._producer = driver.idempotent_producer(
            self._bootstrap,
            client_id=self._client_id,
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
        )
        async with driver.starting(
            errors.KafkaSinkError, f"could not connect to Kafka at {self._bootstrap}", self.close
        ):
            await self._producer.start()
            # Checked on fresh metadata because the producer itself would wait a full request
            # timeout for a missing topic (the broker must not create topics on first use).
            metadata = await self._producer.client.fetch_all_metadata()
            if self._topic not in metadata.topics():
                raise errors.KafkaSinkError(
                    f"topic {self._topic!r} does not exist on {self._bootstrap}; "
                    "create it with ensure_decisions_topic"
                )
            await self._producer.partitions_for(self._topic)

    async def __aenter__(self) -> KafkaDecisionSink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def publish(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Publish ``(key, value)`` pairs in order; return once all ISRs have every one.

        On ``KafkaSinkError`` a prefix of the items of some partitions may have been published:
        publish them again (consumers de-duplicate).
        """
        producer = self._started_producer()
        if not items:
            return
        async with self._publish_lock:
            await driver.send_in_order(
                producer,
                self._topic,
                items,
                error=errors.KafkaSinkError,
                doing=f"publishing {len(items)} decisions to {self._topic!r} failed",
            )

    async def close(self) -> None:
        """Flush what is queued and stop the producer; safe to call twice."""
        self._closed = True
        producer, self._producer = self._producer, None
        if producer is None:
            return
        with driver.translate(
            errors.KafkaSinkError,
            f"closing the producer of {self._topic!r} failed",
            name_cause=False,
        ):
            await producer.stop()

    def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            state = "closed" if self._closed else "not started"
            raise errors.KafkaSinkError(f"the decision sink of {self._topic!r} is {state}")
        return self._producer
