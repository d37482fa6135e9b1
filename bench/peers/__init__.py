"""Single-machine peers of the Spark feature transformations, for the batch benchmark.

``pandas_features`` and ``duckdb_features`` compute the same three feature tables as
``transformations`` (semantics: that package's docstring) and the same cleaning as
``transformations.cleaning.validate_typed_events`` for typed (Parquet) input.
``tests/test_bench_peers.py`` holds them equal to Spark on hand-written events.

The contract below is copied from ``transformations`` on purpose: importing that
package imports pyspark, which would charge the peers' memory for a library they do
not use. The test pins each copy to its original.
"""
from __future__ import annotations

from datetime import timedelta

TRANSACTIONS, ACTIVITY, CHARGEBACKS = "transactions", "activity", "chargebacks"
EVENT_TYPES = (TRANSACTIONS, ACTIVITY, CHARGEBACKS)

# Declared columns of each event type, in schema order (transformations.schemas).
EVENT_COLUMNS = {
    TRANSACTIONS: ("transaction_id", "user_id", "merchant_id", "amount", "currency", "country", "device_id",
                   "channel", "event_time"),
    ACTIVITY: ("event_id", "user_id", "activity_type", "success", "session_id", "device_id", "country",
               "event_time"),
    CHARGEBACKS: ("chargeback_id", "transaction_id", "user_id", "merchant_id", "transaction_time", "event_time"),
}
# The non-nullable ones: a null there makes the row malformed (missing_field).
REQUIRED_COLUMNS = {
    TRANSACTIONS: EVENT_COLUMNS[TRANSACTIONS],
    ACTIVITY: ("event_id", "user_id", "activity_type", "device_id", "country", "event_time"),
    CHARGEBACKS: EVENT_COLUMNS[CHARGEBACKS],
}
TIMESTAMP_COLUMNS = {
    TRANSACTIONS: ("event_time",),
    ACTIVITY: ("event_time",),
    CHARGEBACKS: ("transaction_time", "event_time"),
}
EVENT_ID_COLUMNS = {TRANSACTIONS: "transaction_id", ACTIVITY: "event_id", CHARGEBACKS: "chargeback_id"}
# The values a column may take; any other makes the row malformed (unknown_value).
ALLOWED_VALUES = {
    TRANSACTIONS: {"currency": ("AUD", "BRL", "CAD", "CHF", "DKK", "EUR", "GBP", "INR", "JPY", "NOK", "PLN", "SEK",
                                "USD"),
                   "channel": ("web", "app", "pos")},
    ACTIVITY: {"activity_type": ("login", "page_view", "session_start")},
    CHARGEBACKS: {},
}
# A timestamp later than the clock plus this is malformed (future_timestamp).
MAX_FUTURE = timedelta(days=1)

WINDOW_1H = timedelta(hours=1)
WINDOW_24H = timedelta(hours=24)
WINDOW_7D = timedelta(days=7)
WINDOW_30D = timedelta(days=30)

# Output columns of each feature table, in order (transformations.catalog.FEATURE_TABLES).
TABLE_COLUMNS = {
    "user_transaction_features": (
        "user_id", "event_timestamp",
        "txn_count_1h", "txn_count_24h", "txn_count_7d",
        "txn_amount_sum_1h", "txn_amount_sum_24h", "txn_amount_sum_7d",
        "txn_amount_mean_1h", "txn_amount_mean_24h", "txn_amount_mean_7d",
        "txn_amount_max_1h", "txn_amount_max_24h", "txn_amount_max_7d",
        "txn_amount_std_1h", "txn_amount_std_24h", "txn_amount_std_7d",
        "txn_distinct_merchants_24h", "txn_distinct_countries_24h",
        "txn_seconds_since_prev",
        "txn_amount_to_mean_7d_ratio",
        "txn_lifetime_count", "txn_lifetime_spend",
    ),
    "user_activity_features": (
        "user_id", "event_timestamp",
        "logins_1h", "logins_24h",
        "failed_logins_1h", "failed_logins_24h",
        "page_views_1h", "page_views_24h",
        "sessions_1h", "sessions_24h",
    ),
    "merchant_features": (
        "merchant_id", "event_timestamp",
        "merchant_txn_count_30d",
        "merchant_chargeback_count_30d",
        "merchant_chargeback_rate_30d",
    ),
}
