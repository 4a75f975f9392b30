"""The one edge between ipledger and PostgreSQL's drivers: error translation and connections.

Used by every PostgreSQL adapter (``projection``, ``sync_store``, ``table_log``). Each one says
with a :class:`Translation` which ``service.errors`` class its failures become (and, for the
projection, which class the failures that blame the written values become), and takes asyncpg
connections from its SQLAlchemy pool through :func:`connection` and :func:`listen`, so that a
connection that may be broken is never handed back to the pool for the next caller to trip on.
No asyncpg or SQLAlchemy exception gets past these helpers to the adapters' callers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service import errors

# InternalClientError is asyncpg's own protocol state error, a subclass of neither of the others:
# a connection the server dropped while idle raises it on its next use. OSError: refused or lost
# connections, and timeouts (TimeoutError is one).
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    sa.exc.SQLAlchemyError,
    OSError,
)
# SQLSTATE classes that blame the values written, not the server or the connection: data
# exception (22: NUL in text, untranslatable character, number out of range), integrity
# constraint violation (23) and program limit exceeded (54: index row too large). Writing the
# same values again fails the same way. Everything else (lost connections, admin shutdown,
# timeouts, serialization failures, lock timeouts) may pass when retried.
DATA_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
# The longest driver reason kept: the allocator stores it in a decision and a rejection.
MAX_REASON_CHARS = 500

# What asyncpg calls with a notification: connection, server pid, channel, payload.
Listener = Callable[[Any, int, str, str], None]


@dataclass(frozen=True, slots=True)
class Translation:
    """How one adapter reports driver errors; call it as ``with translate("doing what"):``.

    Every driver error becomes ``error`` with the message ``"<doing>: <driver class>: <driver
    message>"`` (``"<doing>: <driver message>"`` without ``name_driver_error``), raised from the
    driver's exception. With ``data_error``, the errors that blame the values written (the
    SQLSTATE classes above, and the ``UnicodeEncodeError``/``OverflowError`` COPY raises in the
    client for the same values) become ``data_error`` instead, with a storable ``reason``: the
    caller may then tell a batch that can never be stored from an outage. Without it they are
    plain ``error``s and Python's own errors pass untranslated, as for any other code. An
    ``errors.IpledgerError`` raised inside (``FencedError``, say) passes through unchanged.
    """

    error: type[errors.IpledgerError]
    data_error: type[errors.ProjectionDataError] | None = None
    name_driver_error: bool = True

    @contextlib.contextmanager
    def __call__(self, doing: str) -> Iterator[None]:
        try:
            yield
        except errors.IpledgerError:
            raise
        except DRIVER_ERRORS as exc:
            if self.data_error is not None and (_sqlstate(exc) or "")[:2] in DATA_SQLSTATE_CLASSES:
                reason = _reason(exc)
                raise self.data_error(f"{doing}: {reason}", reason=reason) from exc
            if self.name_driver_error:
                raise self.error(f"{doing}: {type(exc).__name__}: {exc}") from exc
            raise self.error(f"{doing}: {exc}") from exc
        # COPY encodes its values in the client and raises Python's own errors, not asyncpg's,
        # for a str holding a lone surrogate or an int beyond the column's range (a bound
        # parameter of a statement raises asyncpg.DataError, SQLSTATE 22000, for the same values).
        except (UnicodeEncodeError, OverflowError) as exc:
            if self.data_error is None:
                raise
            reason = _reason(exc)
            raise self.data_error(f"{doing}: {reason}", reason=reason) from exc


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error: asyncpg's own, or the one SQLAlchemy's wrapper carries."""
    if isinstance(exc, sa.exc.DBAPIError):
        exc = exc.orig if isinstance(exc.orig, BaseException) else exc
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else None


def _reason(exc: BaseException) -> str:
    """The driver's message as text PostgreSQL can store, without the server's DETAIL lines.

    The message may quote the very value that could not be stored (asyncpg echoes a parameter
    it could not encode), so NUL and lone surrogates are escaped; DETAIL is left out because it
    echoes whole rows, times included, and the reason should depend on the record alone.
    """
    first_line = str(exc).split("\n", 1)[0]
    text = f"{type(exc).__name__}: {first_line}".replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:MAX_REASON_CHARS]


