"""The three feature tables in DuckDB SQL: window functions over exact range frames.

    compute_feature_tables(history_dir, out_dir, start, end, now)   # raw Parquet -> features -> Parquet

The frames are Spark's (``transformations.windows``): rows ordered by the event instant
in microseconds, ``(t - W, t]`` is ``RANGE BETWEEN W_us - 1 PRECEDING AND CURRENT ROW``.
A frame on the timestamp itself, ``RANGE BETWEEN INTERVAL 1 HOUR PRECEDING``, would
also hold an event exactly W before t: the window's start must be exclusive.

The ``*_sql`` functions take the names of the relations holding the events (a table, a
view, or a registered pandas DataFrame in the tests) and return a SELECT.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from bench.peers import (
    ALLOWED_VALUES,
    EVENT_COLUMNS,
    EVENT_TYPES,
    MAX_FUTURE,
    REQUIRED_COLUMNS,
    TABLE_COLUMNS,
    TIMESTAMP_COLUMNS,
    WINDOW_1H,
    WINDOW_7D,
    WINDOW_24H,
    WINDOW_30D,
)


def _micros(duration: timedelta) -> int:
    return duration // timedelta(microseconds=1)


def _epoch_micros(instant: datetime) -> int:
    return _micros(instant - datetime(1970, 1, 1, tzinfo=instant.tzinfo))


def _frames(entity: str, trailing: dict[str, timedelta]) -> str:
    """The WINDOW clause: ``last_<name>`` = (t - W, t] per name, and the exact frames
    ``prior_7d`` (t - 7d, t), ``same_instant`` [t, t], ``all_up_to`` (-inf, t],
    ``all_before`` (-inf, t)."""
    by_instant = f"PARTITION BY {entity} ORDER BY event_micros"
    frames = {f"last_{name}": f"RANGE BETWEEN {_micros(w) - 1} PRECEDING AND CURRENT ROW"
              for name, w in trailing.items()}
    frames.update({
        "prior_7d": f"RANGE BETWEEN {_micros(WINDOW_7D) - 1} PRECEDING AND 1 PRECEDING",
        "same_instant": "RANGE BETWEEN CURRENT ROW AND CURRENT ROW",
        "all_up_to": "RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW",
        "all_before": "RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING",
    })
    return "WINDOW " + ",\n       ".join(f"{name} AS ({by_instant} {frame})" for name, frame in frames.items())


def valid_events_sql(source: str, event_type: str, now: datetime) -> str:
    """The rows ``cleaning.validate_typed_events`` accepts: no null in a required column,
    no negative amount, no timestamp after ``now + MAX_FUTURE``, no value outside the
    declared ones."""
    checks = [f"{column} IS NOT NULL" for column in REQUIRED_COLUMNS[event_type]]
    if "amount" in EVENT_COLUMNS[event_type]:
        checks.append("NOT coalesce(amount < 0, false)")
    latest_allowed = _epoch_micros(now + MAX_FUTURE)
    checks += [f"NOT coalesce(epoch_us({column}) > {latest_allowed}, false)"
               for column in TIMESTAMP_COLUMNS[event_type]]
    checks += [f"{column} IN ({', '.join(repr(value) for value in allowed)})"
               for column, allowed in ALLOWED_VALUES[event_type].items()]
    return f"SELECT {', '.join(EVENT_COLUMNS[event_type])} FROM {source} WHERE " + " AND ".join(checks)


def user_transaction_features_sql(transactions: str) -> str:
    windows = {"1h": WINDOW_1H, "24h": WINDOW_24H, "7d": WINDOW_7D}
    statistics = []
    for template in ("count(*) OVER last_{w} AS txn_count_{w}",
                     "coalesce(sum(amount) OVER last_{w}, 0.0) AS txn_amount_sum_{w}",
                     "avg(amount) OVER last_{w} AS txn_amount_mean_{w}",
                     "max(amount) OVER last_{w} AS txn_amount_max_{w}",
                     "stddev_samp(amount) OVER last_{w} AS txn_amount_std_{w}"):
        statistics += [template.format(w=name) for name in windows]
    return f"""
