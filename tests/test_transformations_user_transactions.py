"""user_transaction_features on hand-written events; expected values computed by hand.

Window rule under test: a window W at a row with time t covers events in (t - W, t].
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import types as T

from transformations.catalog import USER_TRANSACTION_FEATURES, spark_schema
from transformations.schemas import TRANSACTION_SCHEMA
from transformations.user_transactions import LIFETIME_BASELINE_SCHEMA, user_transaction_features

UTC = timezone.utc
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
KEYS = ["user_id", "event_timestamp"]

# Raw input may hold nulls that the declared schema forbids (null amounts are tested).
RAW_TRANSACTION_SCHEMA = T.StructType([T.StructField(f.name, f.dataType, nullable=True)
                                       for f in TRANSACTION_SCHEMA])


def txn(transaction_id, user_id, event_time, amount=10.0, merchant_id="m1", country="DE"):
    return (transaction_id, user_id, merchant_id, amount, "EUR", country, "d1", "web", event_time)


def features(spark, rows, *columns, lifetime_baseline=None):
    """The feature table of ``rows``, keys plus ``columns``."""
    transactions = spark.createDataFrame(rows, RAW_TRANSACTION_SCHEMA)
    return user_transaction_features(transactions, lifetime_baseline).select(*KEYS, *columns)


def expected(spark, rows, *columns):
    """``rows`` typed as the catalog declares ``KEYS + columns``."""
    declared = {field.name: field.dataType for field in spark_schema(USER_TRANSACTION_FEATURES)}
    schema = T.StructType([T.StructField(name, declared[name]) for name in [*KEYS, *columns]])
    return spark.createDataFrame(rows, schema)


def test_empty_input_keeps_the_declared_schema_and_gives_no_rows(spark):
    actual = user_transaction_features(spark.createDataFrame([], TRANSACTION_SCHEMA))
    assert_df_equality(actual, spark.createDataFrame([], spark_schema(USER_TRANSACTION_FEATURES)),
                       ignore_nullable=True)


def test_every_feature_on_two_users(spark):
    rows = [
        txn("a", "u1", T0, 10.0, "m1", "DE"),
        txn("b", "u1", T0 + timedelta(minutes=30), 30.0, "m2", "FR"),
        txn("c", "u1", T0 + timedelta(hours=2), 20.0, "m1", "DE"),
        txn("d", "u2", T0 + timedelta(minutes=10), 50.0, "m3", "DE"),
    ]
    actual = user_transaction_features(spark.createDataFrame(rows, RAW_TRANSACTION_SCHEMA))
    # columns: counts 1h 24h 7d | sums | means | maxes | stds | merchants 24h, countries 24h |
    # seconds since prev | amount / prior 7d mean | lifetime count, spend
    std_10_30 = math.sqrt(((10 - 20) ** 2 + (30 - 20) ** 2) / 1)
    std_10_30_20 = math.sqrt(((10 - 20) ** 2 + (30 - 20) ** 2 + 0) / 2)
    want = spark.createDataFrame([
        ("u1", T0, 1, 1, 1, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, None, None, None,
         1, 1, None, None, 1, 10.0),
        ("u1", T0 + timedelta(minutes=30), 2, 2, 2, 40.0, 40.0, 40.0, 20.0, 20.0, 20.0, 30.0, 30.0, 30.0,
         std_10_30, std_10_30, std_10_30, 2, 2, 1800.0, 30.0 / 10.0, 2, 40.0),
        # the 1h window (11:00, 12:00] holds only c
        ("u1", T0 + timedelta(hours=2), 1, 3, 3, 20.0, 60.0, 60.0, 20.0, 20.0, 20.0, 20.0, 30.0, 30.0,
         None, std_10_30_20, std_10_30_20, 2, 2, 5400.0, 20.0 / 20.0, 3, 60.0),
        ("u2", T0 + timedelta(minutes=10), 1, 1, 1, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0,
         None, None, None, 1, 1, None, None, 1, 50.0),
    ], spark_schema(USER_TRANSACTION_FEATURES))
    assert_approx_df_equality(actual, want, precision=1e-9, ignore_nullable=True, ignore_row_order=True)


def test_window_edge_event_exactly_w_before_is_out_one_microsecond_later_is_in(spark):
    rows = [
        txn("a1", "out_1h", T0), txn("a2", "out_1h", T0 + timedelta(hours=1)),
        txn("b1", "in_1h", T0), txn("b2", "in_1h", T0 + timedelta(hours=1) - MICROSECOND),
        txn("c1", "out_24h", T0), txn("c2", "out_24h", T0 + timedelta(hours=24)),
        txn("d1", "in_24h", T0), txn("d2", "in_24h", T0 + timedelta(hours=24) - MICROSECOND),
        txn("e1", "out_7d", T0), txn("e2", "out_7d", T0 + timedelta(days=7)),
        txn("f1", "in_7d", T0), txn("f2", "in_7d", T0 + timedelta(days=7) - MICROSECOND),
    ]
    columns = ["txn_count_1h", "txn_count_24h", "txn_count_7d"]
    want = expected(spark, [
        ("out_1h", T0, 1, 1, 1), ("out_1h", T0 + timedelta(hours=1), 1, 2, 2),
        ("in_1h", T0, 1, 1, 1), ("in_1h", T0 + timedelta(hours=1) - MICROSECOND, 2, 2, 2),
        ("out_24h", T0, 1, 1, 1), ("out_24h", T0 + timedelta(hours=24), 1, 1, 2),
        ("in_24h", T0, 1, 1, 1), ("in_24h", T0 + timedelta(hours=24) - MICROSECOND, 1, 2, 2),
        ("out_7d", T0, 1, 1, 1), ("out_7d", T0 + timedelta(days=7), 1, 1, 1),
        ("in_7d", T0, 1, 1, 1), ("in_7d", T0 + timedelta(days=7) - MICROSECOND, 1, 1, 2),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_late_and_out_of_order_events_land_in_their_event_time(spark):
    # Arrival order: 12:00, then 10:00, then the 10:30 event arrives last.
    rows = [
        txn("c", "u1", T0 + timedelta(hours=2), 20.0),
        txn("a", "u1", T0, 10.0),
        txn("b", "u1", T0 + timedelta(minutes=30), 30.0),
    ]
    columns = ["txn_count_24h", "txn_amount_sum_24h", "txn_seconds_since_prev"]
    want = expected(spark, [
        ("u1", T0, 1, 10.0, None),
        ("u1", T0 + timedelta(minutes=30), 2, 40.0, 1800.0),
        ("u1", T0 + timedelta(hours=2), 3, 60.0, 5400.0),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_null_amount_counts_the_event_but_not_the_amount(spark):
    rows = [
        txn("a", "u1", T0, 10.0),
        txn("b", "u1", T0 + timedelta(minutes=30), None),
        txn("c", "only_nulls", T0, None),
    ]
    columns = ["txn_count_1h", "txn_amount_sum_1h", "txn_amount_mean_1h", "txn_amount_max_1h",
               "txn_amount_std_1h", "txn_amount_to_mean_7d_ratio", "txn_lifetime_count", "txn_lifetime_spend"]
    want = expected(spark, [
        ("u1", T0, 1, 10.0, 10.0, 10.0, None, None, 1, 10.0),
        # one known amount: no std; the instant's amount is unknown: no ratio
        ("u1", T0 + timedelta(minutes=30), 2, 10.0, 10.0, 10.0, None, None, 2, 10.0),
        ("only_nulls", T0, 1, 0.0, None, None, None, None, 1, 0.0),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_zero_amount_is_a_real_amount_and_a_zero_prior_mean_gives_no_ratio(spark):
    rows = [
        txn("a", "u1", T0, 0.0),
        txn("b", "u1", T0 + timedelta(minutes=30), 4.0),
        txn("c", "u1", T0 + timedelta(minutes=45), 2.0),
    ]
    columns = ["txn_count_1h", "txn_amount_sum_1h", "txn_amount_mean_1h", "txn_amount_max_1h",
               "txn_amount_to_mean_7d_ratio"]
    want = expected(spark, [
        ("u1", T0, 1, 0.0, 0.0, 0.0, None),
        ("u1", T0 + timedelta(minutes=30), 2, 4.0, 2.0, 4.0, None),  # prior mean 0 / 1 = 0
        ("u1", T0 + timedelta(minutes=45), 3, 6.0, 2.0, 4.0, 2.0 / ((0.0 + 4.0) / 2)),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_duplicate_events_count_once(spark):
    rows = [
        txn("a", "u1", T0, 10.0),
        txn("b", "u1", T0 + timedelta(minutes=5), 20.0),
        txn("a", "u1", T0, 10.0),  # replayed
        txn("b", "u1", T0 + timedelta(minutes=5), 20.0),  # replayed
    ]
    columns = ["txn_count_1h", "txn_amount_sum_1h", "txn_lifetime_count", "txn_lifetime_spend"]
    want = expected(spark, [
        ("u1", T0, 1, 10.0, 1, 10.0),
        ("u1", T0 + timedelta(minutes=5), 2, 30.0, 2, 30.0),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_window_spans_midnight(spark):
    before_midnight = datetime(2026, 5, 4, 23, 30, tzinfo=UTC)
    after_midnight = datetime(2026, 5, 5, 0, 20, tzinfo=UTC)
    rows = [txn("a", "u1", before_midnight, 10.0), txn("b", "u1", after_midnight, 20.0)]
    columns = ["txn_count_1h", "txn_amount_sum_1h", "txn_seconds_since_prev"]
    want = expected(spark, [
        ("u1", before_midnight, 1, 10.0, None),
        ("u1", after_midnight, 2, 30.0, 50 * 60.0),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_source_zone_dst_change_counts_instants_not_wall_clock(spark):
    # Europe/Berlin springs forward at 02:00 on 2026-03-29: 01:30+01:00 (00:30Z) and
    # 03:30+02:00 (01:30Z) are one hour apart although the wall clock says two.
    berlin = ZoneInfo("Europe/Berlin")
    first = datetime(2026, 3, 29, 1, 30, tzinfo=berlin)
    second = datetime(2026, 3, 29, 3, 29, 59, tzinfo=berlin)  # 59 min 59 s after first
    third = datetime(2026, 3, 29, 3, 30, tzinfo=berlin)  # exactly 1 h after first: first is out
    rows = [txn("a", "u1", first), txn("b", "u1", second), txn("c", "u1", third)]
    columns = ["txn_count_1h", "txn_seconds_since_prev"]
    want = expected(spark, [
        ("u1", datetime(2026, 3, 29, 0, 30, tzinfo=UTC), 1, None),
        ("u1", datetime(2026, 3, 29, 1, 29, 59, tzinfo=UTC), 2, 3599.0),
        ("u1", datetime(2026, 3, 29, 1, 30, tzinfo=UTC), 2, 1.0),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_same_instant_events_collapse_into_one_row_counting_all(spark):
    rows = [
        txn("a", "u1", T0, 10.0, "m1"),
        txn("b", "u1", T0 + timedelta(minutes=30), 20.0, "m1"),
        txn("c", "u1", T0 + timedelta(minutes=30), 40.0, "m2"),
    ]
    columns = ["txn_count_1h", "txn_amount_sum_1h", "txn_distinct_merchants_24h", "txn_seconds_since_prev",
               "txn_amount_to_mean_7d_ratio", "txn_lifetime_count"]
    want = expected(spark, [
        ("u1", T0, 1, 10.0, 1, None, None, 1),
        # the instant's amount is 20 + 40; the prior mean holds only a
        ("u1", T0 + timedelta(minutes=30), 3, 70.0, 2, 1800.0, (20.0 + 40.0) / 10.0, 3),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_std_is_null_with_one_amount_in_the_window(spark):
    rows = [txn("a", "u1", T0, 10.0), txn("b", "u1", T0 + timedelta(hours=2), 30.0)]
    columns = ["txn_amount_std_1h", "txn_amount_std_24h"]
    want = expected(spark, [
        ("u1", T0, None, None),
        ("u1", T0 + timedelta(hours=2), None, math.sqrt(((10 - 20) ** 2 + (30 - 20) ** 2) / 1)),
    ], *columns)
    assert_approx_df_equality(features(spark, rows, *columns), want, precision=1e-9,
                              ignore_nullable=True, ignore_row_order=True)


def test_std_of_equal_amounts_is_exactly_zero_after_a_large_history(spark):
    # A large earlier amount must not leak rounding into a later window's spread
    # (a variance from running sums of squares gave 1e-6 here).
    rows = [txn("big", "u1", T0, 987_654_321.123),
            txn("a", "u1", T0 + timedelta(days=2), 0.1), txn("b", "u1", T0 + timedelta(days=2, minutes=1), 0.1)]
    columns = ["txn_amount_std_1h", "txn_amount_std_24h"]
    want = expected(spark, [("u1", T0, None, None),
                            ("u1", T0 + timedelta(days=2), None, None),
                            ("u1", T0 + timedelta(days=2, minutes=1), 0.0, 0.0)], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_ratio_uses_the_prior_7d_mean_and_is_null_without_a_prior(spark):
    rows = [
        txn("a", "u1", T0, 10.0),
        txn("b", "u1", T0 + timedelta(days=1), 30.0),
        # prior window (T0 + 12h, T0 + 7d 12h) holds b only
        txn("c", "u1", T0 + timedelta(days=7, hours=12), 20.0),
        # prior window (T0 + 7d 12h, T0 + 14d 12h) is empty: c is exactly 7 d before
        txn("d", "u1", T0 + timedelta(days=14, hours=12), 40.0),
    ]
    columns = ["txn_amount_to_mean_7d_ratio"]
    want = expected(spark, [
        ("u1", T0, None),
        ("u1", T0 + timedelta(days=1), 30.0 / 10.0),
        ("u1", T0 + timedelta(days=7, hours=12), 20.0 / 30.0),
        ("u1", T0 + timedelta(days=14, hours=12), None),
    ], *columns)
    assert_approx_df_equality(features(spark, rows, *columns), want, precision=1e-12,
                              ignore_nullable=True, ignore_row_order=True)


def test_distinct_merchants_and_countries_over_24h(spark):
    rows = [
        txn("a", "u1", T0, merchant_id="m1", country="DE"),
        txn("b", "u1", T0 + timedelta(hours=1), merchant_id="m2", country="DE"),
        txn("c", "u1", T0 + timedelta(hours=2), merchant_id="m1", country="FR"),
        txn("d", "u1", T0 + timedelta(hours=24), merchant_id="m3", country="DE"),  # a is out
    ]
    columns = ["txn_distinct_merchants_24h", "txn_distinct_countries_24h"]
    want = expected(spark, [
        ("u1", T0, 1, 1),
        ("u1", T0 + timedelta(hours=1), 2, 1),
        ("u1", T0 + timedelta(hours=2), 2, 2),
        ("u1", T0 + timedelta(hours=24), 3, 2),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_lifetime_totals_reach_beyond_every_window(spark):
    rows = [
        txn("a", "u1", T0, 10.0),
        txn("b", "u1", T0 + timedelta(days=10), 20.0),
        txn("c", "u1", T0 + timedelta(days=40), 30.0),
    ]
    columns = ["txn_count_7d", "txn_lifetime_count", "txn_lifetime_spend"]
    want = expected(spark, [
        ("u1", T0, 1, 1, 10.0),
        ("u1", T0 + timedelta(days=10), 1, 2, 30.0),
        ("u1", T0 + timedelta(days=40), 1, 3, 60.0),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_lifetime_baseline_before_the_events_carries_totals_and_the_previous_instant(spark):
    # u1's newest baseline transaction was 10 days before T0: older than every window.
    baseline = spark.createDataFrame([("u1", 5, 100.0, T0 - timedelta(days=10))], LIFETIME_BASELINE_SCHEMA)
    rows = [
        txn("a", "u1", T0, 10.0),
        txn("b", "u1", T0 + timedelta(hours=1), 20.0),
        txn("c", "no_baseline", T0, 7.0),
    ]
    columns = ["txn_count_7d", "txn_seconds_since_prev", "txn_lifetime_count", "txn_lifetime_spend"]
    want = expected(spark, [
        ("u1", T0, 1, 10 * 86400.0, 5 + 1, 100.0 + 10.0),
        ("u1", T0 + timedelta(hours=1), 2, 3600.0, 5 + 2, 100.0 + 30.0),
        ("no_baseline", T0, 1, None, 1, 7.0),
    ], *columns)
    actual = features(spark, rows, *columns, lifetime_baseline=baseline)
    assert_df_equality(actual, want, ignore_nullable=True, ignore_row_order=True)


def test_lifetime_baseline_already_holding_history_counts_only_newer_events(spark):
    # The stream's case: history a, b is in the baseline (until b) and in the input for
    # the windows; c is new.
    baseline = spark.createDataFrame([("u1", 5, 100.0, T0 + timedelta(hours=1))], LIFETIME_BASELINE_SCHEMA)
    rows = [
        txn("a", "u1", T0, 10.0),
        txn("b", "u1", T0 + timedelta(hours=1), 20.0),
        txn("c", "u1", T0 + timedelta(hours=2), 5.0),
    ]
    columns = ["txn_count_24h", "txn_seconds_since_prev", "txn_lifetime_count", "txn_lifetime_spend"]
    want = expected(spark, [
        ("u1", T0, 1, None, None, None),  # lifetime not derivable from a later baseline
        ("u1", T0 + timedelta(hours=1), 2, 3600.0, None, None),
        ("u1", T0 + timedelta(hours=2), 3, 3600.0, 5 + 1, 100.0 + 5.0),
    ], *columns)
    actual = features(spark, rows, *columns, lifetime_baseline=baseline)
    assert_df_equality(actual, want, ignore_nullable=True, ignore_row_order=True)
