"""Request-time features: a request field combined with an as-of feature value.

Each feature has one Column definition, used by the batch tables and the training sets,
and a plain-Python twin for the HTTP serving path (one request, no Spark); a test holds
the two equal on the edge cases.
"""
from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F


def amount_to_mean_ratio(amount: Column, mean: Column) -> Column:
    """``amount / mean``: how many times the user's usual amount this one is.

    Null when either is null or the mean is 0: there is no usual amount to compare with.
    """
    # CASE WHEN evaluates the division only where the mean is non-zero (ANSI mode
    # would raise on division by zero).
    return F.when(mean != 0, amount / mean)


def amount_to_mean_ratio_value(amount: float | None, mean: float | None) -> float | None:
    """The plain-Python twin of :func:`amount_to_mean_ratio` for one request."""
    if amount is None or mean is None or mean == 0:
        return None
    return amount / mean
