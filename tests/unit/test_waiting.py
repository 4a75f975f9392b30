"""The tests' wait-for-condition helper (tests/waiting.py) waits, and fails saying what for."""

from __future__ import annotations

import threading

import anyio
import pytest

from tests import waiting


@pytest.mark.anyio
async def test_until_returns_once_a_condition_set_by_another_task_holds() -> None:
    done = anyio.Event()

    async def later() -> None:
        await anyio.sleep(0.05)
        done.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(later)
        taken = await waiting.until(done.is_set, timeout=5, what="the event")
    assert 0.04 <= taken < 5


@pytest.mark.anyio
async def test_until_awaits_an_async_condition() -> None:
    polls = 0

    async def third_time() -> bool:
        nonlocal polls
        polls += 1
        await anyio.sleep(0)
        return polls == 3

    await waiting.until(third_time, timeout=5, what="the third poll", interval=0.001)
    assert polls == 3


@pytest.mark.anyio
async def test_until_fails_at_the_deadline_naming_what_it_waited_for() -> None:
    polls = 0

    def never() -> bool:
        nonlocal polls
        polls += 1
        return False

    started = anyio.current_time()
    with pytest.raises(waiting.TimedOutError, match=r"^timed out after 0.2s waiting for the moon$"):
        await waiting.until(never, timeout=0.2, what="the moon", interval=0.01)
    assert 0.2 <= anyio.current_time() - started < 2
    assert polls > 1, "it polled"


@pytest.mark.anyio
async def test_until_cancels_a_hanging_condition_at_the_deadline_and_describes_late() -> None:
    position = 0

    async def hangs() -> bool:
        nonlocal position
        position = 7
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    with pytest.raises(waiting.TimedOutError, match=r"offset 10 \(at 7\)$"):
        await waiting.until(hangs, timeout=0.1, what=lambda: f"offset 10 (at {position})")


@pytest.mark.anyio
async def test_until_lets_the_conditions_own_failure_through() -> None:
    def broken() -> bool:
        raise ValueError("the condition broke")

    with pytest.raises(ValueError, match="the condition broke"):
        await waiting.until(broken, timeout=5, what="nothing")


def test_until_blocking_waits_for_another_thread() -> None:
    done = threading.Event()
    timer = threading.Timer(0.05, done.set)
    timer.start()
    try:
        taken = waiting.until_blocking(done.is_set, timeout=5, what="the timer")
    finally:
        timer.cancel()
        timer.join()
    assert 0.04 <= taken < 5


def test_until_blocking_fails_at_the_deadline_naming_what_it_waited_for() -> None:
    with pytest.raises(
        waiting.TimedOutError, match=r"^timed out after 0.1s waiting for a pid to go$"
    ):
        waiting.until_blocking(lambda: False, timeout=0.1, what=lambda: "a pid to go")
    assert issubclass(waiting.TimedOutError, AssertionError), "pytest reports it as a failure"
