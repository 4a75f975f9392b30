"""The leader loop (``service.leadership``) and the backoff schedule (``service.backoff``).

The loop runs against a scripted ``Role`` that records what the loop asked of it, in order, so
each test states the whole conversation: when it stands by, leads, backs off, and releases. The
allocator's and the sync worker's own roles are covered where they run for real
(tests/e2e/test_standby.py, tests/e2e/test_faults.py, tests/integration/test_sync.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import pytest

from service import backoff, errors, leadership

pytestmark = pytest.mark.anyio
# No waiting: the poll and the backoff are too short to matter, and the script sets ``stop``.
PACING = leadership.Pacing(poll_s=0.0, backoff_initial_s=0.001, backoff_max_s=0.004)


class ScriptedRole:
    """A role whose answers come from scripts; ``stop`` is set once the lead script runs out."""

    def __init__(
        self,
        stop: anyio.Event,
        *,
        acquire: list[int | Exception | None],
        lead: list[Exception | CommitThenFail | None],
        stop_when_failed: bool = False,
    ) -> None:
        self.stop = stop
        self._stop_when_failed = stop_when_failed
        self._acquire: Iterator[int | Exception | None] = iter(acquire)
        self._lead: Iterator[Exception | CommitThenFail | None] = iter(lead)
        self.calls: list[tuple[object, ...]] = []
        self.delays: list[float] = []
        self.committed = 0

    async def try_acquire(self) -> int | None:
        answer = next(self._acquire, None)
        self.calls.append(("try_acquire", answer))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def standing_by(self, first: bool) -> None:
        self.calls.append(("standing_by", first))

    async def lead(self, token: int, stop: anyio.Event) -> None:
        self.calls.append(("lead", token))
        outcome = next(self._lead, None)
        if outcome is None:
            stop.set()
            return
        if isinstance(outcome, CommitThenFail):
            self.committed += 1
            raise outcome.error
        raise outcome

    def fenced(self, exc: errors.FencedError) -> None:
        self.calls.append(("fenced",))

    def failed(self, exc: Exception, delay: float) -> None:
        self.calls.append(("failed", type(exc).__name__))
        self.delays.append(delay)
        if self._stop_when_failed:
            self.stop.set()

    def stepped_down(self) -> None:
        self.calls.append(("stepped_down",))

    def progress(self) -> object:
        return self.committed

    async def release(self, token: int) -> None:
        self.calls.append(("release", token))


@dataclass(frozen=True)
class CommitThenFail:
    """A lead that made progress before failing with ``error``."""

    error: Exception


async def hold(role: ScriptedRole) -> None:
    with anyio.fail_after(10):
        await leadership.hold(
            role, role.stop, PACING, retry_on=(errors.LogError, errors.ProjectionError)
        )


async def test_a_standby_announces_once_leads_when_free_and_releases_on_stop() -> None:
    stop = anyio.Event()
    role = ScriptedRole(stop, acquire=[None, None, 7], lead=[None])

    await hold(role)

    assert role.calls == [
        ("try_acquire", None),
        ("standing_by", True),
        ("try_acquire", None),
        ("standing_by", False),
        ("try_acquire", 7),
        ("lead", 7),
        ("stepped_down",),
        ("release", 7),
    ]


async def test_a_fenced_leader_stands_by_again_at_once_and_releases_only_its_last_token() -> None:
    stop = anyio.Event()
    role = ScriptedRole(stop, acquire=[1, None, 2], lead=[errors.FencedError("lost"), None])

    await hold(role)

    assert role.calls == [
        ("try_acquire", 1),
        ("lead", 1),
        ("fenced",),
        ("stepped_down",),
        ("try_acquire", None),
        ("standing_by", True),
        ("try_acquire", 2),
        ("lead", 2),
        ("stepped_down",),
        ("release", 2),
    ]
    assert role.delays == []


async def test_failures_back_off_longer_each_time_up_to_the_cap() -> None:
    stop = anyio.Event()
    failures: list[Exception | CommitThenFail | None] = [errors.LogError("down")] * 4
    role = ScriptedRole(stop, acquire=[1, 2, 3, 4, 5], lead=[*failures, None])

    await hold(role)

    assert [c for c in role.calls if c[0] == "failed"] == [("failed", "LogError")] * 4
    # Exponential with a jitter factor in [0.5, 1]: 1, 2, 4, 4 ms before it.
    for delay, full in zip(role.delays, [0.001, 0.002, 0.004, 0.004], strict=True):
        assert full * 0.5 <= delay <= full
    # The failure is over before the backoff: stepped down after it, and released at the end.
    assert role.calls[-2:] == [("stepped_down",), ("release", 5)]


async def test_a_failure_after_progress_backs_off_short_again() -> None:
    stop = anyio.Event()
    lead: list[Exception | CommitThenFail | None] = [
        errors.ProjectionError("down"),
        errors.ProjectionError("down"),
        errors.ProjectionError("down"),
        CommitThenFail(errors.ProjectionError("down again")),
        None,
    ]
    role = ScriptedRole(stop, acquire=[1, 2, 3, 4, 5], lead=lead)

    await hold(role)

    # The fourth failure follows a commit: a new fault, backed off as the first one was.
    assert 0.002 <= role.delays[2] <= 0.004
    assert 0.0005 <= role.delays[3] <= 0.001


async def test_an_error_not_worth_retrying_ends_the_loop_without_releasing() -> None:
    stop = anyio.Event()
    role = ScriptedRole(stop, acquire=[1], lead=[errors.ConfigurationError("wrong count")])

    with pytest.raises(errors.ConfigurationError):
        await hold(role)

    assert role.calls == [("try_acquire", 1), ("lead", 1), ("stepped_down",)]


async def test_stopped_while_backing_off_from_a_failure_to_take_the_role_releases_nothing() -> None:
    stop = anyio.Event()
    unreachable = errors.ProjectionError("no database")
    role = ScriptedRole(stop, acquire=[unreachable], lead=[], stop_when_failed=True)

    await hold(role)

    assert role.calls == [
        ("try_acquire", unreachable),
        ("failed", "ProjectionError"),
        ("stepped_down",),
    ]


async def test_stopped_while_backing_off_from_a_failed_lead_releases_the_role() -> None:
    stop = anyio.Event()
    role = ScriptedRole(stop, acquire=[3], lead=[errors.LogError("down")], stop_when_failed=True)

    await hold(role)

    assert role.calls == [
        ("try_acquire", 3),
        ("lead", 3),
        ("failed", "LogError"),
        ("stepped_down",),
        ("release", 3),
    ]


def test_the_backoff_doubles_from_the_first_failure_up_to_its_cap() -> None:
    delays = [backoff.delay(n, initial_s=0.2, max_s=5.0) for n in range(1, 8)]

    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff.delay(3, initial_s=0.2, max_s=5.0, jitter=0.5) == 0.4
    assert backoff.delay(9, initial_s=0.2, max_s=5.0, jitter=0.5) == 2.5
