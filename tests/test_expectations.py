"""The validation suites on tiny Spark DataFrames: a good feature table passes, and each
kind of defect fails alone, naming the expectation, the column and what was observed."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from expectations.runner import validate
from expectations.suites import feature_table_suite, raw_events_suite
from transformations import schemas
from transformations.tables import Feature, FeatureTable

UTC = timezone.utc
RANGE_END = datetime(2026, 3, 2, tzinfo=UTC)  # the computed range ends at midnight
FRESHNESS_TOLERANCE = timedelta(hours=1)

TABLE = FeatureTable(
    name="test_user_features",
    entity_column="user_id",
    timestamp_column="event_timestamp",
    sources=(schemas.TRANSACTIONS,),
    features=(
        Feature("txn_count_1h", "bigint", "transactions in the last hour", 0, 1000),
        Feature("txn_amount_sum_24h", "double", "spend in the last 24 h", 0.0, None),
        Feature("txn_amount_std_24h", "double", "spread of spend, null for one transaction",
                0.0, None, nullable=True),
    ),
    ttl=timedelta(days=7),
    build=lambda events: events,  # unused by the suites
)
TABLE_DDL = ("user_id string, event_timestamp timestamp, txn_count_1h bigint, "
             "txn_amount_sum_24h double, txn_amount_std_24h double")
GOOD_ROWS = [
    ("u1", datetime(2026, 3, 1, 10, 0, tzinfo=UTC), 1, 10.0, None),
    ("u1", datetime(2026, 3, 1, 11, 0, tzinfo=UTC), 2, 25.0, 7.5),
    ("u2", datetime(2026, 3, 1, 23, 30, tzinfo=UTC), 1, 5.0, None),
]


def feature_rows_df(spark, rows):
    return spark.createDataFrame(rows, TABLE_DDL)


def suite_for(rows, expected_row_count=None):
    count = len(rows) if expected_row_count is None else expected_row_count
    return feature_table_suite(TABLE, expected_row_count=count,
                               newest_at_least=RANGE_END - FRESHNESS_TOLERANCE)


def test_a_good_feature_table_passes(spark):
    outcome = validate(feature_rows_df(spark, GOOD_ROWS), suite_for(GOOD_ROWS))

    assert outcome.success, outcome.failed
    assert outcome.failed == []
    assert outcome.statistics["unsuccessful_expectations"] == 0
    assert outcome.statistics["evaluated_expectations"] == len(suite_for(GOOD_ROWS).expectations)
    assert outcome.result_json["success"] is True


# One table with every kind of defect, each in its own rows, so one (slow) Spark
# validation covers them all; the good table above shows none of these checks misfires.
BAD_ROWS = [
    ("u1", datetime(2026, 3, 1, 10, 0, tzinfo=UTC), 5000, 10.0, None),        # count above max
    ("u1", datetime(2026, 3, 1, 11, 0, tzinfo=UTC), 2, -1.0, float("nan")),   # negative sum, NaN std
    (None, datetime(2026, 3, 1, 11, 0, tzinfo=UTC), 1, 5.0, None),            # null entity
    ("u3", datetime(2026, 3, 1, 9, 0, tzinfo=UTC), 1, None, None),            # null non-nullable feature
    ("u4", datetime(2026, 3, 1, 9, 30, tzinfo=UTC), 1, 3.0, None),            # duplicate (entity, ts) ...
    ("u4", datetime(2026, 3, 1, 9, 30, tzinfo=UTC), 1, 3.0, None),            # ... of this row
]  # and the newest row (11:00) is older than RANGE_END - 1 h: stale

# Each defect: the words its one failure line must contain (expectation, column, observed).
EXPECTED_FAILURES = {
    "null entity": ["expect_column_values_to_not_be_null", "column=user_id", "1 of 6 rows"],
    "duplicate (entity, timestamp)": ["expect_compound_columns_to_be_unique", '["user_id", "event_timestamp"]',
                                      "2 of 6 rows", "u4"],
    "value above max": ["expect_column_values_to_be_between", "column=txn_count_1h", "max_value=1000",
                        "[5000]"],
    "negative value": ["expect_column_values_to_be_between", "column=txn_amount_sum_24h", "[-1.0]"],
    "null in a non-nullable feature": ["expect_column_values_to_not_be_null", "column=txn_amount_sum_24h"],
    "NaN feature": ["unexpected_rows_expectation", "NaN", "txn_amount_std_24h", "observed 1"],
    "wrong row count": ["expect_table_row_count_to_equal", "value=3", "observed 6"],
    "stale newest timestamp": ["expect_column_max_to_be_between", "column=event_timestamp",
                               "min_value=2026-03-01T23:00:00", "observed 2026-03-01T11:00:00"],
}


def test_each_kind_of_defect_fails_naming_expectation_column_and_value(spark):
    outcome = validate(feature_rows_df(spark, BAD_ROWS), suite_for(BAD_ROWS, expected_row_count=3))

    assert not outcome.success
    assert outcome.statistics["unsuccessful_expectations"] == len(EXPECTED_FAILURES)
    assert len(outcome.failed) == len(EXPECTED_FAILURES), outcome.failed
    for defect, words in EXPECTED_FAILURES.items():
        matching = [line for line in outcome.failed if all(word in line for word in words)]
        assert len(matching) == 1, f"{defect}: no single failure line has {words}: {outcome.failed}"


def test_a_missing_feature_column_is_named_not_raised(spark):
    rows = [row[:4] for row in GOOD_ROWS]  # txn_amount_std_24h was never computed
    df = spark.createDataFrame(rows, TABLE_DDL.rsplit(",", 1)[0])

    outcome = validate(df, suite_for(rows))

    assert not outcome.success
    assert any(line.startswith("expect_table_columns_to_match_set(") and "observed" in line
               for line in outcome.failed), outcome.failed
    nan_check, = [line for line in outcome.failed if line.startswith("unexpected_rows_expectation")]
    assert "could not be evaluated" in nan_check and "txn_amount_std_24h" in nan_check
    assert "\n" not in nan_check  # Spark's query plan is cut off


def test_raw_transactions_suite_catches_negative_amounts_and_future_events(spark):
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    past = now - timedelta(hours=2)

    def transaction(txn_id, amount, event_time):
        return (txn_id, "u1", "m1", amount, "EUR", "DE", "d1", "web", event_time)

    events = spark.createDataFrame([
        transaction("t1", 12.5, past),
        transaction("t2", -3.0, past),                             # negative amount
        transaction("t3", 8.0, now + timedelta(minutes=3)),        # inside the clock-skew tolerance
        transaction("t4", 9.0, now + timedelta(days=1)),           # in the future
    ], schemas.TRANSACTION_SCHEMA)

    outcome = validate(events, raw_events_suite(schemas.TRANSACTIONS, now))

    assert not outcome.success
    assert len(outcome.failed) == 2, outcome.failed
    amount_failure, = [line for line in outcome.failed if "column=amount" in line]
    assert "expect_column_values_to_be_between" in amount_failure and "-3.0" in amount_failure
    time_failure, = [line for line in outcome.failed if "column=event_time" in line]
    assert "expect_column_max_to_be_between" in time_failure
    assert "observed 2026-03-03T12:00:00" in time_failure


def test_raw_chargebacks_suite_passes_good_events_and_checks_their_order(spark):
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    chargebacks = spark.createDataFrame([
        ("c1", "t1", "u1", "m1", now - timedelta(days=3), now - timedelta(hours=1)),
        ("c2", "t2", "u2", "m1", now - timedelta(hours=5), now - timedelta(days=1)),  # before its transaction
    ], schemas.CHARGEBACK_SCHEMA)

    outcome = validate(chargebacks, raw_events_suite(schemas.CHARGEBACKS, now))

    assert len(outcome.failed) == 1, outcome.failed
    assert "expect_column_pair_values_a_to_be_greater_than_b" in outcome.failed[0]
    assert "1 of 2 rows" in outcome.failed[0]


def test_raw_suites_check_every_non_nullable_field_and_the_event_id():
    now = datetime(2026, 3, 2, tzinfo=UTC)
    for event_type, schema in schemas.SCHEMAS.items():
        suite = raw_events_suite(event_type, now)
        not_null = {e.column for e in suite.expectations
                    if e.expectation_type == "expect_column_values_to_not_be_null"}
        assert not_null == {f.name for f in schema.fields if not f.nullable}
        assert any(e.expectation_type == "expect_column_values_to_be_unique" for e in suite.expectations)
    with pytest.raises(ValueError, match="unknown event type"):
        raw_events_suite("clicks", now)
