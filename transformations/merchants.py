"""Merchant features: one row per (merchant_id, instant) over the union of the
merchant's transaction instants and chargeback arrival instants.

Window semantics: the package docstring. A chargeback is placed at its arrival
(``event_time``), not at the disputed transaction's time: it is known only then. Over
``(t - 30d, t]``:

* ``merchant_txn_count_30d``: transactions;
* ``merchant_chargeback_count_30d``: chargebacks that arrived;
* ``merchant_chargeback_rate_30d``: chargebacks arrived / transactions, both in the
  window; null when the window holds no transaction (no rate to speak of). The
  chargebacks may dispute transactions older than the window, so the rate can exceed 1.

Counts ahead of time (``precounted``, for the streaming job): a row of
``PRECOUNTED_SCHEMA`` stands for ``transactions`` transactions and ``chargebacks``
chargebacks, all at its ``event_time``. The streaming job sends the part of a merchant's
30 days that lies inside every window it wants rows for this way, one row per merchant,
instead of thousands of events.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transformations import cleaning, windows
from transformations.windows import EVENT_TIME, EVENT_TIMESTAMP

MERCHANT_ID = "merchant_id"

# Events counted ahead: per row, that many transactions and chargebacks at event_time.
PRECOUNTED_SCHEMA = T.StructType([
    T.StructField(MERCHANT_ID, T.StringType(), nullable=False),
    T.StructField(EVENT_TIME, T.TimestampType(), nullable=False),
    T.StructField("transactions", T.LongType(), nullable=False),
    T.StructField("chargebacks", T.LongType(), nullable=False),
])

COLUMNS = [
    MERCHANT_ID, EVENT_TIMESTAMP,
    "merchant_txn_count_30d",
    "merchant_chargeback_count_30d",
    "merchant_chargeback_rate_30d",
]


def merchant_features(transactions: DataFrame, chargebacks: DataFrame,
                      precounted: DataFrame | None = None) -> DataFrame:
    """The merchant feature table of ``transactions`` (``TRANSACTION_SCHEMA``) and
    ``chargebacks`` (``CHARGEBACK_SCHEMA``), plus the events of ``precounted``
    (``PRECOUNTED_SCHEMA``), which count in every window that holds their instant and
    give a row there like any event. The events a precounted row stands for must not be
    supplied one by one as well: they would count twice."""
    # One row per event with what it adds to each count. A replayed event counts once.
    transaction_counts = cleaning.drop_duplicate_events(
        transactions.select(F.col("transaction_id"), F.col(MERCHANT_ID), F.col(EVENT_TIME)),
        MERCHANT_ID, "transaction_id",
    ).select(F.col(MERCHANT_ID), F.col(EVENT_TIME),
             F.lit(1).cast("bigint").alias("transactions"), F.lit(0).cast("bigint").alias("chargebacks"))
    chargeback_counts = cleaning.drop_duplicate_events(
        chargebacks.select(F.col("chargeback_id"), F.col(MERCHANT_ID), F.col(EVENT_TIME)),
        MERCHANT_ID, "chargeback_id",
    ).select(F.col(MERCHANT_ID), F.col(EVENT_TIME),
             F.lit(0).cast("bigint").alias("transactions"), F.lit(1).cast("bigint").alias("chargebacks"))
    counts = transaction_counts.unionByName(chargeback_counts)
    if precounted is not None:
        counts = counts.unionByName(precounted.select(*PRECOUNTED_SCHEMA.fieldNames()))
    events = windows.with_event_micros(counts)
    txn_count = windows.total_in_last(F.col("transactions"), MERCHANT_ID, windows.WINDOW_30D)
    chargeback_count = windows.total_in_last(F.col("chargebacks"), MERCHANT_ID, windows.WINDOW_30D)
    per_event = events.select(
        F.col(MERCHANT_ID),
        F.col(EVENT_TIME).alias(EVENT_TIMESTAMP),
        windows.last_of_instant(MERCHANT_ID),
        txn_count.alias("merchant_txn_count_30d"),
        chargeback_count.alias("merchant_chargeback_count_30d"),
        F.when(txn_count > 0, chargeback_count / txn_count).alias("merchant_chargeback_rate_30d"),
    )
    return windows.one_row_per_instant(per_event).select(*COLUMNS)
