"""How fast the sync worker may talk to an API server: the token bucket and the backoff.

Used by ``service.sync.mirror`` (every request takes a slot of the cluster's ``TokenBucket``; a
retryable failure pauses it for ``backoff_delay``) and by ``service.sync.worker`` (backoff of
failed resyncs and progress writes). Knows nothing of nodes, CiliumNodes or PostgreSQL; its only
I/O is sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio

from service import backoff, errors
from service.sync import settings as sync_settings


class TokenBucket:
    """Requests per second with a burst, shared by every request of one API server.

    ``reserve`` hands out slots in call order: the tokens may go negative, each caller then waits
    its turn, so concurrent writers are served fairly without polling. ``pause_until`` (after a
    429 or a failure) stops everyone until then and empties the bucket, so the server that asked
    for a pause does not get a burst the moment it ends. ``rate`` 0 means no limit (pauses still
    apply).
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate < 0 or burst < 1:
            raise errors.ConfigurationError("the rate must be >= 0 and the burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = -math.inf

    def reserve(self) -> float:
        """Take a slot; the seconds to wait before using it (0: now)."""
        now = self._clock()
        pause = max(0.0, self._paused_until - now)
        if self.rate == 0:
            return pause
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        self._tokens -= 1
        deficit = max(0.0, -self._tokens) / self.rate
        return max(0.0, self._stamp - now) + deficit

    def pause_until(self, moment: float) -> None:
        """Hand out nothing before ``moment`` (a clock reading) and restart with no tokens."""
        if moment <= self._paused_until:
            return
        self._paused_until = moment
        if self.rate:
            now = self._clock()
            if now > self._stamp:
                refilled = self._tokens + (now - self._stamp) * self.rate
                self._tokens = min(float(self.burst), refilled)
            # Reservations already handed out stay owed; no new token accrues before ``moment``.
            self._tokens = min(self._tokens, 0.0)
            self._stamp = max(self._stamp, moment)

    async def take(self) -> None:
        """Wait for a slot, and for any pause that began while waiting."""
        wait = self.reserve()
        if wait > 0:
            await anyio.sleep(wait)
        while (left := self._paused_until - self._clock()) > 0:
            await anyio.sleep(left)


def backoff_delay(
    failures: int,
    retry_after: float | None,
    settings: sync_settings.SyncSettings,
    jitter: float = 1.0,
) -> float:
    """Seconds to pause after ``failures`` failures in a row (1 = the first).

    ``service.backoff.delay`` from ``backoff_initial_s`` up to ``backoff_max_s``, scaled by
    ``jitter`` (callers pass a random factor in [0.5, 1] so that many workers do not retry in
    step), and never less than the server's ``Retry-After`` (itself capped at
    ``retry_after_max_s``).
    """
    exponential = backoff.delay(
        failures,
        initial_s=settings.backoff_initial_s,
        max_s=settings.backoff_max_s,
        jitter=jitter,
    )
    asked = min(retry_after, settings.retry_after_max_s) if retry_after is not None else 0.0
    return max(exponential, asked)
