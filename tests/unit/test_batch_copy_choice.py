"""Which commit path a batch takes (``batch_copy.by_copy``): COPY for many records or many bytes.

The one-statement commit is one protocol message, which PostgreSQL takes up to 1 GB only; COPY
streams row by row. A batch of a few large records must go by COPY, or it could be refused for
its size on every retry; a batch of many small records goes by COPY because it is cheaper there.
"""

from __future__ import annotations

from service import ports
from service.adapters.postgres import batch_copy
from service.domain import events, state


def _batch(count: int, value_bytes: int) -> ports.Batch:
    decision = events.Decision(id=None, type=None, cluster=None, error="not an event")
    applied = [
        ports.AppliedRecord(
            ports.Record(0, offset, None, b"x" * value_bytes, None),
            decision,
            events.encode_decision(decision),
            None,
            None,
            rejected=True,
        )
        for offset in range(count)
    ]
    return ports.Batch(0, 1, count, state.State(), applied=applied)


def test_a_small_batch_goes_as_one_statement() -> None:
    assert not batch_copy.by_copy(_batch(50, 100))
    assert not batch_copy.by_copy(_batch(batch_copy.COPY_FROM_RECORDS - 1, 100))


def test_a_batch_of_many_records_goes_by_copy() -> None:
    assert batch_copy.by_copy(_batch(batch_copy.COPY_FROM_RECORDS, 10))


def test_a_batch_of_few_large_records_goes_by_copy() -> None:
    big = batch_copy.COPY_FROM_BYTES // 4
    assert batch_copy.by_copy(_batch(4, big))
    assert not batch_copy.by_copy(_batch(2, big))
