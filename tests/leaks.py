"""No test may leak: each ends with no asyncio task and no child process of its own still running.

Registered through ``pytest_plugins`` in ``tests/conftest.py``; an autouse fixture checks every
test, and a test that leaks fails (an error at its teardown) naming what it left behind:

- **tasks**: an async test (``pytest.mark.anyio``) runs on an event loop that this plugin keeps
  open from before the test's first fixture until after its last. Once they are all torn down,
  any task still pending on that loop (an aiokafka client or an asyncpg pool never closed, a
  task started with ``asyncio.create_task`` and never awaited) is a leak. Without the check,
  anyio's runner would cancel such tasks silently when it closes the loop.
- **processes**: a child process of the pytest process (of any of its threads) that was not
  there when the test began and is still running when it ends (a zombie, exited but not yet
  reaped, is not running). Each is killed after it is reported, so it cannot disturb the next
  test. The session's servers are not the test's: processes started while a fixture of a
  wider scope than one test was set up (the session's PostgreSQL, Kafka, etcd and API server
  of ``tests/harness``) and those such a fixture's value reports through a ``pids`` attribute
  (the Kafka and Kubernetes harnesses, whose servers a test may restart) are left alone.

Cheap enough for every test: the child processes are read from
``/proc/self/task/*/children`` (one small file per thread; on Linux without it, one pass over
``/proc``; elsewhere the process check is off), the tasks with one call into the loop. The
loop is held open through ``anyio.pytest_plugin.get_runner``, the plugin's own way to share
one runner among a test's fixtures; tests/unit/test_leak_check.py fails if that stops working.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from anyio import pytest_plugin as anyio_plugin

from tests import waiting

#: Seconds a process the test has just signalled may take to exit before it counts as leaked.
EXIT_GRACE_S = 2.0

# What fixtures wider than one test started, and their values (which may report ``pids``).
_shared_pids: set[int] = set()
_shared_values: list[object] = []


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    if fixturedef.scope == "function":
        return (yield)
    before = children()
    try:
        value = yield
    finally:
        _shared_pids.update(children() - before)
    _shared_values.append(value)
    return value


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    before = children()
    tasks: list[str] = []
    if "anyio_backend" in request.fixturenames:
        with _event_loop(request) as loop:
            # The runner's own task, which runs every fixture and the test, is there from here on.
            own = asyncio.all_tasks(loop)
            yield
            tasks = _pending_tasks(loop, own)
    else:
        yield
    processes = _leaked_processes(before)
    problems = [f"task still pending: {task}" for task in tasks]
    problems += [f"child process still running: {description}" for description in processes]
    if problems:
        pytest.fail("the test leaked\n  " + "\n  ".join(problems), pytrace=False)


@contextlib.contextmanager
def _event_loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    """Hold anyio's test runner, and so the test's event loop, open around the test.

    The async fixtures and the test take holds of their own on the same runner; the loop
    closes when the last hold goes, which is this one, after the check.
    """
    backend, options = anyio_plugin.extract_backend_and_options(
        request.getfixturevalue("anyio_backend")
    )
    with anyio_plugin.get_runner(backend, options) as runner:
        runner.run_fixture(_started, {})
        yield runner.get_loop()  # type: ignore[attr-defined]


async def _started() -> None:
    """Nothing: running it starts the runner's task."""


def _pending_tasks(loop: asyncio.AbstractEventLoop, own: set[asyncio.Task[Any]]) -> list[str]:
    # A few turns of the loop let tasks that are already finishing (cancelled, their last
    # callback scheduled) finish.
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    return [_describe_task(task) for task in asyncio.all_tasks(loop) - own]


def _describe_task(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", repr(coro))
    # The task's own coroutine, where it waits (the oldest frame of its stack).
    stack = task.get_stack()
    where = f" at {stack[0].f_code.co_filename}:{stack[0].f_lineno}" if stack else ""
    return f"{task.get_name()} running {name}{where}"


def _leaked_processes(before: set[int]) -> list[str]:
    def mine() -> set[int]:
        new = children() - before - _shared_pids
        for value in _shared_values:
            new -= set(getattr(value, "pids", ()))
        return {pid for pid in new if is_running(pid)}

    if not mine():
        return []
    # One the test has just signalled may still be on its way out.
    with contextlib.suppress(waiting.TimedOutError):
        waiting.until_blocking(
            lambda: not mine(), timeout=EXIT_GRACE_S, what="the processes to exit", interval=0.05
        )
    leaked = sorted(mine())
    descriptions = [f"pid {pid}: {_command_line(pid)}" for pid in leaked]
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return descriptions


def children() -> set[int]:
    """The pids of this process's children, zombies among them (empty without ``/proc``)."""
    me = os.getpid()
    if not os.path.isdir(f"/proc/{me}"):
        return set()
    if not os.path.exists(f"/proc/{me}/task/{me}/children"):
        return children_by_parent()
    base = f"/proc/{me}/task/"
    found: set[int] = set()
    for thread in os.listdir(base):
        try:
            with open(f"{base}{thread}/children", "rb") as listing:
                found.update(int(pid) for pid in listing.read().split())
        except FileNotFoundError:
            pass  # the thread ended meanwhile; its children went to another of this process's
    return found


def children_by_parent() -> set[int]:
    # A kernel without CONFIG_PROC_CHILDREN: the processes whose parent is this one.
    me = str(os.getpid())
    return {
        int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _stat(entry)[1:2] == [me]
    }


def is_running(pid: int) -> bool:
    """Whether the process ``pid`` exists and is not a zombie."""
    fields = _stat(str(pid))
    return bool(fields) and fields[0] not in ("Z", "X")


def _stat(pid: str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: state, parent pid, ..."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return []
    return text.rpartition(")")[2].split()


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except (FileNotFoundError, ProcessLookupError):
        return "(gone)"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:200]
