"""The benchmark's pandas and DuckDB peers equal the Spark transformations on hand-written
events, so bench/bench_batch_features.py compares like with like.

The events sit on and next to every window edge: exactly W before a later event (out)
and one microsecond later (in), several events at one instant, a replayed id, null and
zero amounts, a prior mean of zero, a merchant with chargebacks only.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb
import pandas as pd
import pytest
from pyspark.sql import types as T

from bench.peers import (
    ALLOWED_VALUES,
    EVENT_COLUMNS,
    MAX_FUTURE,
    REQUIRED_COLUMNS,
    TABLE_COLUMNS,
    TIMESTAMP_COLUMNS,
    WINDOW_1H,
    WINDOW_7D,
    WINDOW_24H,
    WINDOW_30D,
    duckdb_features,
    pandas_features,
)
from transformations import cleaning, windows
from transformations.catalog import FEATURE_TABLES
from transformations.merchants import merchant_features
from transformations.schemas import ALLOWED_VALUES as DECLARED_VALUES
from transformations.schemas import SCHEMAS
from transformations.user_activity import user_activity_features
from transformations.user_transactions import user_transaction_features

# Integration tier: the benchmarks' peer engines (pandas, DuckDB) on generated data.
pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 28, 23, 30, tzinfo=timezone.utc)  # windows cross midnight
US = timedelta(microseconds=1)
H = timedelta(hours=1)
D = timedelta(days=1)

TRANSACTIONS = [
    # id, user, merchant, amount, currency, country, device, channel, time
    ("t1", "u1", "m1", 10.0, "EUR", "DE", "d1", "web", T0),
    ("t2", "u1", "m2", 30.0, "EUR", "FR", "d1", "web", T0 + H),           # t1 exactly 1h before: out
    ("t3", "u1", "m1", None, "EUR", "DE", "d1", "web", T0 + H),           # same instant, null amount
    ("t3", "u1", "m1", None, "EUR", "DE", "d1", "web", T0 + H),           # replayed
    ("t4", "u1", "m3", 0.0, "EUR", "DE", "d1", "app", T0 + 2 * H - US),   # t2, t3 one microsecond inside 1h
    ("t5", "u1", "m2", 5.0, "EUR", "PL", "d1", "app", T0 + D),            # t1 exactly 24h before: out
    ("t14", "u1", "m5", 3.0, "EUR", "GB", "d1", "web", T0 + D + H),       # t2, t3 exactly 24h before: m1, FR out
    ("t6", "u1", "m1", 7.5, "EUR", "FR", "d1", "web", T0 + 7 * D),        # t1 exactly 7d before: out
    ("t7", "u1", "m4", 12.0, "EUR", "US", "d2", "web", T0 + 7 * D + H - US),
    ("t8", "u2", "m1", None, "EUR", "DE", "d3", "pos", T0 + 3 * H),       # only a null amount
    ("t9", "u2", "m1", 0.0, "EUR", "DE", "d3", "pos", T0 + 4 * H),
    ("t10", "u2", "m1", 20.0, "EUR", "DE", "d3", "pos", T0 + 5 * H),      # prior mean 0: no ratio
    ("t11", "u2", "m1", 20.0, "EUR", "DE", "d3", "pos", T0 + 5 * H),      # two amounts at one instant
    ("t12", "u3", "m2", 99.0, "EUR", "ES", "d4", "web", T0 + 30 * D + H),     # m2's t2 exactly 30d before: out
    ("t13", "u3", "m2", 1.0, "EUR", "ES", "d4", "web", T0 + 31 * D - US),     # m2's t5 one microsecond inside
]
ACTIVITY = [
    # id, user, type, success, session, device, country, time
    ("a1", "u1", "session_start", None, "s1", "d1", "DE", T0),
    ("a2", "u1", "login", False, "s1", "d1", "DE", T0),
    ("a3", "u1", "login", True, "s1", "d1", "DE", T0 + H),                # a1, a2 exactly 1h before: out
    ("a4", "u1", "page_view", None, "s1", "d1", "DE", T0 + H),
    ("a4", "u1", "page_view", None, "s1", "d1", "DE", T0 + H),            # replayed
    ("a5", "u1", "login", None, "s1", "d1", "DE", T0 + 2 * H - US),       # unknown success: no failure
    ("a6", "u1", "login", False, "s2", "d1", "DE", T0 + D - US),          # a1, a2 still inside 24h
    ("a7", "u1", "page_view", None, "s2", "d1", "DE", T0 + D),            # ... and out here
    ("a8", "u2", "session_start", None, "s3", "d3", "FR", T0 + 5 * H),
]
CHARGEBACKS = [
    # id, transaction, user, merchant, transaction time, arrival time
    ("c1", "t1", "u1", "m1", T0, T0 + H),
    ("c1", "t1", "u1", "m1", T0, T0 + H),                                  # replayed
    ("c2", "t9", "u2", "m1", T0 + 4 * H, T0 + 30 * D + 3 * H),             # t8 exactly 30d before: out
    ("c3", "t6", "u1", "m9", T0 + 7 * D, T0 + 8 * D),                      # a merchant with no transactions
]


def _raw_schema(event_type: str) -> T.StructType:
    """The declared schema with every column nullable: raw input may break the rules."""
    return T.StructType([T.StructField(f.name, f.dataType, nullable=True) for f in SCHEMAS[event_type]])


def _pandas(rows: list[tuple], event_type: str) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(EVENT_COLUMNS[event_type]))


def _comparable(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Columns in the catalog's order, instants as UTC microseconds, rows sorted by key."""
    table = table[list(TABLE_COLUMNS[name])].copy()
    instants = pd.to_datetime(table["event_timestamp"], utc=True)
    table["event_timestamp"] = (instants - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "us")
    entity = TABLE_COLUMNS[name][0]
    return table.sort_values([entity, "event_timestamp"], ignore_index=True)