WITH events AS (
    SELECT DISTINCT ON (transaction_id)  -- a replayed event counts once
           user_id, merchant_id, amount, country, event_time, epoch_us(event_time) AS event_micros
    FROM {transactions}
), per_event AS (
    SELECT user_id, event_time AS event_timestamp,
           {", ".join(statistics)},
           count(DISTINCT merchant_id) OVER last_24h AS txn_distinct_merchants_24h,
           count(DISTINCT country) OVER last_24h AS txn_distinct_countries_24h,
           (event_micros - max(event_micros) OVER all_before) / 1000000 AS txn_seconds_since_prev,
           CASE WHEN avg(amount) OVER prior_7d != 0
                THEN sum(amount) OVER same_instant / avg(amount) OVER prior_7d END AS txn_amount_to_mean_7d_ratio,
           count(*) OVER all_up_to AS txn_lifetime_count,
           coalesce(sum(amount) OVER all_up_to, 0.0) AS txn_lifetime_spend
    FROM events
    {_frames("user_id", windows)}
)
SELECT DISTINCT ON (user_id, event_timestamp) {", ".join(TABLE_COLUMNS["user_transaction_features"])}
FROM per_event
"""


def user_activity_features_sql(activity: str) -> str:
    kinds = {
        "logins": "activity_type = 'login'",
        "failed_logins": "activity_type = 'login' AND success = false",  # unknown success is no failure
        "page_views": "activity_type = 'page_view'",
        "sessions": "activity_type = 'session_start'",
    }
    counts = [f"count(*) FILTER (WHERE {condition}) OVER last_{w} AS {kind}_{w}"
              for kind, condition in kinds.items() for w in ("1h", "24h")]
    return f"""
WITH events AS (
    SELECT DISTINCT ON (event_id) user_id, activity_type, success, event_time,
           epoch_us(event_time) AS event_micros
    FROM {activity}
), per_event AS (
    SELECT user_id, event_time AS event_timestamp, {", ".join(counts)}
    FROM events
    {_frames("user_id", {"1h": WINDOW_1H, "24h": WINDOW_24H})}
)
SELECT DISTINCT ON (user_id, event_timestamp) {", ".join(TABLE_COLUMNS["user_activity_features"])}
FROM per_event
"""


def merchant_features_sql(transactions: str, chargebacks: str) -> str:
    return f"""
WITH events AS (
    SELECT merchant_id, event_time, epoch_us(event_time) AS event_micros, true AS is_transaction
    FROM (SELECT DISTINCT ON (transaction_id) merchant_id, event_time FROM {transactions})
    UNION ALL
    SELECT merchant_id, event_time, epoch_us(event_time) AS event_micros, false AS is_transaction
    FROM (SELECT DISTINCT ON (chargeback_id) merchant_id, event_time FROM {chargebacks})
), per_event AS (
    SELECT merchant_id, event_time AS event_timestamp,
           count(*) FILTER (WHERE is_transaction) OVER last_30d AS merchant_txn_count_30d,
           count(*) FILTER (WHERE NOT is_transaction) OVER last_30d AS merchant_chargeback_count_30d
    FROM events
    {_frames("merchant_id", {"30d": WINDOW_30D})}
)
SELECT DISTINCT ON (merchant_id, event_timestamp) merchant_id, event_timestamp,
       merchant_txn_count_30d, merchant_chargeback_count_30d,
       CASE WHEN merchant_txn_count_30d > 0
            THEN merchant_chargeback_count_30d / merchant_txn_count_30d END AS merchant_chargeback_rate_30d
FROM per_event
"""


def compute_feature_tables(history_dir: Path, out_dir: Path, start: datetime, end: datetime,
                           now: datetime) -> None:
    """Raw Parquet -> valid events (held as temporary tables, as the batch job persists
    them) -> the three tables, rows in [start, end) -> ``<out_dir>/<table>/``."""
    connection = duckdb.connect()  # in memory; spills to temp_directory when memory runs short
    connection.execute(f"SET temp_directory = '{Path(out_dir) / '.duckdb_tmp'}'")
    for event_type in EVENT_TYPES:
        source = f"read_parquet('{Path(history_dir) / event_type}/**/*.parquet', hive_partitioning = false)"
        connection.execute(f"CREATE TEMP TABLE {event_type} AS {valid_events_sql(source, event_type, now)}")
    tables = {
        "user_transaction_features": user_transaction_features_sql("transactions"),
        "user_activity_features": user_activity_features_sql("activity"),
        "merchant_features": merchant_features_sql("transactions", "chargebacks"),
    }
    in_period = (f"epoch_us(event_timestamp) >= {_epoch_micros(start)} "
                 f"AND epoch_us(event_timestamp) < {_epoch_micros(end)}")
    for name, select in tables.items():
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        connection.execute(f"COPY (SELECT * FROM ({select}) WHERE {in_period}) "
                           f"TO '{folder / 'part-0.parquet'}' (FORMAT parquet)")
    connection.close()
