"""The leak check (tests/leaks.py) fails a test that leaves a task or a process running, only such.

One pytest session of its own (pytester, in a subprocess) runs tests that leak an asyncio task
(from the test and from an async fixture), a child process (in pytest's session and in one of
its own), and tests that do not: tasks awaited or cancelled, processes waited for, a
session-scoped fixture's server, and one such server restarted during a test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import leaks

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
import sys

import pytest

pytest_plugins = ["tests.leaks"]


def pytest_configure(config):
    sys.modules["tests.leaks"].EXIT_GRACE_S = 0.2


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""

TESTS = """
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]
PIDS = Path(os.environ["LEAK_CHECK_PIDS"])
# Held, so that no Popen is collected while its process runs (Python would warn of that).
STARTED = []


def sleeper(**options):
    process = subprocess.Popen(SLEEPER, **options)
    STARTED.append(process)
    with PIDS.open("a") as pids:
        pids.write(f"{process.pid}\\n")
    return process


@pytest.mark.anyio
async def test_leaks_a_task():
    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="forgotten")


@pytest.fixture
async def leaky():
    asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="fixture-forgotten")
    yield


@pytest.mark.anyio
async def test_uses_a_fixture_that_leaks_a_task(leaky):
    pass


@pytest.fixture
async def tidy():
    task = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    yield
    task.cancel()


@pytest.mark.anyio
async def test_awaits_or_cancels_its_tasks(tidy):
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(anyio.sleep, 0.01)
    # Cancelled and not awaited: it ends at the loop's next turn.
    asyncio.get_running_loop().create_task(asyncio.sleep(3600)).cancel()


def test_leaks_a_process():
    sleeper()


@pytest.mark.anyio
async def test_leaks_a_process_in_a_session_of_its_own():
    sleeper(start_new_session=True)


def test_waits_for_its_processes():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    process = sleeper()
    process.kill()
    process.wait()


class Server:
    def __init__(self):
        self.process = subprocess.Popen(SLEEPER, start_new_session=True)

    @property
    def pids(self):
        return frozenset({self.process.pid})

    def restart(self):
        self.stop()
        self.process = subprocess.Popen(SLEEPER, start_new_session=True)

    def stop(self):
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="session")
def plain_server():
    process = subprocess.Popen(SLEEPER)
    yield process
    process.kill()
    process.wait()


@pytest.fixture(scope="session")
def server():
    started = Server()
    yield started
    started.stop()


def test_uses_the_sessions_servers(plain_server, server):
    assert plain_server.poll() is None


@pytest.fixture
def late(request):
    return request.getfixturevalue("server")


def test_restarts_the_sessions_server(late):
    late.restart()
"""

LEAKING = {
    "test_leaks_a_task",
    "test_uses_a_fixture_that_leaks_a_task",
    "test_leaks_a_process",
    "test_leaks_a_process_in_a_session_of_its_own",
}
CLEAN = {
    "test_awaits_or_cancels_its_tasks",
    "test_waits_for_its_processes",
    "test_uses_the_sessions_servers",
    "test_restarts_the_sessions_server",
}


@pytest.mark.skipif(sys.platform != "linux", reason="the process check reads Linux's /proc")
def test_a_test_that_leaks_fails_and_one_that_does_not_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = pytester.path / "pids"
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("LEAK_CHECK_PIDS", str(pids))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=TESTS)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-rA")

    output = result.stdout.str()
    errored = set(re.findall(r"^ERROR test_inner\.py::(\w+)", output, re.MULTILINE))
    passed = set(re.findall(r"^PASSED test_inner\.py::(\w+)", output, re.MULTILINE))
    assert errored == LEAKING, output
    assert passed == LEAKING | CLEAN, output  # a leak fails the teardown, not the test itself
    assert "task still pending: forgotten running sleep" in output
    assert "task still pending: fixture-forgotten running Event.wait" in output
    reported = re.findall(r"child process still running: pid (\d+): (.*)$", output, re.MULTILINE)
    assert len({pid for pid, _ in reported}) == 2, output
    assert all(command.endswith("time.sleep(3600)") for _, command in reported), output
    # Every leaked process was killed, the ones the tests started themselves included.
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 3
    assert not [pid for pid in started if leaks.is_running(pid)]


@pytest.mark.skipif(sys.platform != "linux", reason="the process check reads Linux's /proc")
def test_both_ways_of_finding_the_children_agree() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process.pid in leaks.children()
        assert leaks.children_by_parent() == leaks.children()
        assert leaks.is_running(process.pid)
    finally:
        process.kill()
        process.wait()
    assert not leaks.is_running(process.pid)
