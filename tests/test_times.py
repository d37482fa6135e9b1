"""transformations.times: the one rule for driver-side instants (naive means UTC)."""
from datetime import date, datetime, timedelta, timezone

from transformations.times import as_utc, utc_midnight


def test_a_naive_time_is_read_as_utc():
    assert as_utc(datetime(2026, 3, 29, 1, 30)) == datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)


def test_an_aware_time_is_the_same_instant_in_utc():
    berlin_summer = timezone(timedelta(hours=2))
    converted = as_utc(datetime(2026, 3, 29, 3, 30, tzinfo=berlin_summer))
    assert converted.tzinfo is timezone.utc
    assert converted == datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)


def test_a_day_starts_at_midnight_utc():
    assert utc_midnight(date(2026, 12, 3)) == datetime(2026, 12, 3, tzinfo=timezone.utc)
