"""merchant_features on hand-written transactions and chargebacks; expected values
computed by hand.

Window rule under test: a window W at a row with time t covers events in (t - W, t];
a chargeback counts from its arrival (event_time).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from chispa import assert_df_equality

from transformations.catalog import MERCHANT_FEATURES, spark_schema
from transformations.merchants import PRECOUNTED_SCHEMA, merchant_features
from transformations.schemas import CHARGEBACK_SCHEMA, TRANSACTION_SCHEMA

UTC = timezone.utc
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def txn(transaction_id, merchant_id, event_time):
    return (transaction_id, "u1", merchant_id, 10.0, "EUR", "DE", "d1", "web", event_time)


def chargeback(chargeback_id, transaction_id, merchant_id, arrived, transaction_time):
    return (chargeback_id, transaction_id, "u1", merchant_id, transaction_time, arrived)


def features(spark, transactions, chargebacks):
    return merchant_features(spark.createDataFrame(transactions, TRANSACTION_SCHEMA),
                             spark.createDataFrame(chargebacks, CHARGEBACK_SCHEMA))


def expected(spark, rows):
    return spark.createDataFrame(rows, spark_schema(MERCHANT_FEATURES))


def test_build_reads_transactions_and_chargebacks():
    assert MERCHANT_FEATURES.sources == ("transactions", "chargebacks")


def test_empty_input_keeps_the_declared_schema_and_gives_no_rows(spark):
    assert_df_equality(features(spark, [], []), expected(spark, []), ignore_nullable=True)


def test_chargeback_arriving_later_counts_from_its_arrival_not_its_transaction(spark):
    transactions = [txn("t1", "m1", T0), txn("t2", "m1", T0 + timedelta(days=1))]
    # t1's chargeback arrives on day 5: rows before it are unchanged (no leak backwards).
    chargebacks = [chargeback("c1", "t1", "m1", T0 + timedelta(days=5), T0)]
    # columns: transactions 30d, chargebacks 30d, rate
    want = expected(spark, [
        ("m1", T0, 1, 0, 0.0),
        ("m1", T0 + timedelta(days=1), 2, 0, 0.0),
        ("m1", T0 + timedelta(days=5), 2, 1, 1 / 2),
    ])
    assert_df_equality(features(spark, transactions, chargebacks), want,
                       ignore_nullable=True, ignore_row_order=True)


def test_30d_window_edge_and_null_rate_without_transactions(spark):
    transactions = [txn("t1", "out", T0), txn("t2", "in", T0)]
    chargebacks = [
        # t1 is exactly 30 d before its chargeback's arrival: out, so no rate
        chargeback("c1", "t1", "out", T0 + timedelta(days=30), T0),
        chargeback("c2", "t2", "in", T0 + timedelta(days=30) - MICROSECOND, T0),
    ]
    want = expected(spark, [
        ("out", T0, 1, 0, 0.0),
        ("out", T0 + timedelta(days=30), 0, 1, None),
        ("in", T0, 1, 0, 0.0),
        ("in", T0 + timedelta(days=30) - MICROSECOND, 1, 1, 1.0),
    ])
    assert_df_equality(features(spark, transactions, chargebacks), want,
                       ignore_nullable=True, ignore_row_order=True)


def test_duplicate_and_out_of_order_events_count_once(spark):
    transactions = [
        txn("t2", "m1", T0 + timedelta(hours=2)),
        txn("t1", "m1", T0),
        txn("t2", "m1", T0 + timedelta(hours=2)),  # replayed
    ]
    chargebacks = [
        chargeback("c1", "t1", "m1", T0 + timedelta(hours=1), T0),
        chargeback("c1", "t1", "m1", T0 + timedelta(hours=1), T0),  # replayed
    ]
    want = expected(spark, [
        ("m1", T0, 1, 0, 0.0),
        ("m1", T0 + timedelta(hours=1), 1, 1, 1.0),
        ("m1", T0 + timedelta(hours=2), 2, 1, 1 / 2),
    ])
    assert_df_equality(features(spark, transactions, chargebacks), want,
                       ignore_nullable=True, ignore_row_order=True)


def test_transaction_and_chargeback_at_one_instant_collapse_into_one_row(spark):
    transactions = [
        txn("t1", "m1", T0),
        txn("t2", "m1", T0 + timedelta(days=2)),
        txn("t3", "m1", T0 + timedelta(days=2)),
    ]
    chargebacks = [chargeback("c1", "t1", "m1", T0 + timedelta(days=2), T0)]
    want = expected(spark, [
        ("m1", T0, 1, 0, 0.0),
        ("m1", T0 + timedelta(days=2), 3, 1, 1 / 3),
    ])
    assert_df_equality(features(spark, transactions, chargebacks), want,
                       ignore_nullable=True, ignore_row_order=True)


def test_precounted_events_count_in_every_window_holding_their_instant_and_give_a_row(spark):
    # One row standing for 40 transactions and 3 chargebacks at day 2, beside real events.
    precounted = spark.createDataFrame([("m1", T0 + timedelta(days=2), 40, 3)], PRECOUNTED_SCHEMA)
    transactions = [txn("t1", "m1", T0), txn("t2", "m1", T0 + timedelta(days=31))]
    got = merchant_features(spark.createDataFrame(transactions, TRANSACTION_SCHEMA),
                            spark.createDataFrame([], CHARGEBACK_SCHEMA), precounted=precounted)
    want = expected(spark, [
        ("m1", T0, 1, 0, 0.0),
        ("m1", T0 + timedelta(days=2), 41, 3, 3 / 41),
        # 30 days on, t1 has left the window, the precounted events (at day 2) have not.
        ("m1", T0 + timedelta(days=31), 41, 3, 3 / 41),
    ])
    assert_df_equality(got, want, ignore_nullable=True, ignore_row_order=True)
