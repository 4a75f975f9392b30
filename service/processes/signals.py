"""How every long-running process is told to stop: SIGINT or SIGTERM sets its stop event.

Used by ``service.processes.allocator`` and ``service.processes.sync``. A signal does not cancel
anything: it sets the event the process's loops watch, so that each finishes what it has in
flight (the allocator its batch, the sync worker its writes and progress) and returns.
"""

from __future__ import annotations

import signal

import anyio


async def stop_on_signal(stop: anyio.Event) -> None:
    """Set ``stop`` at the first SIGINT or SIGTERM, then return."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return
