"""When a pool runs out: the exhaustion forecast, as arithmetic over two observations of its use.

Used by the query API (``service.api``: the ``forecast`` of each pool element), and meant for
every other reader that reports headroom (``ipledger status``, the metrics): one definition of
"runs out in", so that a dashboard, the command line and the API agree. Pure: no I/O, no clock
(the caller says what "now" is), no randomness.

The model is deliberately simple and says so: the net allocation rate over a recent window (what
was taken minus what was given back, between the window's start and its end) is assumed to go
on; the element runs out when that rate has used up what is free. A window in which use did not
grow (or shrank) forecasts nothing (``None``): such a pool is not running out, and a made-up
date far in the future would only teach people to ignore the field.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass


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
