"""The exhaustion forecast (service.forecast): the rate over a window, and when it runs out."""

from __future__ import annotations

import datetime

from service import forecast

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def test_a_growing_element_runs_out_when_the_rate_has_used_what_is_free() -> None:
    result = forecast.forecast(used_then=100, used_now=200, free_now=300, elapsed=DAY, now=NOW)
    assert result.rate_per_s == 100 / DAY.total_seconds()
    assert result.seconds_left == 3 * DAY.total_seconds()
    assert result.exhausted_at == NOW + 3 * DAY


def test_an_element_that_did_not_grow_forecasts_nothing() -> None:
    for used_then in (200, 250):
        result = forecast.forecast(
            used_then=used_then, used_now=200, free_now=300, elapsed=DAY, now=NOW
        )
        assert (result.seconds_left, result.exhausted_at) == (None, None)
        assert result.rate_per_s <= 0


def test_a_full_element_that_still_grows_is_out_now() -> None:
    result = forecast.forecast(used_then=0, used_now=10, free_now=0, elapsed=DAY, now=NOW)
    assert (result.seconds_left, result.exhausted_at) == (0, NOW)


def test_an_empty_window_forecasts_nothing() -> None:
    result = forecast.forecast(
        used_then=0, used_now=10, free_now=5, elapsed=datetime.timedelta(0), now=NOW
    )
    assert result == forecast.Forecast(rate_per_s=0.0, seconds_left=None, exhausted_at=None)


def test_a_date_beyond_the_calendar_keeps_the_seconds() -> None:
    result = forecast.forecast(used_then=0, used_now=1, free_now=2**100, elapsed=DAY, now=NOW)
    assert result.exhausted_at is None
    assert result.seconds_left is not None and result.seconds_left > 1e30
