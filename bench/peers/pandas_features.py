"""The three feature tables in pandas: one process, all data in memory.

    compute_feature_tables(history_dir, out_dir, start, end, now)   # raw Parquet -> features -> Parquet

How the rules of ``transformations`` (its package docstring) map to pandas:

* a window ``(t - W, t]`` is ``groupby(entity).rolling(W, on="event_time", closed="right")``
  over the entity's events sorted by time: pandas' time-based window of a row holds the
  rows with a time after ``t - W``, up to the row itself;
* one row per instant: the events of one instant get different pandas windows (each ends
  at its own row) and only the LAST of them holds them all, so a table keeps the last row
  of each (entity, instant);
* the amount at an instant is the 1-microsecond window ``(t - 1 us, t]``; the prior 7-day
  mean over ``(t - 7d, t)`` is the 7-day window less that instant;
* distinct values over 24 h: pandas has no rolling distinct count, see
  :func:`distinct_in_window`;
* a null amount counts as a transaction (a column of ones is summed) but pandas'
  sum/mean/max/std skip NaN; a duplicate id counts once (``drop_duplicates`` on the id).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from bench.peers import (
    ACTIVITY,
    ALLOWED_VALUES,
    CHARGEBACKS,
    EVENT_COLUMNS,
    MAX_FUTURE,
    REQUIRED_COLUMNS,
    TABLE_COLUMNS,
    TIMESTAMP_COLUMNS,
    TRANSACTIONS,
    WINDOW_1H,
    WINDOW_7D,
    WINDOW_24H,
    WINDOW_30D,
)

USER_ID = "user_id"
MERCHANT_ID = "merchant_id"
EVENT_TIME = "event_time"
EVENT_TIMESTAMP = "event_timestamp"
EPOCH = pd.Timestamp(0, tz="UTC")
ONE_MICROSECOND = pd.Timedelta(1, "us")
SAME_INSTANT = ONE_MICROSECOND  # (t - 1 us, t] holds exactly the events at t (instants are microseconds)


# ------------------------------------------------------------------ raw events
def read_events(history_dir: Path, event_type: str) -> pd.DataFrame:
    """The declared columns of every Parquet file under ``<history_dir>/<event_type>/``."""
    return pd.read_parquet(Path(history_dir) / event_type, columns=list(EVENT_COLUMNS[event_type]))


def valid_events(raw: pd.DataFrame, event_type: str, now: datetime) -> pd.DataFrame:
    """The rows ``cleaning.validate_typed_events`` accepts: no null in a required column,
    no negative amount, no timestamp after ``now + MAX_FUTURE``, no value outside the
    declared ones."""
    valid = raw[list(REQUIRED_COLUMNS[event_type])].notna().all(axis=1)
    if "amount" in raw.columns:
        valid &= ~(raw["amount"] < 0)
    latest_allowed = pd.Timestamp(now) + MAX_FUTURE
    for column in TIMESTAMP_COLUMNS[event_type]:
        valid &= ~(raw[column] > latest_allowed)
    for column, allowed in ALLOWED_VALUES[event_type].items():
        valid &= raw[column].isin(allowed)
    return raw[valid]


# ------------------------------------------------------------------ window helpers
def _by_entity_and_time(events: pd.DataFrame, entity: str) -> pd.DataFrame:
    return events.sort_values([entity, EVENT_TIME], kind="stable", ignore_index=True)


def _trailing(events: pd.DataFrame, entity: str, window) -> pd.core.window.rolling.RollingGroupby:
    """Each row's window (t - window, t] over its entity's rows. ``events`` must be sorted by
    entity and time: groupby(sort=False) then returns the rows in the frame's own order, so
    results are read back with ``.to_numpy()``."""
    return events.groupby(entity, sort=False).rolling(window, on=EVENT_TIME, closed="right")


def _last_row_per_instant(table: pd.DataFrame, entity: str) -> pd.DataFrame:
    return table.drop_duplicates([entity, EVENT_TIMESTAMP], keep="last", ignore_index=True)


def _micros(times: pd.Series) -> np.ndarray:
    return ((times - EPOCH) // ONE_MICROSECOND).to_numpy(dtype="int64")


def distinct_in_window(entity: pd.Series, times: pd.Series, values: pd.Series, window) -> np.ndarray:
    """For each row: how many distinct non-null ``values`` the row's entity had in (t - window, t].

    A value is in the window at t when one of its events lies in (t - W, t], i.e. when t
    falls in [e, e + W) for one of its event times e. Events of one (entity, value) less
    than W apart have overlapping such intervals: merged, they give disjoint presence
    intervals [start, end). The distinct count at t is then the number of the entity's
    intervals that have started (start <= t) less those that have ended (end <= t): one
    sweep over starts, ends and rows sorted by (entity, time), with starts and ends before
    the rows of the same instant. O(n log n), vectorised (a rolling ``nunique`` would
    call Python once per row).
    """
    entity_codes = pd.factorize(entity)[0]
    value_codes = pd.factorize(values)[0]  # -1: null, not a value (Spark's collect_set skips nulls)
    micros = _micros(times)
    window_micros = pd.Timedelta(window) // ONE_MICROSECOND

    known = value_codes >= 0
    order = np.lexsort((micros[known], value_codes[known], entity_codes[known]))
    run_entity = entity_codes[known][order]
    run_value = value_codes[known][order]
    run_micros = micros[known][order]
    starts_run = np.ones(len(order), dtype=bool)
    starts_run[1:] = ((run_entity[1:] != run_entity[:-1]) | (run_value[1:] != run_value[:-1])
                      | (run_micros[1:] - run_micros[:-1] >= window_micros))
    ends_run = np.append(starts_run[1:], True)
    interval_entity = run_entity[starts_run]
    interval_start = run_micros[starts_run]
    interval_end = run_micros[ends_run] + window_micros

    n_intervals, n_rows = len(interval_start), len(micros)
    sweep_entity = np.concatenate([interval_entity, interval_entity, entity_codes])
    sweep_micros = np.concatenate([interval_start, interval_end, micros])
    sweep_step = np.concatenate([np.ones(n_intervals, np.int64), -np.ones(n_intervals, np.int64),
                                 np.zeros(n_rows, np.int64)])
    is_row = np.concatenate([np.zeros(2 * n_intervals, np.int64), np.ones(n_rows, np.int64)])
    sweep = np.lexsort((is_row, sweep_micros, sweep_entity))
    present = np.cumsum(sweep_step[sweep])
    row_positions = sweep[is_row[sweep] == 1] - 2 * n_intervals
    counts = np.empty(n_rows, dtype=np.int64)
    counts[row_positions] = present[is_row[sweep] == 1]
    return counts


# ------------------------------------------------------------------ the tables
def user_transaction_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """``transformations.user_transactions.user_transaction_features`` (no lifetime baseline)."""
    events = _by_entity_and_time(
        transactions[["transaction_id", USER_ID, "merchant_id", "amount", "country", EVENT_TIME]]
        .drop_duplicates("transaction_id"), USER_ID)
    events["transaction"] = 1.0  # summed: counts every transaction, amount known or not
    windowed = events[[USER_ID, EVENT_TIME, "transaction", "amount"]]
    table = pd.DataFrame({USER_ID: events[USER_ID], EVENT_TIMESTAMP: events[EVENT_TIME]})

    for name, window in (("1h", WINDOW_1H), ("24h", WINDOW_24H), ("7d", WINDOW_7D)):
        trailing = _trailing(windowed, USER_ID, window)
        amount = trailing["amount"]
        table[f"txn_count_{name}"] = trailing["transaction"].sum().to_numpy().astype("int64")
        table[f"txn_amount_sum_{name}"] = amount.sum().fillna(0.0).to_numpy()
        table[f"txn_amount_mean_{name}"] = amount.mean().to_numpy()
        table[f"txn_amount_max_{name}"] = amount.max().to_numpy()
        table[f"txn_amount_std_{name}"] = amount.std().to_numpy()  # ddof=1, NaN with fewer than two

    table["txn_distinct_merchants_24h"] = distinct_in_window(events[USER_ID], events[EVENT_TIME],
                                                             events["merchant_id"], WINDOW_24H)
    table["txn_distinct_countries_24h"] = distinct_in_window(events[USER_ID], events[EVENT_TIME],
                                                             events["country"], WINDOW_24H)

    # amount / mean over (t - 7d, t): the 7-day window's known amounts less this instant's
    instant = _trailing(windowed, USER_ID, SAME_INSTANT)["amount"]
    instant_amount = instant.sum().to_numpy()   # NaN when no amount of the instant is known
    instant_known = instant.count().to_numpy()
    week = _trailing(windowed, USER_ID, WINDOW_7D)["amount"]
    prior_known = week.count().to_numpy() - instant_known
    prior_sum = week.sum().fillna(0.0).to_numpy() - np.nan_to_num(instant_amount)
    with np.errstate(divide="ignore", invalid="ignore"):
        prior_mean = np.where(prior_known > 0, prior_sum / prior_known, np.nan)
        table["txn_amount_to_mean_7d_ratio"] = np.where(prior_mean != 0, instant_amount / prior_mean, np.nan)

    table["txn_lifetime_count"] = events.groupby(USER_ID, sort=False).cumcount().to_numpy() + 1
    table["txn_lifetime_spend"] = events["amount"].fillna(0.0).groupby(events[USER_ID], sort=False).cumsum()

    table = _last_row_per_instant(table, USER_ID)
    # Rows are now distinct instants in time order per user: the previous row is the previous instant.
    micros = pd.Series(_micros(table[EVENT_TIMESTAMP]))
    table["txn_seconds_since_prev"] = micros.groupby(table[USER_ID], sort=False).diff() / 1_000_000
    return table[list(TABLE_COLUMNS["user_transaction_features"])]


def user_activity_features(activity: pd.DataFrame) -> pd.DataFrame:
    """``transformations.user_activity.user_activity_features``."""
    events = _by_entity_and_time(
        activity[["event_id", USER_ID, "activity_type", "success", EVENT_TIME]].drop_duplicates("event_id"),
        USER_ID)
    is_login = events["activity_type"] == "login"
    kinds = {
        "logins": is_login,
        "failed_logins": is_login & events["success"].eq(False),  # unknown success is no failure
        "page_views": events["activity_type"] == "page_view",
        "sessions": events["activity_type"] == "session_start",
    }
    flags = pd.DataFrame({USER_ID: events[USER_ID], EVENT_TIME: events[EVENT_TIME],
                          **{kind: flag.astype("float64") for kind, flag in kinds.items()}})
    table = pd.DataFrame({USER_ID: events[USER_ID], EVENT_TIMESTAMP: events[EVENT_TIME]})
    for name, window in (("1h", WINDOW_1H), ("24h", WINDOW_24H)):
        counts = _trailing(flags, USER_ID, window).sum()
        for kind in kinds:
            table[f"{kind}_{name}"] = counts[kind].to_numpy().astype("int64")
    table = _last_row_per_instant(table, USER_ID)
    return table[list(TABLE_COLUMNS["user_activity_features"])]


def merchant_features(transactions: pd.DataFrame, chargebacks: pd.DataFrame) -> pd.DataFrame:
    """``transformations.merchants.merchant_features``: chargebacks count at their arrival."""
    transaction_events = (transactions[["transaction_id", MERCHANT_ID, EVENT_TIME]]
                          .drop_duplicates("transaction_id")
                          .assign(transaction=1.0, chargeback=0.0))
    chargeback_events = (chargebacks[["chargeback_id", MERCHANT_ID, EVENT_TIME]]
                         .drop_duplicates("chargeback_id")
                         .assign(transaction=0.0, chargeback=1.0))
    columns = [MERCHANT_ID, EVENT_TIME, "transaction", "chargeback"]
    events = _by_entity_and_time(pd.concat([transaction_events[columns], chargeback_events[columns]],
                                           ignore_index=True), MERCHANT_ID)
    counts = _trailing(events, MERCHANT_ID, WINDOW_30D).sum()
    transaction_count = counts["transaction"].to_numpy().astype("int64")
    chargeback_count = counts["chargeback"].to_numpy().astype("int64")
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(transaction_count > 0, chargeback_count / transaction_count, np.nan)
    table = pd.DataFrame({
        MERCHANT_ID: events[MERCHANT_ID],
        EVENT_TIMESTAMP: events[EVENT_TIME],
        "merchant_txn_count_30d": transaction_count,
        "merchant_chargeback_count_30d": chargeback_count,
        "merchant_chargeback_rate_30d": rate,
    })
    return _last_row_per_instant(table, MERCHANT_ID)


# ------------------------------------------------------------------ the batch run
def compute_feature_tables(history_dir: Path, out_dir: Path, start: datetime, end: datetime,
                           now: datetime) -> None:
    """Raw Parquet -> valid events -> the three tables, rows in [start, end) -> ``<out_dir>/<table>/``."""
    transactions = valid_events(read_events(history_dir, TRANSACTIONS), TRANSACTIONS, now)
    activity = valid_events(read_events(history_dir, ACTIVITY), ACTIVITY, now)
    chargebacks = valid_events(read_events(history_dir, CHARGEBACKS), CHARGEBACKS, now)
    builds = {
        "user_transaction_features": lambda: user_transaction_features(transactions),
        "user_activity_features": lambda: user_activity_features(activity),
        "merchant_features": lambda: merchant_features(transactions, chargebacks),
    }
    for name, build in builds.items():
        table = build()
        in_period = (table[EVENT_TIMESTAMP] >= pd.Timestamp(start)) & (table[EVENT_TIMESTAMP] < pd.Timestamp(end))
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        table[in_period].to_parquet(folder / "part-0.parquet", index=False)
