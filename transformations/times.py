"""Instants on the driver (plain Python datetimes): one rule for a time without a zone.

A naive datetime is a UTC instant, as everywhere in this project: the Spark session's
zone is UTC, and the command lines read an ISO time without an offset as UTC. An aware
datetime is the same instant expressed in UTC. A date stands for its midnight in UTC.
"""
from __future__ import annotations

from datetime import date, datetime, timezone


def as_utc(instant: datetime) -> datetime:
    """``instant`` as an aware UTC datetime: naive means UTC, aware is converted."""
    if instant.tzinfo is None:
        return instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc)


def utc_midnight(day: date) -> datetime:
    """The first instant of ``day`` in UTC (a range of dates is half-open in instants)."""
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
