"""User transaction features: one row per (user_id, instant of the user's transactions).

Window semantics: the package docstring. Per window W in 1h, 24h, 7d, over the user's
transactions in ``(t - W, t]``:

* ``txn_count_W``: transactions, null amounts included;
* ``txn_amount_sum_W``: sum of the known amounts, 0.0 when none is known;
* ``txn_amount_mean_W``, ``txn_amount_max_W``: over the known amounts, null when none;
* ``txn_amount_std_W``: sample standard deviation of the known amounts, null with fewer
  than two (one amount has no spread to estimate; 0 would claim a certainty).

Single features:

* ``txn_distinct_merchants_24h``, ``txn_distinct_countries_24h``: distinct values in 24h;
* ``txn_seconds_since_prev``: seconds from the user's previous transaction instant to
  this one (``baseline_until`` counts as one); null for the first;
* ``txn_amount_to_mean_7d_ratio``: the instant's amount (the sum of the known amounts of
  the transactions at this instant) divided by the mean known amount over
  ``(t - 7d, t)``, the user's prior 7 days without this instant, by
  ``on_demand.amount_to_mean_ratio``; null when there is no prior amount, the prior mean
  is 0 or the instant's amounts are unknown;
* ``txn_lifetime_count``, ``txn_lifetime_spend``: all the user's transactions up to t
  (spend: known amounts), plus the lifetime baseline when one is given.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transformations import cleaning, windows
from transformations.on_demand import amount_to_mean_ratio
from transformations.windows import EVENT_MICROS, EVENT_TIME, EVENT_TIMESTAMP

USER_ID = "user_id"

# Per user: the lifetime totals of the transactions with event_time <= baseline_until,
# the instant of the newest of them.
LIFETIME_BASELINE_SCHEMA = T.StructType([
    T.StructField(USER_ID, T.StringType(), nullable=False),
    T.StructField("lifetime_txn_count", T.LongType(), nullable=False),
    T.StructField("lifetime_txn_spend", T.DoubleType(), nullable=False),
    T.StructField("baseline_until", T.TimestampType(), nullable=False),
])

COLUMNS = [
    USER_ID, EVENT_TIMESTAMP,
    "txn_count_1h", "txn_count_24h", "txn_count_7d",
    "txn_amount_sum_1h", "txn_amount_sum_24h", "txn_amount_sum_7d",
    "txn_amount_mean_1h", "txn_amount_mean_24h", "txn_amount_mean_7d",
    "txn_amount_max_1h", "txn_amount_max_24h", "txn_amount_max_7d",
    "txn_amount_std_1h", "txn_amount_std_24h", "txn_amount_std_7d",
    "txn_distinct_merchants_24h", "txn_distinct_countries_24h",
    "txn_seconds_since_prev",
    "txn_amount_to_mean_7d_ratio",
    "txn_lifetime_count", "txn_lifetime_spend",
]


WINDOWS = {"1h": windows.WINDOW_1H, "24h": windows.WINDOW_24H, "7d": windows.WINDOW_7D}


def user_transaction_features(transactions: DataFrame,
                              lifetime_baseline: DataFrame | None = None) -> DataFrame:
    """The user transaction feature table of ``transactions`` (``TRANSACTION_SCHEMA``).

    ``lifetime_baseline`` (``LIFETIME_BASELINE_SCHEMA``, at most one row per user)
    carries state forward for the streaming job, which supplies only recent history: it
    holds the user's transactions up to ``baseline_until``, the instant of the newest of
    them (the user's latest row). Supplied transactions at or before
    ``baseline_until`` then feed the windows only, later ones add to the lifetime
    totals, and rows at or before ``baseline_until`` get null lifetime values (a later
    baseline cannot tell them). ``baseline_until`` is also a previous instant for
    ``txn_seconds_since_prev``. Users without a baseline row start from zero.
    """
    transactions = cleaning.drop_duplicate_events(  # a replayed event counts once
        transactions.select(
            F.col("transaction_id"),
            F.col(USER_ID),
            F.col("merchant_id"),
            F.col("amount"),
            F.col("country"),
            F.col(EVENT_TIME),
        ),
        USER_ID, "transaction_id")
    events = windows.with_event_micros(_with_lifetime_baseline(transactions, lifetime_baseline))

    trailing = {name: windows.last(USER_ID, duration) for name, duration in WINDOWS.items()}
    same_instant = windows.same_instant(USER_ID)
    all_up_to = windows.all_up_to(USER_ID)
    all_before = windows.all_before(USER_ID)

    amount = F.col("amount")
    not_in_baseline = F.col("baseline_until").isNull() | (F.col(EVENT_TIME) > F.col("baseline_until"))
    lifetime_count = F.col("baseline_count") + windows.count_where(not_in_baseline, all_up_to)
    lifetime_spend = F.col("baseline_spend") + F.coalesce(
        F.sum(F.when(not_in_baseline, amount)).over(all_up_to), F.lit(0.0))
    # The baseline's newest transaction precedes every transaction after it, supplied or not.
    previous_micros = F.greatest(
        F.max(EVENT_MICROS).over(all_before),
        F.when(not_in_baseline, F.unix_micros(F.col("baseline_until"))),
    )

    # Counts and sums as differences of running totals (see windows.count_in_last): the
    # mean follows from them. Max, std and distinct counts keep sliding frames (a user's
    # windows are short): max and distinct cannot be subtracted, and a variance from
    # running sums of squares cancels catastrophically (equal amounts gave 1e-6, not 0).
    amounts_known = {name: windows.count_in_last(amount.isNotNull(), USER_ID, duration)
                     for name, duration in WINDOWS.items()}
    amount_sums = {name: windows.sum_in_last(amount, USER_ID, duration) for name, duration in WINDOWS.items()}
    # The mean of (t - 7d, t), without the instant itself, likewise from running totals.
    prior_known_7d = windows.count_in_last(amount.isNotNull(), USER_ID, windows.WINDOW_7D,
                                            with_instant=False)
    prior_mean_7d = F.when(prior_known_7d > 0,
                           windows.sum_in_last(amount, USER_ID, windows.WINDOW_7D, with_instant=False) / prior_known_7d)

    per_event = events.select(
        F.col(USER_ID),
        F.col(EVENT_TIME).alias(EVENT_TIMESTAMP),
        windows.last_of_instant(USER_ID),
        *[windows.count_in_last(F.lit(True), USER_ID, duration).alias(f"txn_count_{name}")
          for name, duration in WINDOWS.items()],
        *[amount_sums[name].alias(f"txn_amount_sum_{name}") for name in WINDOWS],
        *[amounts_known[name].alias(f"_amounts_known_{name}") for name in WINDOWS],
        *[F.max(amount).over(w).alias(f"txn_amount_max_{name}") for name, w in trailing.items()],
        *[F.stddev_samp(amount).over(w).alias(f"txn_amount_std_{name}") for name, w in trailing.items()],
        F.size(F.collect_set("merchant_id").over(trailing["24h"])).cast("bigint")
        .alias("txn_distinct_merchants_24h"),
        F.size(F.collect_set("country").over(trailing["24h"])).cast("bigint")
        .alias("txn_distinct_countries_24h"),
        ((F.col(EVENT_MICROS) - previous_micros) / windows.MICROS_PER_SECOND).alias("txn_seconds_since_prev"),
        amount_to_mean_ratio(F.sum(amount).over(same_instant), prior_mean_7d).alias("txn_amount_to_mean_7d_ratio"),
        F.when(not_in_baseline, lifetime_count).alias("txn_lifetime_count"),
        F.when(not_in_baseline, lifetime_spend).alias("txn_lifetime_spend"),
    )
    # The mean from the columns above: written inline, Spark would compute each running
    # total of the count and the sum again (it does not share equal window expressions).
    with_means = per_event.withColumns({
        f"txn_amount_mean_{name}": F.when(F.col(f"_amounts_known_{name}") > 0,
                                          F.col(f"txn_amount_sum_{name}") / F.col(f"_amounts_known_{name}"))
        for name in WINDOWS})
    return windows.one_row_per_instant(with_means).select(*COLUMNS)


def _with_lifetime_baseline(transactions: DataFrame, lifetime_baseline: DataFrame | None) -> DataFrame:
    """``transactions`` plus the user's baseline: count and spend (0 without one) and
    ``baseline_until`` (null without one: every supplied transaction is new)."""
    if lifetime_baseline is None:  # the batch job: lifetimes start at zero, no join needed
        return transactions.select(
            *transactions.columns,
            F.lit(0).cast("bigint").alias("baseline_count"),
            F.lit(0.0).alias("baseline_spend"),
            F.lit(None).cast("timestamp").alias("baseline_until"),
        )
    baseline = lifetime_baseline.select(
        F.col(USER_ID),
        F.col("lifetime_txn_count").alias("baseline_count"),
        F.col("lifetime_txn_spend").alias("baseline_spend"),
        F.col("baseline_until"),
    )
    return transactions.join(baseline, on=USER_ID, how="left").select(
        *transactions.columns,
        F.coalesce(F.col("baseline_count"), F.lit(0).cast("bigint")).alias("baseline_count"),
        F.coalesce(F.col("baseline_spend"), F.lit(0.0)).alias("baseline_spend"),
        F.col("baseline_until"),
    )
