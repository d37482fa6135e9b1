"""Great Expectations suites for the raw events and for every feature table.

Suites are plain ``gx.ExpectationSuite`` objects built by functions, so the checks follow
the specs (``transformations.schemas`` and ``FeatureTable``) instead of being written out
by hand per table. :func:`expectations.runner.validate` runs one against a Spark DataFrame.

Instants: pass timezone-aware datetimes (a naive one is taken as UTC, the project's
convention). GX compares a bound with the value Spark returns to the driver, and PySpark
returns timestamps as *naive* datetimes in the driver process's local zone; an aware
bound makes GX raise ``TypeError`` inside the expectation. :func:`_driver_local_naive`
converts the bound to that same form, so the comparison is right in any ``TZ``.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import great_expectations as gx
import great_expectations.expectations as gxe

from transformations import schemas
from transformations.tables import FeatureTable
from transformations.times import as_utc

# Defaults for the raw-event checks; each can be overridden per call.
MAX_TRANSACTION_AMOUNT = 1_000_000.0  # one payment above this is a unit or parsing error
FUTURE_TOLERANCE = timedelta(minutes=5)  # producer clocks may run a little ahead
CURRENCIES = schemas.CURRENCIES

EVENT_ID_COLUMNS = schemas.EVENT_ID_COLUMNS


def raw_events_suite(
    event_type: str,
    now: datetime,
    *,
    future_tolerance: timedelta = FUTURE_TOLERANCE,
    max_amount: float = MAX_TRANSACTION_AMOUNT,
    currencies: tuple[str, ...] = CURRENCIES,
) -> gx.ExpectationSuite:
    """The suite for one raw event stream (``schemas.EVENT_TYPES``) as of ``now``."""
    if event_type not in schemas.SCHEMAS:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(schemas.EVENT_TYPES)}")
    schema = schemas.SCHEMAS[event_type]
    latest_allowed = _driver_local_naive(now + future_tolerance)

    expectations: list[gxe.Expectation] = [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    # Every field the schema declares non-nullable: ids, keys, amounts, times.
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=field.name)
                     for field in schema.fields if not field.nullable]
    expectations += [
        gxe.ExpectColumnValuesToBeUnique(column=EVENT_ID_COLUMNS[event_type]),
        # The newest event may not lie in the future (beyond clock skew).
        gxe.ExpectColumnMaxToBeBetween(column="event_time", max_value=latest_allowed),
    ]
    if event_type == schemas.TRANSACTIONS:
        expectations += [
            gxe.ExpectColumnValuesToBeBetween(column="amount", min_value=0.0, max_value=max_amount),
            gxe.ExpectColumnValuesToBeInSet(column="currency", value_set=list(currencies)),
            gxe.ExpectColumnValuesToBeInSet(column="channel", value_set=list(schemas.CHANNELS)),
        ]
    elif event_type == schemas.ACTIVITY:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(column="activity_type", value_set=list(schemas.ACTIVITY_TYPES)))
    elif event_type == schemas.CHARGEBACKS:
        # A chargeback arrives after the transaction it disputes.
        expectations.append(gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="event_time", column_B="transaction_time", or_equal=True))
    return gx.ExpectationSuite(name=f"raw_events.{event_type}", expectations=expectations)


def feature_table_suite(
    table: FeatureTable,
    expected_row_count: int | tuple[int, int] | None,
    newest_at_least: datetime | None,
) -> gx.ExpectationSuite:
    """The suite for one computed feature table.

    ``expected_row_count``: the exact count (e.g. the distinct (entity, instant) pairs of
    the input events), an inclusive ``(min, max)`` range, or None for "at least one row".
    ``newest_at_least``: the newest ``timestamp_column`` value must be at or after this
    instant (freshness: pass the end of the computed range minus a tolerance), or None to
    skip the check.
    """
    key = [table.entity_column, table.timestamp_column]
    expectations: list[gxe.Expectation] = [
        # Exactly the declared columns: a missing or stray column fails here, by name.
        gxe.ExpectTableColumnsToMatchSet(column_set=table.columns, exact_match=True),
        gxe.ExpectColumnValuesToNotBeNull(column=table.entity_column),
        gxe.ExpectColumnValuesToNotBeNull(column=table.timestamp_column),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=key),
        _row_count_expectation(expected_row_count),
    ]
    if newest_at_least is not None:
        expectations.append(gxe.ExpectColumnMaxToBeBetween(
            column=table.timestamp_column, min_value=_driver_local_naive(newest_at_least)))

    for feature in table.features:
        if not feature.nullable:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=feature.name))
        if feature.min_value is not None or feature.max_value is not None:
            expectations.append(gxe.ExpectColumnValuesToBeBetween(
                column=feature.name, min_value=feature.min_value, max_value=feature.max_value))

    # NaN is neither null nor (in Spark's ordering) below any lower bound, so the checks
    # above let it through; one query over all double features catches it.
    double_features = [f.name for f in table.features if f.dtype == "double"]
    if double_features:
        any_nan = " OR ".join(f"isnan(`{name}`)" for name in double_features)
        selected = ", ".join(f"`{name}`" for name in [*key, *double_features])
        expectations.append(gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=f"SELECT {selected} FROM {{batch}} WHERE {any_nan}",
            description=f"no NaN in {', '.join(double_features)}"))

    return gx.ExpectationSuite(name=f"feature_table.{table.name}", expectations=expectations)


def _row_count_expectation(expected: int | tuple[int, int] | None) -> gxe.Expectation:
    if expected is None:
        # An empty table is never published by accident; pass 0 when empty is right.
        return gxe.ExpectTableRowCountToBeBetween(min_value=1)
    if isinstance(expected, tuple):
        low, high = expected
        return gxe.ExpectTableRowCountToBeBetween(min_value=low, max_value=high)
    return gxe.ExpectTableRowCountToEqual(value=expected)


def _driver_local_naive(instant: datetime) -> datetime:
    """The instant as PySpark hands timestamps to the driver: naive, in the local zone."""
    return as_utc(instant).astimezone().replace(tzinfo=None)
