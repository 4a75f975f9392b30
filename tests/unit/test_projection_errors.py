"""The projection's error translation: errors in the data apart from errors that may pass.

Driver exceptions are built here as asyncpg and Python raise them (the SQLSTATEs are asyncpg's
own classes); what the real database raises for real values is tested against PostgreSQL in
tests/integration/test_unstorable_records.py. Also the allocator's rejection of a record the
projection cannot store: nothing of the record's text in it.
"""

from __future__ import annotations

import json

import asyncpg
import pytest
import sqlalchemy as sa
from asyncpg import exceptions as pg

from service import allocator, errors, metrics, ports
from service.adapters.postgres import driver, projection


def translated(exc: BaseException) -> errors.IpledgerError:
    with pytest.raises(errors.IpledgerError) as caught, projection._translate("committing"):
        raise exc
    assert caught.value.__cause__ is exc
    return caught.value


@pytest.mark.parametrize(
    "exc",
    [
        pg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00'),
        pg.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        pg.NumericValueOutOfRangeError("value out of range"),
        pg.StringDataRightTruncationError("value too long"),
        pg.InvalidTextRepresentationError("invalid input syntax for type inet"),
        # A bound parameter asyncpg could not encode (lone surrogate, int out of range).
        asyncpg.DataError("invalid input for query argument $1: 'a\\ud800' (surrogates)"),
        pg.CheckViolationError('new row for relation "pod_ip" violates check constraint "x"'),
        pg.UniqueViolationError("duplicate key value violates unique constraint"),
        pg.NotNullViolationError('null value in column "owner"'),
        pg.ProgramLimitExceededError("index row requires 12016 bytes, maximum size is 8191"),
        # COPY encodes in the client and raises Python's own errors for the same values.
        UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates not allowed"),
        OverflowError("value out of int64 range"),
        sa.exc.DBAPIError("INSERT ...", None, pg.CheckViolationError("check")),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_errors_in_the_data_are_projection_data_errors(exc: BaseException) -> None:
    error = translated(exc)
    assert isinstance(error, errors.ProjectionDataError)
    assert isinstance(error, errors.ProjectionError)  # handled as before wherever not special
    assert error.reason.startswith(f"{type(exc).__name__}: ")
    assert str(error) == f"committing: {error.reason}"


@pytest.mark.parametrize(
    "exc",
    [
        pg.SerializationError("could not serialize access"),
        pg.DeadlockDetectedError("deadlock detected"),
        pg.AdminShutdownError("terminating connection due to administrator command"),
        pg.QueryCanceledError("canceling statement due to statement timeout"),
        pg.LockNotAvailableError("could not obtain lock"),
        pg.IdleInTransactionSessionTimeoutError("idle-in-transaction timeout"),
        pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        pg.TooManyConnectionsError("sorry, too many clients already"),
        pg.DiskFullError("could not extend file"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.InternalClientError("protocol state"),
        ConnectionResetError("reset by peer"),
        TimeoutError("timed out"),
        sa.exc.DBAPIError("INSERT ...", None, pg.SerializationError("serialize")),
        sa.exc.TimeoutError("QueuePool limit reached"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_errors_that_may_pass_when_retried_stay_projection_errors(exc: BaseException) -> None:
    error = translated(exc)
    assert type(error) is errors.ProjectionError


def test_fencing_passes_through_unchanged() -> None:
    fenced = errors.FencedError("lease lost")
    with pytest.raises(errors.FencedError) as caught, projection._translate("committing"):
        raise fenced
    assert caught.value is fenced


def test_the_reason_is_storable_and_leaves_the_detail_out() -> None:
    exc = asyncpg.DataError(
        "invalid input for query argument $1: 'a\x00\ud800' (surrogates not allowed)\n"
        "DETAIL:  Failing row contains (default, 10.0.0.1, 2026-11-17 10:00:00+00)"
    )
    reason = translated(exc)
    assert isinstance(reason, errors.ProjectionDataError)
    assert reason.reason == (
        "DataError: invalid input for query argument $1: 'a\\x00\\ud800' (surrogates not allowed)"
    )
    reason.reason.encode("utf-8")  # no lone surrogate left
    long = translated(pg.CheckViolationError("x" * 5000))
    assert isinstance(long, errors.ProjectionDataError)
    assert len(long.reason) == driver.MAX_REASON_CHARS


def test_an_unstorable_record_is_rejected_without_echoing_its_text() -> None:
    raw = b'{"type":"ip.requested","id":"a\\u0000","cluster":"edge","node":"n","owner":"o"}'
    record = ports.Record(partition=0, offset=7, key=b"edge", value=raw, timestamp_ms=1_000)
    applied = allocator.unstorable_record(record, "CheckViolationError: refused")
    assert applied.rejected and applied.record is record and applied.event_time is None
    error = f"{allocator.UNSTORABLE}: CheckViolationError: refused"
    assert (applied.decision.id, applied.decision.type, applied.decision.error) == (
        None,
        None,
        error,
    )
    assert json.loads(applied.body)["error"] == error
    assert allocator.unstorable_record(record, None).decision.error == allocator.UNSTORABLE


def test_unstorable_records_are_exported_on_the_metrics_endpoint() -> None:
    counters = allocator.Metrics(records_rejected=3, records_unstorable=2)
    text = metrics.render(metrics.allocator_registry(counters))
    assert "ipledger_records_unstorable_total 2.0\n" in text
    assert "ipledger_records_rejected_total 3.0\n" in text