def _duckdb(select: str, **relations: pd.DataFrame) -> pd.DataFrame:
    connection = duckdb.connect()
    for relation, frame in relations.items():
        connection.register(relation, frame)
    return connection.sql(select).df()


@pytest.fixture(scope="module")
def spark_tables(spark) -> dict[str, pd.DataFrame]:
    transactions = spark.createDataFrame(TRANSACTIONS, _raw_schema("transactions"))
    activity = spark.createDataFrame(ACTIVITY, _raw_schema("activity"))
    chargebacks = spark.createDataFrame(CHARGEBACKS, _raw_schema("chargebacks"))
    return {
        "user_transaction_features": user_transaction_features(transactions).toPandas(),
        "user_activity_features": user_activity_features(activity).toPandas(),
        "merchant_features": merchant_features(transactions, chargebacks).toPandas(),
    }


def _peer_tables(peer: str) -> dict[str, pd.DataFrame]:
    transactions = _pandas(TRANSACTIONS, "transactions")
    activity = _pandas(ACTIVITY, "activity")
    chargebacks = _pandas(CHARGEBACKS, "chargebacks")
    if peer == "pandas":
        return {
            "user_transaction_features": pandas_features.user_transaction_features(transactions),
            "user_activity_features": pandas_features.user_activity_features(activity),
            "merchant_features": pandas_features.merchant_features(transactions, chargebacks),
        }
    return {
        "user_transaction_features": _duckdb(duckdb_features.user_transaction_features_sql("transactions"),
                                             transactions=transactions),
        "user_activity_features": _duckdb(duckdb_features.user_activity_features_sql("activity"),
                                          activity=activity),
        "merchant_features": _duckdb(duckdb_features.merchant_features_sql("transactions", "chargebacks"),
                                     transactions=transactions, chargebacks=chargebacks),
    }


@pytest.mark.parametrize("peer", ["pandas", "duckdb"])
@pytest.mark.parametrize("table", list(TABLE_COLUMNS))
def test_peer_equals_spark(spark_tables, peer, table):
    expected = _comparable(spark_tables[table], table)
    actual = _comparable(_peer_tables(peer)[table], table)
    assert len(expected) > 2
    pd.testing.assert_frame_equal(actual, expected, check_dtype=False, check_exact=False, rtol=1e-12, atol=1e-12)


def test_peer_cleaning_keeps_the_rows_spark_keeps(spark):
    now = T0 + D
    rows = [
        ("ok", "u1", "m1", 1.0, "EUR", "DE", "d1", "web", T0),
        ("zero", "u1", "m1", 0.0, "EUR", "DE", "d1", "web", T0),
        ("negative", "u1", "m1", -1.0, "EUR", "DE", "d1", "web", T0),
        ("no_amount", "u1", "m1", None, "EUR", "DE", "d1", "web", T0),
        ("no_country", "u1", "m1", 1.0, "EUR", None, "d1", "web", T0),
        ("no_time", "u1", "m1", 1.0, "EUR", "DE", "d1", "web", None),
        ("at_limit", "u1", "m1", 1.0, "EUR", "DE", "d1", "web", now + MAX_FUTURE),
        ("future", "u1", "m1", 1.0, "EUR", "DE", "d1", "web", now + MAX_FUTURE + US),
        ("fax", "u1", "m1", 1.0, "EUR", "DE", "d1", "fax", T0),
        ("no_currency_code", "u1", "m1", 1.0, "XXX", "DE", "d1", "web", T0),
    ]
    checked = cleaning.validate_typed_events(spark.createDataFrame(rows, _raw_schema("transactions")),
                                             "transactions", now=now)
    valid, _ = cleaning.split_valid(checked)
    spark_ids = sorted(row.transaction_id for row in valid.collect())

    raw = _pandas(rows, "transactions")
    pandas_ids = sorted(pandas_features.valid_events(raw, "transactions", now)["transaction_id"])
    duckdb_ids = sorted(_duckdb(duckdb_features.valid_events_sql("raw", "transactions", now), raw=raw)
                        ["transaction_id"])
    assert spark_ids == ["at_limit", "ok", "zero"]
    assert pandas_ids == spark_ids
    assert duckdb_ids == spark_ids


def test_the_peers_copy_of_the_contract_matches_the_project():
    for event_type, schema in SCHEMAS.items():
        assert EVENT_COLUMNS[event_type] == tuple(schema.fieldNames())
        assert REQUIRED_COLUMNS[event_type] == tuple(f.name for f in schema if not f.nullable)
        assert TIMESTAMP_COLUMNS[event_type] == tuple(f.name for f in schema if f.dataType == T.TimestampType())
    assert ALLOWED_VALUES == DECLARED_VALUES
    for name, table in FEATURE_TABLES.items():
        assert TABLE_COLUMNS[name] == tuple(table.columns)
    assert MAX_FUTURE == cleaning.DEFAULT_MAX_FUTURE
    assert (WINDOW_1H, WINDOW_24H, WINDOW_7D, WINDOW_30D) == (
        windows.WINDOW_1H, windows.WINDOW_24H, windows.WINDOW_7D, windows.WINDOW_30D)
