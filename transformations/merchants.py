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
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from transformations import cleaning, windows
from transformations.windows import EVENT_TIME, EVENT_TIMESTAMP

MERCHANT_ID = "merchant_id"

COLUMNS = [
    MERCHANT_ID, EVENT_TIMESTAMP,
    "merchant_txn_count_30d",
    "merchant_chargeback_count_30d",
    "merchant_chargeback_rate_30d",
]


def merchant_features(transactions: DataFrame, chargebacks: DataFrame) -> DataFrame:
    """The merchant feature table of ``transactions`` (``TRANSACTION_SCHEMA``) and
    ``chargebacks`` (``CHARGEBACK_SCHEMA``)."""
    # A replayed event counts once.
    transaction_events = cleaning.drop_duplicate_events(
        transactions.select(F.col("transaction_id"), F.col(MERCHANT_ID), F.col(EVENT_TIME)),
        MERCHANT_ID, "transaction_id",
    ).select(F.col(MERCHANT_ID), F.col(EVENT_TIME), F.lit(True).alias("is_transaction"))
    chargeback_events = cleaning.drop_duplicate_events(
        chargebacks.select(F.col("chargeback_id"), F.col(MERCHANT_ID), F.col(EVENT_TIME)),
        MERCHANT_ID, "chargeback_id",
    ).select(F.col(MERCHANT_ID), F.col(EVENT_TIME), F.lit(False).alias("is_transaction"))
    events = windows.with_event_micros(transaction_events.unionByName(chargeback_events))
    txn_count = windows.count_in_last(F.col("is_transaction"), MERCHANT_ID, windows.WINDOW_30D)
    chargeback_count = windows.count_in_last(~F.col("is_transaction"), MERCHANT_ID, windows.WINDOW_30D)
    per_event = events.select(
        F.col(MERCHANT_ID),
        F.col(EVENT_TIME).alias(EVENT_TIMESTAMP),
        windows.last_of_instant(MERCHANT_ID),
        txn_count.alias("merchant_txn_count_30d"),
        chargeback_count.alias("merchant_chargeback_count_30d"),
        F.when(txn_count > 0, chargeback_count / txn_count).alias("merchant_chargeback_rate_30d"),
    )
    return windows.one_row_per_instant(per_event).select(*COLUMNS)