def engine(
    dsn: str,
    *,
    pool_size: int,
    server_settings: Mapping[str, str] | None = None,
    pre_ping: bool = True,
    ping_idle_s: float | None = None,
) -> AsyncEngine:
    """An asyncpg engine for ``dsn`` (``postgresql://...``); connects on first use.

    Pooled connections are pinged before use: connections the server dropped (restart,
    ``pg_terminate_backend``) would otherwise wait in the pool, and each would fail one request
    and cost its caller one backoff. ``pre_ping=False`` saves the ping's round trips (a
    ``BEGIN``, the ping, and the ``ROLLBACK`` of the reset on return) for a caller that runs
    idempotent statements and retries one on a new connection itself (the read side).
    ``ping_idle_s`` pings only a connection that was back in the pool for longer than that:
    the writer commits back to back under load, where three round trips of ping before each
    one-round-trip commit were most of its wait, and a connection dropped between two commits
    a moment apart costs what it cost before between the ping and the commit.
    """
    connect_args = {} if server_settings is None else {"server_settings": dict(server_settings)}
    made = create_async_engine(
        sa.make_url(dsn).set(drivername="postgresql+asyncpg"),
        pool_size=pool_size,
        pool_pre_ping=pre_ping and ping_idle_s is None,
        connect_args=connect_args,
    )
    if pre_ping and ping_idle_s is not None:
        _ping_when_idle(made, ping_idle_s)
    return made


def _ping_when_idle(made: AsyncEngine, idle_s: float) -> None:
    """Ping a pooled connection at checkout if it was idle for ``idle_s`` or more.

    A failed ping raises ``DisconnectionError``, on which the pool discards the connection and
    checks out another (SQLAlchemy's documented pessimistic disconnect handling).
    """

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_s:
            return  # new, or back a moment ago
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"the pooled connection is gone: {exc}") from exc

    sa.event.listen(made.sync_engine, "checkin", checked_in)
    sa.event.listen(made.sync_engine, "checkout", checked_out)


@contextlib.asynccontextmanager
async def connection(
    engine: AsyncEngine, translate: Translation, doing: str, *, transaction: bool
) -> AsyncIterator[Any]:
    """An asyncpg connection from ``engine``'s pool, in a transaction if asked.

    Errors are translated by ``translate``; a connection that saw any exception is discarded
    rather than returned to the pool.
    """
    with translate(doing):
        async with engine.connect() as pooled:
            try:
                raw = await pooled.get_raw_connection()
                driver: Any = raw.driver_connection
                if transaction:
                    async with driver.transaction():
                        yield driver
                else:
                    yield driver
            except BaseException:
                await discard(pooled)
                raise


async def listen(
    engine: AsyncEngine,
    translate: Translation,
    doing: str,
    channel: str,
    listener: Listener,
    *,
    no_driver: str,
) -> tuple[AsyncConnection, Any]:
    """A connection of its own, out of ``engine``'s pool for good, ``LISTEN``ing on ``channel``.

    Returns the SQLAlchemy connection (close it with :func:`close_listening`) and the asyncpg
    connection under it; ``no_driver`` is the message if the pool gives no asyncpg connection.
    """
    with translate(doing):
        pooled = await engine.connect()
        try:
            raw = await pooled.get_raw_connection()
            driver = raw.driver_connection
            if driver is None:
                raise translate.error(no_driver)
            await driver.add_listener(channel, listener)
        except BaseException:
            # Likely a connection that died with the server: keep it out of the pool.
            await discard(pooled)
            raise
    return pooled, driver


async def close_listening(
    pooled: AsyncConnection,
    driver: Any,
    channel: str,
    listener: Listener,
    *,
    log: logging.Logger,
    broke: str,
    before_close: Sequence[str] = (),
) -> None:
    """Stop a :func:`listen` connection listening, run ``before_close``, and close it.

    A connection that breaks meanwhile is discarded and ``broke`` logged at DEBUG: closing
    never raises a driver error.
    """
    if driver is not None and not driver.is_closed():
        try:
            await driver.remove_listener(channel, listener)
            for statement in before_close:
                await driver.execute(statement)
            await pooled.close()
        except DRIVER_ERRORS:
            log.debug(broke, exc_info=True)
        else:
            return
    await discard(pooled)


async def discard(pooled: AsyncConnection) -> None:
    """Close ``pooled`` without returning it to the pool; it may be broken."""
    with contextlib.suppress(sa.exc.SQLAlchemyError, OSError):
        await pooled.invalidate()
    with contextlib.suppress(sa.exc.SQLAlchemyError, OSError):
        await pooled.close()
