"""The feature tables: every feature's type, meaning and valid range, each table's ttl
and transformation. The batch job, the validation suites, Feast and the online store
read these specs; see the package docstring for what the windows and "as of" mean.

A table's ``build`` takes one DataFrame per event type in its ``sources``, each
parameter named after the event type (``transactions``, ``activity``, ``chargebacks``),
so a caller can pass ``build(**{name: df_of[name] for name in table.sources})``.

ttl (how long a row's values stay valid as of a later time): the table's longest
window. Past it every window of the row has slid past all of its events, so an old row
says nothing about now: user transactions 7 d, user activity 1 d, merchants 30 d. A
table has one ttl, so the user's lifetime values expire with the row too.
"""
from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from pyspark.sql import types as T

from transformations.merchants import merchant_features
from transformations.schemas import ACTIVITY, CHARGEBACKS, TRANSACTIONS
from transformations.tables import Feature, FeatureTable
from transformations.user_activity import user_activity_features
from transformations.user_transactions import user_transaction_features
from transformations.windows import EVENT_TIMESTAMP

_WINDOW_WORDS = {"1h": "1 hour", "24h": "24 hours", "7d": "7 days"}


def _txn_window_features(window: str) -> dict[str, Feature]:
    """The amount statistics of one user transaction window, by statistic."""
    span = f"in the last {_WINDOW_WORDS[window]}, window (t - {window}, t]"
    return {
        "count": Feature(f"txn_count_{window}", "bigint", f"Transactions {span}.", min_value=1),
        "sum": Feature(f"txn_amount_sum_{window}", "double",
                       f"Sum of the known amounts {span}; 0 when none is known."),
        "mean": Feature(f"txn_amount_mean_{window}", "double",
                        f"Mean known amount {span}; null when none is known.", nullable=True),
        "max": Feature(f"txn_amount_max_{window}", "double",
                       f"Largest known amount {span}; null when none is known.", nullable=True),
        "std": Feature(f"txn_amount_std_{window}", "double",
                       f"Sample standard deviation of the known amounts {span}; "
                       "null with fewer than two.", nullable=True),
    }


_TXN_WINDOWS = [_txn_window_features(window) for window in ("1h", "24h", "7d")]

USER_TRANSACTION_FEATURES = FeatureTable(
    name="user_transaction_features",
    entity_column="user_id",
    timestamp_column=EVENT_TIMESTAMP,
    sources=(TRANSACTIONS,),
    features=(
        *[by_statistic[statistic] for statistic in ("count", "sum", "mean", "max", "std")
          for by_statistic in _TXN_WINDOWS],
        Feature("txn_distinct_merchants_24h", "bigint",
                "Distinct merchants in the last 24 hours, window (t - 24h, t].", min_value=1),
        Feature("txn_distinct_countries_24h", "bigint",
                "Distinct countries in the last 24 hours, window (t - 24h, t].", min_value=1),
        Feature("txn_seconds_since_prev", "double",
                "Seconds since the user's previous transaction instant; null for the first.",
                min_value=0.0, nullable=True),
        Feature("txn_amount_to_mean_7d_ratio", "double",
                "Known amount at this instant / mean known amount over (t - 7d, t); null without "
                "a prior amount or with a zero mean.", nullable=True),
        Feature("txn_lifetime_count", "bigint", "Transactions up to t, all time.", min_value=1),
        Feature("txn_lifetime_spend", "double", "Sum of the known amounts up to t, all time."),
    ),
    ttl=timedelta(days=7),
    build=user_transaction_features,
)


def _activity_feature(name: str, what: str, window: str) -> Feature:
    return Feature(f"{name}_{window}", "bigint",
                   f"{what} in the last {_WINDOW_WORDS[window]}, window (t - {window}, t].")


_ACTIVITY_KINDS = [
    ("logins", "Login attempts, successful or not,"),
    ("failed_logins", "Logins that failed"),
    ("page_views", "Page views"),
    ("sessions", "Sessions started"),
]

USER_ACTIVITY_FEATURES = FeatureTable(
    name="user_activity_features",
    entity_column="user_id",
    timestamp_column=EVENT_TIMESTAMP,
    sources=(ACTIVITY,),
    features=tuple(_activity_feature(name, what, window)
                   for name, what in _ACTIVITY_KINDS for window in ("1h", "24h")),
    ttl=timedelta(days=1),
    build=user_activity_features,
)

MERCHANT_FEATURES = FeatureTable(
    name="merchant_features",
    entity_column="merchant_id",
    timestamp_column=EVENT_TIMESTAMP,
    sources=(TRANSACTIONS, CHARGEBACKS),
    features=(
        Feature("merchant_txn_count_30d", "bigint",
                "Transactions in the last 30 days, window (t - 30d, t]."),
        Feature("merchant_chargeback_count_30d", "bigint",
                "Chargebacks that arrived in the last 30 days, window (t - 30d, t]."),
        Feature("merchant_chargeback_rate_30d", "double",
                "Chargebacks arrived / transactions, both in (t - 30d, t]; null without "
                "transactions. May exceed 1: chargebacks can dispute older transactions.",
                nullable=True),
    ),
    ttl=timedelta(days=30),
    build=merchant_features,
)

FEATURE_TABLES: dict[str, FeatureTable] = {
    table.name: table
    for table in (USER_TRANSACTION_FEATURES, USER_ACTIVITY_FEATURES, MERCHANT_FEATURES)
}

# The feature services: what each model reads. A service lists whole feature tables, so a
# feature added to one of them reaches the model's next training run. Here, not with the
# Feast objects (feature_repo/feature_services.py builds those from it), because the
# training sets and the API read a service's features without Feast.
FEATURE_SERVICE_TABLES: dict[str, tuple[str, ...]] = {
    "fraud_model_v1": ("user_transaction_features", "user_activity_features", "merchant_features"),
}


def feature_refs(service_name: str) -> list[str]:
    """The service's features as "<feature view>:<feature>" references."""
    return [f"{table}:{feature}" for table in FEATURE_SERVICE_TABLES[service_name]
            for feature in FEATURE_TABLES[table].feature_names]

_SPARK_TYPES = {"bigint": T.LongType(), "double": T.DoubleType()}


def spark_schema(table: FeatureTable) -> T.StructType:
    """The schema ``table.build`` returns: entity, timestamp, then the features."""
    return T.StructType([
        T.StructField(table.entity_column, T.StringType(), nullable=False),
        T.StructField(table.timestamp_column, T.TimestampType(), nullable=False),
        *[T.StructField(feature.name, _SPARK_TYPES[feature.dtype], nullable=feature.nullable)
          for feature in table.features],
    ])


def definitions_hash(package: Path = Path(__file__).parent) -> str:
    """sha256 of the source of this package's modules (by file name): the lineage of
    every feature value. Any change to a definition changes it."""
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
