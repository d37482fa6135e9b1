"""user_activity_features on hand-written events; expected values computed by hand.

Window rule under test: a window W at a row with time t covers events in (t - W, t].
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from chispa import assert_df_equality
from pyspark.sql import types as T

from transformations.catalog import USER_ACTIVITY_FEATURES, spark_schema
from transformations.schemas import ACTIVITY_SCHEMA
from transformations.user_activity import user_activity_features

UTC = timezone.utc
T0 = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
KEYS = ["user_id", "event_timestamp"]
ALL_1H = ["logins_1h", "failed_logins_1h", "page_views_1h", "sessions_1h"]


def event(event_id, user_id, event_time, activity_type="login", success=None, session_id=None):
    return (event_id, user_id, activity_type, success, session_id, "d1", "DE", event_time)


def features(spark, rows, *columns):
    """The feature table of ``rows``, keys plus ``columns``."""
    activity = spark.createDataFrame(rows, ACTIVITY_SCHEMA)
    return user_activity_features(activity).select(*KEYS, *columns)


def expected(spark, rows, *columns):
    """``rows`` typed as the catalog declares ``KEYS + columns``."""
    declared = {field.name: field.dataType for field in spark_schema(USER_ACTIVITY_FEATURES)}
    schema = T.StructType([T.StructField(name, declared[name]) for name in [*KEYS, *columns]])
    return spark.createDataFrame(rows, schema)


def test_empty_input_keeps_the_declared_schema_and_gives_no_rows(spark):
    actual = user_activity_features(spark.createDataFrame([], ACTIVITY_SCHEMA))
    assert_df_equality(actual, spark.createDataFrame([], spark_schema(USER_ACTIVITY_FEATURES)),
                       ignore_nullable=True)


def test_counts_each_activity_type_a_login_of_unknown_outcome_is_not_failed(spark):
    rows = [
        event("e1", "u1", T0, "login", success=True),
        event("e2", "u1", T0 + timedelta(minutes=1), "login", success=False),
        event("e3", "u1", T0 + timedelta(minutes=2), "login", success=None),
        event("e4", "u1", T0 + timedelta(minutes=3), "session_start", session_id="s1"),
        event("e5", "u1", T0 + timedelta(minutes=4), "page_view", session_id="s1"),
        event("e6", "u1", T0 + timedelta(minutes=5), "page_view", session_id="s1"),
    ]
    actual = user_activity_features(spark.createDataFrame(rows, ACTIVITY_SCHEMA))
    # columns: logins 1h 24h | failed logins | page views | sessions
    want = spark.createDataFrame([
        ("u1", T0, 1, 1, 0, 0, 0, 0, 0, 0),
        ("u1", T0 + timedelta(minutes=1), 2, 2, 1, 1, 0, 0, 0, 0),
        ("u1", T0 + timedelta(minutes=2), 3, 3, 1, 1, 0, 0, 0, 0),
        ("u1", T0 + timedelta(minutes=3), 3, 3, 1, 1, 0, 0, 1, 1),
        ("u1", T0 + timedelta(minutes=4), 3, 3, 1, 1, 1, 1, 1, 1),
        ("u1", T0 + timedelta(minutes=5), 3, 3, 1, 1, 2, 2, 1, 1),
    ], spark_schema(USER_ACTIVITY_FEATURES))
    assert_df_equality(actual, want, ignore_nullable=True, ignore_row_order=True)


def test_window_edge_event_exactly_w_before_is_out_one_microsecond_later_is_in(spark):
    rows = [
        event("a1", "out_1h", T0), event("a2", "out_1h", T0 + timedelta(hours=1), "page_view"),
        event("b1", "in_1h", T0), event("b2", "in_1h", T0 + timedelta(hours=1) - MICROSECOND, "page_view"),
        event("c1", "out_24h", T0), event("c2", "out_24h", T0 + timedelta(hours=24), "page_view"),
        event("d1", "in_24h", T0), event("d2", "in_24h", T0 + timedelta(hours=24) - MICROSECOND, "page_view"),
    ]
    columns = ["logins_1h", "logins_24h"]
    want = expected(spark, [
        ("out_1h", T0, 1, 1), ("out_1h", T0 + timedelta(hours=1), 0, 1),
        ("in_1h", T0, 1, 1), ("in_1h", T0 + timedelta(hours=1) - MICROSECOND, 1, 1),
        ("out_24h", T0, 1, 1), ("out_24h", T0 + timedelta(hours=24), 0, 0),
        ("in_24h", T0, 1, 1), ("in_24h", T0 + timedelta(hours=24) - MICROSECOND, 0, 1),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)


def test_duplicate_and_out_of_order_events_count_once_at_their_event_time(spark):
    rows = [
        event("e3", "u1", T0 + timedelta(minutes=20), "page_view"),
        event("e1", "u1", T0, "login", success=False),
        event("e3", "u1", T0 + timedelta(minutes=20), "page_view"),  # replayed
        event("e2", "u1", T0 + timedelta(minutes=10), "login", success=True),  # late
        event("e1", "u1", T0, "login", success=False),  # replayed
    ]
    want = expected(spark, [
        ("u1", T0, 1, 1, 0, 0),
        ("u1", T0 + timedelta(minutes=10), 2, 1, 0, 0),
        ("u1", T0 + timedelta(minutes=20), 2, 1, 1, 0),
    ], *ALL_1H)
    assert_df_equality(features(spark, rows, *ALL_1H), want, ignore_nullable=True, ignore_row_order=True)


def test_same_instant_events_collapse_into_one_row_counting_all(spark):
    rows = [
        event("e1", "u1", T0, "session_start", session_id="s1"),
        event("e2", "u1", T0, "page_view", session_id="s1"),
        event("e3", "u1", T0, "page_view", session_id="s1"),
    ]
    want = expected(spark, [("u1", T0, 0, 0, 2, 1)], *ALL_1H)
    assert_df_equality(features(spark, rows, *ALL_1H), want, ignore_nullable=True, ignore_row_order=True)


def test_windows_cross_midnight_and_a_source_zone_dst_change_as_instants(spark):
    # Europe/Berlin falls back at 03:00 on 2026-10-25: 02:30+02:00 is 00:30Z and the
    # later 02:10+01:00 is 01:10Z. 03:05+01:00 (02:05Z) is 35 wall-clock minutes after
    # the first event but 95 real minutes: out of its 1h window.
    berlin = ZoneInfo("Europe/Berlin")
    rows = [
        event("e0", "u1", datetime(2026, 10, 24, 23, 50, tzinfo=UTC)),  # before midnight UTC
        event("e1", "u1", datetime(2026, 10, 25, 2, 30, tzinfo=berlin).replace(fold=0)),
        event("e2", "u1", datetime(2026, 10, 25, 2, 10, tzinfo=berlin).replace(fold=1)),
        event("e3", "u1", datetime(2026, 10, 25, 3, 5, tzinfo=berlin)),
    ]
    columns = ["logins_1h", "logins_24h"]
    want = expected(spark, [
        ("u1", datetime(2026, 10, 24, 23, 50, tzinfo=UTC), 1, 1),
        ("u1", datetime(2026, 10, 25, 0, 30, tzinfo=UTC), 2, 2),  # 40 min after midnight-crossing e0
        ("u1", datetime(2026, 10, 25, 1, 10, tzinfo=UTC), 2, 3),
        ("u1", datetime(2026, 10, 25, 2, 5, tzinfo=UTC), 2, 4),
    ], *columns)
    assert_df_equality(features(spark, rows, *columns), want, ignore_nullable=True, ignore_row_order=True)
