"""What the in-memory adapters do beyond the port contracts in ``tests/contract``.

The contracts hold them to the ports; these tests pin down what tests of the allocator loop rely
on besides: the memory log's partitioning (the table log's), its exact reads, atomic appends,
injectable clock and how a close ends a waiting read; the memory sink's failure injection and
``wait_for_published``.
"""

from __future__ import annotations

import anyio
import pytest

from service import errors, ports
from service.adapters import memory
from service.domain import partitioning

pytestmark = pytest.mark.anyio

DEADLINE_S = 10.0


class TestMemoryEventLog:
    async def test_one_partition_unless_told_otherwise(self) -> None:
        assert list(await memory.MemoryEventLog().partitions()) == [0]
        with pytest.raises(errors.ConfigurationError):
            memory.MemoryEventLog(0)

    async def test_keys_go_where_the_table_log_puts_them(self) -> None:
        log = memory.MemoryEventLog(5)
        keys = [b"cluster-%d" % i for i in range(20)]

        appended = await log.append([(key, b"") for key in keys] + [(None, b"")])

        # Kafka's default partitioner (murmur2), so a cluster has the same home everywhere.
        assert [record.partition for record in appended] == [
            (partitioning.murmur2(key) & 0x7FFFFFFF) % 5 for key in keys
        ] + [0]
        assert len({record.partition for record in appended}) > 1

    async def test_one_read_returns_all_it_has_up_to_max_records(self) -> None:
        log = memory.MemoryEventLog()
        appended = await log.append([(b"k", b"%d" % i) for i in range(10)])

        assert await log.read(0, 2, 5, max_wait_s=0) == appended[2:7]
        assert await log.read(0, 8, 5, max_wait_s=0) == appended[8:]

    async def test_an_append_with_a_bad_pair_appends_nothing(self) -> None:
        log = memory.MemoryEventLog()
        bad: list[tuple[bytes | None, bytes]] = [(b"k", b"fine"), (b"k", "text"), (b"k", b"x")]  # type: ignore[list-item]

        with pytest.raises(errors.MemoryLogError):
            await log.append(bad)
        assert await log.end_offset(0) == 0

    async def test_timestamps_come_from_the_clock(self) -> None:
        log = memory.MemoryEventLog(clock_ms=lambda: 1_700_000_000_123)

        (record,) = await log.append([(None, b"v")])

        assert record == ports.Record(0, 0, None, b"v", 1_700_000_000_123)

    async def test_an_append_to_another_partition_does_not_end_a_wait(self) -> None:
        log = memory.MemoryEventLog(2)
        other = next(
            k for k in (b"k%d" % i for i in range(100)) if partitioning.partition_for(k, 2)
        )
        result: list[ports.Record] = []

        async def read() -> None:
            result.extend(await log.read(0, 0, 10, max_wait_s=0.3))

        began = anyio.current_time()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            await log.append([(other, b"elsewhere")])

        assert result == []
        assert anyio.current_time() - began >= 0.29

    async def test_closing_ends_a_waiting_read_with_an_error(self) -> None:
        log = memory.MemoryEventLog()
        failures: list[BaseException] = []

        async def read() -> None:
            try:
                await log.read(0, 0, 10, max_wait_s=DEADLINE_S * 2)
            except errors.MemoryLogError as exc:
                failures.append(exc)

        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read)
                await anyio.wait_all_tasks_blocked()
                await log.close()

        assert len(failures) == 1

    async def test_a_negative_wait_is_refused(self) -> None:
        with pytest.raises(errors.MemoryLogError):
            await memory.MemoryEventLog().read(0, 0, 1, max_wait_s=-1)


class TestMemoryDecisionSink:
    async def test_an_injected_failure_publishes_nothing_and_then_passes(self) -> None:
        sink = memory.MemoryDecisionSink()
        sink.fail_next()

        with pytest.raises(errors.MemorySinkError):
            await sink.publish([(b"e1", b"d1")])
        await sink.publish([(b"e1", b"d1")])

        assert sink.published == ((b"e1", b"d1"),)

    async def test_a_failure_may_deliver_a_prefix_first(self) -> None:
        sink = memory.MemoryDecisionSink()
        items = [(b"e1", b"d1"), (b"e2", b"d2"), (b"e3", b"d3")]
        sink.fail_next(2, delivered=1)

        for _ in range(2):
            with pytest.raises(errors.LogError):
                await sink.publish(items)
        await sink.publish(items)

        assert list(sink.published) == [items[0], items[0], *items]

    async def test_the_injected_error_is_raised_as_given(self) -> None:
        sink = memory.MemoryDecisionSink()
        sink.fail_next(error=errors.LogError("broker gone"))

        with pytest.raises(errors.LogError, match="broker gone"):
            await sink.publish([(b"e1", b"d1")])

    async def test_impossible_failures_are_refused(self) -> None:
        with pytest.raises(ValueError, match="cannot fail"):
            memory.MemoryDecisionSink().fail_next(-1)

    async def test_wait_for_published_wakes_on_a_publish(self) -> None:
        sink = memory.MemoryDecisionSink()
        seen: list[tuple[bytes, bytes]] = []

        async def wait() -> None:
            seen.extend(await sink.wait_for_published(2))

        with anyio.fail_after(DEADLINE_S):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                await sink.publish([(b"e1", b"d1")])
                await anyio.wait_all_tasks_blocked()
                assert seen == []
                await sink.publish([(b"e2", b"d2")])

        assert seen == [(b"e1", b"d1"), (b"e2", b"d2")]
        assert not sink.closed
