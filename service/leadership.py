"""The leader loop: take a role no other instance holds, lead, and hand it over on the way out.

Run by the allocator (``PartitionAllocator.run``: the writer lease of a log partition, held
through ``ports.Projection``) and by the sync worker (``ClusterSync.run``: the sync lock of a
cluster, held through ``ports.SyncStore``). Both do the same thing, written once here:

- try to take the role; while another instance holds it, stand by, trying again every
  ``poll_s``;
- lead until stopped; when fenced (``errors.FencedError``: the role was lost, another instance
  may hold it now), stand by again at once; when leading fails with an error worth retrying,
  back off (``service.backoff``, with jitter, so standbys do not retry in step) and start over;
- once stopped after leading, give the role up, so a standby need not wait for it to expire.

Anything else (``errors.ConfigurationError``, a bug) ends the loop. What leading is, what each
process counts and what it logs stay with it, in the ``Role`` it passes; this module only
decides when each of those happens. It does no I/O of its own but waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol, TypeVar

import anyio

from service import backoff, errors

TokenT = TypeVar("TokenT")


class Role(Protocol[TokenT]):
    """One process's side of a role it may hold while no other instance does.

    ``TokenT`` is what holding the role is proved by (a lease's fencing token; ``True`` for a
    lock that needs no token).
    """

    async def try_acquire(self) -> TokenT | None:
        """Take the role if no other instance holds it: the token, or None while one does."""
        ...

    def standing_by(self, first: bool) -> None:
        """Another instance holds the role; ``first`` the first time since standing by began."""
        ...

    async def lead(self, token: TokenT, stop: anyio.Event) -> None:
        """Lead until ``stop`` is set; raise ``errors.FencedError`` once the role is lost."""
        ...

    def fenced(self, exc: errors.FencedError) -> None:
        """Leading ended because the role was lost; the loop stands by again at once."""
        ...

    def failed(self, exc: Exception, delay: float) -> None:
        """Leading (or taking the role) failed; the loop starts over in ``delay`` seconds."""
        ...

    def stepped_down(self) -> None:
        """This attempt is over (led or not, failed or not, after its backoff if any)."""
        ...

    def progress(self) -> object:
        """A value that changes whenever leading achieved something (the committed offset).

        A failure after progress is a new fault, not the same one lasting: the backoff starts
        short again instead of staying at its maximum. A constant disables that.
        """
        ...

    async def release(self, token: TokenT) -> None:
        """Give the role up at once, on stopping; raises nothing."""
        ...


@dataclass(frozen=True, slots=True)
class Pacing:
    """How often a standby tries to take the role, and how a failing leader backs off."""

    poll_s: float
    backoff_initial_s: float
    backoff_max_s: float


async def hold(
    role: Role[TokenT],
    stop: anyio.Event,
    pacing: Pacing,
    *,
    retry_on: tuple[type[Exception], ...],
) -> None:
    """Lead ``role``, or stand by for it, until ``stop`` is set.

    ``retry_on`` are the failures worth starting over after a backoff (the log's, the
    database's); ``errors.FencedError`` is always handled, and any other exception ends the
    loop (after ``role.stepped_down``).
    """
    failures = 0
    while not stop.is_set():
        token: TokenT | None = None
        progress = role.progress()
        try:
            token = await _stand_by(role, stop, pacing.poll_s)
            if token is None:
                return
            await role.lead(token, stop)
            failures = 0
        except errors.FencedError as exc:
            role.fenced(exc)
        except retry_on as exc:
            if role.progress() != progress:
                failures = 0
            failures += 1
            delay = backoff.delay(
                failures,
                initial_s=pacing.backoff_initial_s,
                max_s=pacing.backoff_max_s,
                jitter=random.uniform(0.5, 1.0),
            )
            role.failed(exc, delay)
            with anyio.move_on_after(delay):
                await stop.wait()
        finally:
            role.stepped_down()
        if stop.is_set() and token is not None:
            await role.release(token)


async def _stand_by(role: Role[TokenT], stop: anyio.Event, poll_s: float) -> TokenT | None:
    """The token once the role is taken, or None if ``stop`` was set first."""
    first = True
    while not stop.is_set():
        token = await role.try_acquire()
        if token is not None:
            return token
        role.standing_by(first)
        first = False
        with anyio.move_on_after(poll_s):
            await stop.wait()
    return None
