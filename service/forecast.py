"""When a pool runs out: the exhaustion forecast, as arithmetic over two observations of its use.

Used by the query API (``service.api``: the ``forecast`` of each pool element) and ``ipledger
status``, and meant for every other reader that reports headroom (the metrics): one definition
of "runs out in", so that a dashboard, the command line and the API agree. ``forecast`` is pure:
no I/O, no clock (the caller says what "now" is), no randomness. ``pool_forecasts`` picks the
window's two observations for a pool through ``ports.ProjectionReader`` (the only I/O here, and
through the read port only), so that the API and ``status`` choose the window the same way.

The model is deliberately simple and says so: the net allocation rate over a recent window (what
was taken minus what was given back, between the window's start and its end) is assumed to go
on; the element runs out when that rate has used up what is free. A window in which use did not
grow (or shrank) forecasts nothing (``None``): such a pool is not running out, and a made-up
date far in the future would only teach people to ignore the field.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from service import ports


@dataclass(frozen=True, slots=True)
class Forecast:
    """The net allocation rate over the window and, when it is positive, when the free part ends.

    ``rate_per_s``: units (node CIDRs, addresses) taken per second, net of releases; negative
    when use shrank. ``seconds_left`` and ``exhausted_at`` are None unless the rate is positive
    (``seconds_left`` is 0 when nothing is free any more).
    """

    rate_per_s: float
    seconds_left: float | None
    exhausted_at: datetime.datetime | None


def forecast(
    *,
    used_then: int,
    used_now: int,
    free_now: int,
    elapsed: datetime.timedelta,
    now: datetime.datetime,
) -> Forecast:
    """The forecast from the use at the start of a window (``used_then``) and at its end.

    ``elapsed`` is the window's length (the time between the two observations; callers shorten
    it when the log is younger than the window they asked for); ``now`` is the end of the
    window, from which ``exhausted_at`` counts. A window of zero length forecasts nothing.
    """
    seconds = elapsed.total_seconds()
    if seconds <= 0:
        return Forecast(rate_per_s=0.0, seconds_left=None, exhausted_at=None)
    rate = (used_now - used_then) / seconds
    if rate <= 0:
        return Forecast(rate_per_s=rate, seconds_left=None, exhausted_at=None)
    left = max(free_now, 0) / rate
    # Beyond datetime's range (a tiny rate against a huge IPv6 element) is "not in any
    # foreseeable time": no date, but the seconds still say how far.
    try:
        at: datetime.datetime | None = now + datetime.timedelta(seconds=left)
    except OverflowError:
        at = None
    return Forecast(rate_per_s=rate, seconds_left=left, exhausted_at=at)


def _decided_at(decision: ports.CommittedDecision) -> datetime.datetime:
    return decision.event_time or decision.log_time or decision.applied_at


async def pool_forecasts(
    reader: ports.ProjectionReader,
    *,
    cluster: str,
    partition: int,
    at: int,
    elements: tuple[ports.PoolElementUse, ...],
    window: datetime.timedelta,
) -> tuple[Forecast, ...] | None:
    """The forecast of each of ``elements`` (``cluster``'s pool use at offset ``at`` of its
    ``partition``), at the net rate of the ``window`` that ends at the record at ``at``.

    The window ends at that record's time (the event's, else the log's), not at the clock: a
    quiet log is not a shrinking pool. It starts at the last record applied ``window`` before;
    a cluster younger than the window is measured from its first decision (from zero use), over
    the shorter time. None when the partition has no record at or after ``at``.
    """
    decided = await reader.decisions(partition, at, 1)
    if not decided:
        return None
    end = _decided_at(decided[0])
    start = await reader.applied_offset(partition, at_time=end - window)
    then = None if start is None else await reader.cluster_at(cluster, start)
    elapsed = window
    used_then: dict[ports.Network, int] = {}
    if then is None:
        first = await reader.cluster_decisions(cluster, 0, at, 1)
        began = _decided_at(first[0]) if first else end
        elapsed = min(window, max(end - began, datetime.timedelta(0)))
    else:
        used_then = {element.cidr: element.used for element in then.elements}
    return tuple(
        forecast(
            used_then=used_then.get(element.cidr, 0),
            used_now=element.used,
            free_now=element.free,
            elapsed=elapsed,
            now=end,
        )
        for element in elements
    )
