"""Waiting for a condition with a deadline: the one way the tests synchronise with what they start.

A test that needs something to have happened (a worker to commit an offset, a lock to come
free, a process to be gone) polls a condition until it holds and fails at a deadline with a
message naming what it waited for. Sleeping a fixed time and hoping is never the answer: it is
slow when the machine is fast and flaky when it is loaded, and it fails without saying why.

:func:`until` is for async tests (the condition may be a plain or an async callable);
:func:`until_blocking` is for synchronous code watching other processes. Every call names its
own timeout: how long a thing may take is the call site's knowledge, not a default here.

The harness's start-up probes (tests/harness/kafka.py, kube.py) keep loops of their own: they
share one deadline across several steps, watch the server process die meanwhile, and raise the
harness's own error types, which the fault tests catch.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import anyio

#: What was awaited, for the failure message; a callable is asked only when the wait fails,
#: so it may describe the state at the deadline (a position reached, a log's last lines).
What = str | Callable[[], str]


class TimedOutError(AssertionError):
    """A condition did not hold by its deadline.

    An ``AssertionError``, so pytest reports a failed test (not an error in the test's code)
    and shows the message.
    """


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float,
    what: What,
    interval: float = 0.01,
) -> float:
    """Poll ``condition`` every ``interval`` seconds until it is true; return the seconds taken.

    Raises :class:`TimedOutError` naming ``what`` once ``timeout`` seconds have passed, including
    when the condition itself hangs (an async condition is cancelled at the deadline). An
    exception raised by the condition ends the wait at once.
    """
    started = anyio.current_time()
    with anyio.move_on_after(timeout):
        while True:
            answer = condition()
            if await answer if inspect.isawaitable(answer) else answer:
                return anyio.current_time() - started
            await anyio.sleep(interval)
    raise TimedOutError(_message(timeout, what))


def until_blocking(
    condition: Callable[[], bool], *, timeout: float, what: What, interval: float = 0.01
) -> float:
    """:func:`until` for synchronous code: the thread sleeps between polls."""
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimedOutError(_message(timeout, what))
        time.sleep(interval)
    return time.monotonic() - started


def _message(timeout: float, what: What) -> str:
    return f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}"
