"""The event generator: synthetic card transactions, user activity and (late) chargebacks.

    python -m jobs.generate_events history [--events 1000000] [--days 7] [--out URI] ...
    python -m jobs.generate_events live [--rate 1000] [--duration 60] [--out DIR] ...
    tessera generate history|live ...          (the same, through the console command)

**history** writes Parquet (or ``--format jsonl``) files under ``<out>/<event_type>/``
(optionally ``date=YYYY-MM-DD/`` sub-folders), on a local path or ``s3://bucket/prefix``.
**live** sends events at ``--rate`` events/s where the profile's ``events.source`` says:
to the Kafka topics (``kafka``, the default: one topic per event type, one record per
JSON line, keyed by the entity the event belongs to - the user for transactions and
activity, the merchant for chargebacks - and acknowledged by the broker window by
window, ``--file-interval`` seconds each), or (``files``, or ``--out DIR``) into
``<landing_dir>/<event_type>/``, one JSON-lines file per window, each appearing
atomically (written as a hidden ``.name.tmp`` and renamed; Spark's file source ignores
names starting with a dot). Both get the same lines, malformed records included.

What the data looks like
- ``--users`` users, each with a home country, one or two usual devices, favourite
  merchants, a preferred channel mix and a spending profile (lognormal amounts).
- Traffic follows a daily cycle (busy afternoons and evenings, quiet nights, slightly
  quieter weekends) with short bursts. Activity comes in sessions: ``session_start``,
  usually a login (sometimes after a failed attempt), then page views, all sharing a
  ``session_id``. Legitimate noise blurs the fraud signals on purpose: people travel,
  buy a new phone, make two purchases in a row, and sometimes buy something expensive.
- Fraud incidents hit a small share of transactions (``--fraud-rate``), in three
  patterns: *account takeover* (a new device in a new country, usually after failed
  logins, then a burst of expensive purchases), *card testing* (a few tiny amounts and
  then several larger ones within minutes at unfamiliar merchants) and *one big
  purchase* far above the user's usual amounts. Windowed features (counts and amount
  statistics over 1h/24h/7d, distinct countries and devices, time since the previous
  transaction, amount against the 7-day mean) separate them from normal traffic.
- Labels arrive late, as real ones do: most fraudulent transactions, and a few
  legitimate ones (friendly fraud), get a chargeback 1-30 days later. Chargebacks that
  would arrive after the generated period are dropped.

Guarantees
- Deterministic: the same arguments and ``--seed`` give byte-identical files (live
  mode: with ``--start-time``); another seed gives other data. Users, events, malformed
  records and late events draw from separate random streams, so switching malformed
  records on changes only the chosen records.
- ``--events N`` is exactly the number of transaction + activity records written
  (chargebacks come on top).
- ``--malformed-fraction f`` makes exactly ``round(f * N)`` of those records malformed,
  spread at random over the run and round-robin over the kinds the format can carry
  (reasons as in ``transformations.cleaning``): JSON lines carry ``broken_json``,
  ``missing_field``, ``wrong_type``, ``negative_amount`` (transactions) and
  ``future_timestamp`` (years after the period end, so any validator clock flags it);
  typed Parquet carries the last three only (a missing field is a null). Chargebacks
  are never malformed.
- Memory stays flat from 10k to 10M+ events: the period is cut into slices of about
  ``--chunk-events`` events (live: one slice per file), each generated with vectorised
  numpy, written and freed. Each slice gets its exact share of the events, in
  proportion to the expected traffic, and all of them lie inside its time window, so
  every file - and every ``date=`` partition - holds the events of its own window
  (a session or burst that would run past the end starts a little earlier instead).
  Only the chargebacks wait in a buffer, for their arrival time. (The user table grows
  with ``--users``, whose default is ``events / 200``: a few bytes per user.)

Live mode specifics
- Event times follow the clock (``--start-time`` or the wall clock); a file is renamed
  into place when the wall clock reaches the end of its window, so no event is ahead of
  the moment its file appears. With ``--file-interval`` of about a second, a session's
  or burst's minutes are squeezed into its window (counts per hour stay right).
- ``--late-fraction f`` makes exactly ``round(f * good records)`` events late: their
  ``event_time`` lies up to ``--max-lateness-s`` before the window of their file.
- Chargebacks arrive 1-30 days after their transaction, so a run shorter than a day
  writes none (they are counted as dropped).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema
from tqdm import tqdm

from plumbing.config import Config, add_profile_option, load_config
from plumbing.kafka import EventProducer, KafkaError, KafkaTopics, ensure_topics
from plumbing.lake import filesystem_and_root
from transformations import cleaning
from transformations.schemas import (
    ACTIVITY,
    ACTIVITY_TYPES,
    ALLOWED_VALUES,
    CHANNELS,
    CHARGEBACKS,
    EVENT_ENTITY_COLUMNS,
    EVENT_TYPES,
    SCHEMAS,
    TRANSACTIONS,
)
from transformations.times import as_utc

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
DAY_MS = 24 * 60 * MINUTE_MS
YEAR_MS = 365 * DAY_MS

COUNTRIES = np.array(["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "SE", "BR", "IN", "JP", "CA", "AU"])
CURRENCIES = np.array(["USD", "GBP", "EUR", "EUR", "EUR", "EUR", "EUR", "PLN", "SEK", "BRL", "INR", "JPY",
                       "CAD", "AUD"])
HOME_COUNTRY_WEIGHTS = np.array([22, 12, 12, 10, 7, 6, 5, 5, 3, 5, 5, 3, 3, 2], dtype=float)

LOGIN, PAGE_VIEW, SESSION_START = (ACTIVITY_TYPES.index(name) for name in ("login", "page_view", "session_start"))
WEB, APP = CHANNELS.index("web"), CHANNELS.index("app")  # what fraudsters use (never pos)
TAKEOVER, CARD_TESTING, BIG_AMOUNT = 0, 1, 2   # the fraud patterns

NO_SUCCESS = -1        # the success flag of an activity that is not a login (null)
NOT_MALFORMED = -1     # malformed_kind of a good record

# Which malformed kinds each output can carry, per event type.
JSON_KINDS = {
    TRANSACTIONS: (cleaning.BROKEN_JSON, cleaning.MISSING_FIELD, cleaning.WRONG_TYPE,
                   cleaning.NEGATIVE_AMOUNT, cleaning.FUTURE_TIMESTAMP, cleaning.UNKNOWN_VALUE),
    ACTIVITY: (cleaning.BROKEN_JSON, cleaning.MISSING_FIELD, cleaning.WRONG_TYPE, cleaning.FUTURE_TIMESTAMP,
               cleaning.UNKNOWN_VALUE),
}
TYPED_KINDS = {
    TRANSACTIONS: (cleaning.MISSING_FIELD, cleaning.NEGATIVE_AMOUNT, cleaning.FUTURE_TIMESTAMP),
    ACTIVITY: (cleaning.MISSING_FIELD, cleaning.FUTURE_TIMESTAMP),
}
# Columns whose JSON value can be made unreadable (a string column accepts anything).
WRONG_TYPE_COLUMNS = {TRANSACTIONS: ("amount", "event_time"), ACTIVITY: ("success", "event_time")}
# What a producer outside the contract sends (cleaning: unknown_value:<column>).
UNKNOWN_VALUES = {"currency": "XXX", "channel": "fax", "activity_type": "logout"}
KIND_CODES = {kind: code for code, kind in enumerate(cleaning.REJECT_KINDS)}


@dataclass(frozen=True)
class Settings:
    """Everything that shapes the generated data (not where it goes)."""

    seed: int = 42
    n_users: int = 1000
    transaction_share: float = 0.3        # of all events; the rest is activity
    fraud_rate: float = 0.01              # share of transactions that are fraudulent
    chargeback_rate: float = 0.85         # share of fraudulent transactions charged back
    false_chargeback_rate: float = 0.002  # share of legitimate transactions charged back
    malformed_fraction: float = 0.0
    malformed_kinds: dict = field(default_factory=lambda: JSON_KINDS)
    late_fraction: float = 0.0            # live mode: events arriving after their window
    max_lateness_ms: int = 60 * SECOND_MS


@dataclass(frozen=True)
class Slice:
    """A time window [start_ms, end_ms) and how many events (transactions + activity) it holds."""

    index: int
    start_ms: int
    end_ms: int
    n_events: int
    is_last: bool


# ============================================================== small numpy helpers
Columns = dict  # column name -> numpy array, all of one length: one batch of events


def _take(columns: Columns, index: np.ndarray) -> Columns:
    return {name: values[index] for name, values in columns.items()}


def _concat(first: Columns, second: Columns) -> Columns:
    return {name: np.concatenate([first[name], second[name]]) for name in first}


def _length(columns: Columns) -> int:
    return len(next(iter(columns.values())))


def _draw(cdf: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """n indices drawn with the probabilities whose cumulative sum is ``cdf``."""
    return np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")


def _groups(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of the given sizes laid end to end: each row's group and rank in it."""
    group = np.repeat(np.arange(len(sizes)), sizes)
    first_row = np.cumsum(sizes) - sizes
    rank = np.arange(int(sizes.sum())) - np.repeat(first_row, sizes)
    return group, rank


def _cumsum_within_groups(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Running sums that restart at each group (groups are non-empty)."""
    total = np.cumsum(values)
    first_row = np.cumsum(sizes) - sizes
    return total - np.repeat((total - values)[first_row], sizes)


def _place_groups(starts: np.ndarray, gaps: np.ndarray, sizes: np.ndarray, window: Slice) -> np.ndarray:
    """Times of grouped events (a session, a fraud burst) from each group's start and the
    gaps between its events, kept inside the window: a group that would run past the end
    starts earlier, and one longer than the whole window is squeezed into it.

    Why inside: every file (and ``date=`` partition) then holds exactly its window's
    events, and live files keep a steady rate. History windows last hours, so only
    groups starting minutes before the end move; live windows last about a second, so
    there a session's minutes shrink to that second (counts per hour are unchanged).
    """
    if len(sizes) == 0:
        return np.zeros(0, dtype=np.int64)
    group = np.repeat(np.arange(len(sizes)), sizes)
    offsets = _cumsum_within_groups(gaps.astype(np.int64), sizes)
    last_row = np.cumsum(sizes) - 1
    room = window.end_ms - 1 - window.start_ms
    squeeze = np.minimum(1.0, room / np.maximum(offsets[last_row], 1))
    offsets = (offsets * squeeze[group]).astype(np.int64)
    starts = np.clip(starts, window.start_ms, window.end_ms - 1 - offsets[last_row])
    return starts[group] + offsets


def _other_country(home: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A country that is not ``home``, uniformly."""
    return (home + 1 + rng.integers(0, len(COUNTRIES) - 1, len(home))) % len(COUNTRIES)


def _new_devices(rng: np.random.Generator, n: int) -> np.ndarray:
    """Device codes nobody used before (10 digits; usual devices have at most 8)."""
    return rng.integers(10**9, 10**10, n)


class ExactSpreader:
    """Spreads exactly ``chosen`` picks over ``total`` items that arrive in batches.

    Each batch gets a hypergeometric share of what is left, so the picks are uniformly
    random over the whole run, the total is exact, and no list of all positions is kept.
    """

    def __init__(self, total: int, chosen: int, rng: np.random.Generator):
        self.items_left, self.picks_left, self.rng = total, chosen, rng

    def take(self, n: int) -> int:
        n = min(n, self.items_left)
        picks = 0
        if n > 0 and self.picks_left > 0:
            picks = int(self.rng.hypergeometric(self.picks_left, self.items_left - self.picks_left, n))
        self.items_left -= n
        self.picks_left -= picks
        return picks


# ================================================================ time and traffic
def daily_intensity(minute_of_day: np.ndarray) -> np.ndarray:
    """Relative traffic by UTC minute of day: quiet nights, busy afternoons and evenings."""
    hour = minute_of_day / 60.0
    return 0.15 + np.exp(-0.5 * ((hour - 12.5) / 3.5) ** 2) + 0.7 * np.exp(-0.5 * ((hour - 19.5) / 2.0) ** 2)


def _weekday_factor(day_start_ms: int) -> float:
    weekday = (day_start_ms // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    return 0.85 if weekday >= 5 else 1.0


def _segments(start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[start, end) cut at minute boundaries: the pieces and their expected traffic."""
    first_boundary = (start_ms // MINUTE_MS + 1) * MINUTE_MS
    inner = np.arange(first_boundary, end_ms, MINUTE_MS, dtype=np.int64)
    starts = np.concatenate([[start_ms], inner]).astype(np.int64)
    ends = np.concatenate([inner, [end_ms]]).astype(np.int64)
    weights = daily_intensity((starts % DAY_MS) // MINUTE_MS) * (ends - starts)
    return starts, ends, weights


def expected_traffic(start_ms: int, end_ms: int) -> float:
    return float(_segments(start_ms, end_ms)[2].sum()) * _weekday_factor(start_ms - start_ms % DAY_MS)


def sample_times(rng: np.random.Generator, n: int, start_ms: int, end_ms: int,
                 bursts_per_day: float = 3.0, burst_share: float = 0.08) -> np.ndarray:
    """n instants in [start, end) following the daily cycle, a few percent in short bursts."""
    starts, ends, weights = _segments(start_ms, end_ms)
    piece = _draw(np.cumsum(weights), rng, n)
    times = starts[piece] + (rng.random(n) * (ends - starts)[piece]).astype(np.int64)
    n_bursts = rng.poisson(bursts_per_day * (end_ms - start_ms) / DAY_MS)
    if n_bursts > 0 and n > 0:
        # A flash sale or a newsletter: many users act within a few minutes.
        centres = starts[_draw(np.cumsum(weights), rng, n_bursts)]
        in_burst = np.flatnonzero(rng.random(n) < burst_share)
        jitter = rng.normal(0.0, 4 * MINUTE_MS, len(in_burst)).astype(np.int64)
        burst_times = centres[rng.integers(0, n_bursts, len(in_burst))] + jitter
        inside = (burst_times >= start_ms) & (burst_times < end_ms)  # the others keep their time
        times[in_burst[inside]] = burst_times[inside]
    return times


# ===================================================================== the people
class Population:
    """The users and merchants: fixed for a run, drawn from their own random stream."""

    def __init__(self, n_users: int, rng: np.random.Generator):
        self.n_users = n_users
        self.n_merchants = max(20, n_users // 5)
        self.home_country = _draw(np.cumsum(HOME_COUNTRY_WEIGHTS), rng, n_users)
        self.n_devices = 1 + (rng.random(n_users) < 0.45).astype(np.int64)
        # Spending: lognormal amounts around a personal median exp(mu) (~25 on average).
        self.amount_mu = rng.normal(3.2, 0.7, n_users)
        self.amount_sigma = rng.uniform(0.25, 0.7, n_users)
        # Some users are far more active than others.
        self.activity_cdf = np.cumsum(rng.lognormal(0.0, 0.8, n_users))
        self.channel_cdf = np.cumsum(rng.dirichlet([3.0, 4.0, 2.0], n_users), axis=1)
        self.merchant_cdf = np.cumsum(1.0 / np.arange(1, self.n_merchants + 1) ** 0.8)  # a few big merchants
        self.favourite_merchants = _draw(self.merchant_cdf, rng, n_users * 6).reshape(n_users, 6)
        user_width = max(6, len(str(n_users - 1)))
        merchant_width = max(5, len(str(self.n_merchants - 1)))
        self.user_ids = _prefixed("u", np.arange(n_users), user_width)
        self.merchant_ids = _prefixed("m", np.arange(self.n_merchants), merchant_width)

    def median_amount(self, user: np.ndarray) -> np.ndarray:
        return np.exp(self.amount_mu[user])

    def usual_device(self, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Device codes of the users' own phones and laptops: 2 * user + (0 or 1)."""
        return 2 * user + (rng.random(len(user)) * self.n_devices[user]).astype(np.int64)

    def channel(self, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (rng.random(len(user))[:, None] > self.channel_cdf[user]).sum(axis=1).clip(0, len(CHANNELS) - 1)


def _prefixed(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """"u000042"-style ids, built by Arrow in one vectorised call."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


# ===================================================================== the events
class EventGenerator:
    """Generates the events slice by slice, deterministically, in constant memory.

    State carried between slices (all small): id counters, chargebacks waiting for
    their arrival time, the spreaders that make the malformed and late counts exact.
    """

    def __init__(self, settings: Settings, total_events: int, period_start_ms: int, period_end_ms: int):
        self.settings = settings
        self.period_end_ms = period_end_ms
        users_rng, self.rng, malformed_rng, late_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(settings.seed).spawn(4))
        self.population = Population(settings.n_users, users_rng)
        # Ids carry a run tag, so runs with another seed or clock never collide.
        self.run_tag = hashlib.sha256(f"{settings.seed}:{period_start_ms}".encode()).hexdigest()[:6]
        self.next_id = {"transaction": 0, "event": 0, "session": 0, "chargeback": 0}
        self.pending_chargebacks = _empty_chargebacks()
        self.n_malformed = round(settings.malformed_fraction * total_events)
        self.malformed_spreader = ExactSpreader(total_events, self.n_malformed, malformed_rng)
        self.malformed_rng = malformed_rng
        self.malformed_round_robin: Counter[str] = Counter()  # next kind per event type
        self.n_late = round(settings.late_fraction * (total_events - self.n_malformed))
        self.late_spreader = ExactSpreader(total_events - self.n_malformed, self.n_late, late_rng)
        self.late_rng = late_rng
        self.dropped_chargebacks = 0

    # ------------------------------------------------------------------ one slice
    def generate(self, window: Slice) -> tuple[Columns, Columns, Columns]:
        """The transactions, activity and chargebacks to write for this window."""
        s = self.settings
        n_transactions = round(window.n_events * s.transaction_share)
        n_activity = window.n_events - n_transactions
        fraud_tx, fraud_act = self._fraud_incidents(window, n_transactions, n_activity)
        legit_tx = self._legit_transactions(window, n_transactions - _length(fraud_tx))
        legit_act = self._sessions(window, n_activity - _length(fraud_act))
        transactions = self._number(_by_time(_concat(fraud_tx, legit_tx)), "transaction")
        activity = self._number(_by_time(_concat(fraud_act, legit_act)), "event")
        self._choose_malformed(transactions, activity)
        self._make_late(transactions, activity, window)   # among the good records
        self._schedule_chargebacks(transactions)          # from the true times
        chargebacks = self._due_chargebacks(window)
        self._corrupt_typed_values(transactions)
        self._corrupt_typed_values(activity)
        return transactions, activity, chargebacks

    def _number(self, columns: Columns, kind: str) -> Columns:
        n = _length(columns)
        columns["seq"] = np.arange(self.next_id[kind], self.next_id[kind] + n, dtype=np.int64)
        self.next_id[kind] += n
        return columns

    # ------------------------------------------------------------------ fraud
    def _fraud_incidents(self, window: Slice, max_transactions: int, max_activity: int) -> tuple[Columns, Columns]:
        rng, pop = self.rng, self.population
        mean_transactions_per_incident = 0.4 * 4 + 0.3 * 7 + 0.3 * 1
        n = rng.poisson(max_transactions * self.settings.fraud_rate / mean_transactions_per_incident)
        pattern = _draw(np.cumsum([0.4, 0.3, 0.3]), rng, n)
        victim = rng.integers(0, pop.n_users, n)
        start = window.start_ms + (rng.random(n) * (window.end_ms - window.start_ms)).astype(np.int64)
        home = pop.home_country[victim]
        takeover, testing, big = pattern == TAKEOVER, pattern == CARD_TESTING, pattern == BIG_AMOUNT

        n_tx = np.select([takeover, testing], [rng.integers(2, 7, n), rng.integers(4, 11, n)], 1)
        new_device = takeover | (testing & (rng.random(n) < 0.5)) | (big & (rng.random(n) < 0.6))
        abroad = takeover | (testing & (rng.random(n) < 0.4)) | (big & (rng.random(n) < 0.5))
        # An attacker on a new device logs in first, often failing a few times.
        has_session = takeover | (big & new_device)
        n_failed = np.where(rng.random(n) < 0.25, 0, rng.integers(1, 5, n)) * has_session
        n_views = rng.integers(0, 3, n) * takeover
        n_act = has_session * (2 + n_failed + n_views)  # session_start, failures, login, views

        # Keep the incidents that fit in this slice's budget.
        fits = (np.cumsum(n_tx) <= max_transactions) & (np.cumsum(n_act) <= max_activity)
        keep = np.flatnonzero(np.cumprod(fits))
        pattern, victim, start, home = pattern[keep], victim[keep], start[keep], home[keep]
        n_tx, n_act, n_failed = n_tx[keep], n_act[keep], n_failed[keep]
        new_device, abroad, testing = new_device[keep], abroad[keep], testing[keep]
        n = len(keep)
        device = np.where(new_device, _new_devices(rng, n), pop.usual_device(victim, rng))
        country = np.where(abroad, _other_country(home, rng), home)
        session = self._session_ids(n)

        # One timeline per incident: its activity first, then its transactions.
        sizes = n_act + n_tx
        incident, rank = _groups(sizes)
        is_activity = rank < n_act[incident]
        gap = np.where(rank == 0, 0, rng.uniform(3, 25, len(rank)) * SECOND_MS)
        first_tx = rank == n_act[incident]
        gap = np.where(first_tx & (n_act[incident] > 0), rng.uniform(30, 180, len(rank)) * SECOND_MS, gap)
        later_tx = (~is_activity) & ~first_tx
        tx_gap_mean = np.where(testing[incident], 30, 90) * SECOND_MS
        gap = np.where(later_tx, rng.exponential(1.0, len(rank)) * tx_gap_mean, gap)
        times = _place_groups(start, gap, sizes, window)

        tx_rows = np.flatnonzero(~is_activity)
        tx_incident = incident[tx_rows]
        tx_user = victim[tx_incident]
        tx_rank = rank[tx_rows] - n_act[tx_incident]
        median = pop.median_amount(tx_user)
        amount = np.select(
            [pattern[tx_incident] == TAKEOVER, pattern[tx_incident] == CARD_TESTING],
            [median * rng.lognormal(np.log(6.0), 0.5, len(tx_rows)),
             np.where(tx_rank < 2, rng.uniform(0.5, 2.5, len(tx_rows)),
                      median * rng.lognormal(np.log(2.5), 0.5, len(tx_rows)))],
            median * rng.lognormal(np.log(15.0), 0.4, len(tx_rows)))
        transactions = {
            "user": tx_user,
            "merchant": _draw(pop.merchant_cdf, rng, len(tx_rows)),  # not the user's favourites
            "amount": _money(amount),
            "country": country[tx_incident],
            "device": device[tx_incident],
            "channel": np.where(testing[tx_incident] | (rng.random(len(tx_rows)) < 0.6), WEB, APP),
            "time": times[tx_rows],
            "fraud": np.ones(len(tx_rows), dtype=bool),
        }

        act_rows = np.flatnonzero(is_activity)
        act_incident = incident[act_rows]
        act_rank = rank[act_rows]
        failed = n_failed[act_incident]
        kind = np.select([act_rank == 0, act_rank <= failed + 1], [SESSION_START, LOGIN], PAGE_VIEW)
        success = np.select([act_rank == 0, act_rank <= failed, act_rank == failed + 1],
                            [NO_SUCCESS, 0, 1], NO_SUCCESS)
        activity = {
            "user": victim[act_incident],
            "kind": kind,
            "success": success,
            "session": session[act_incident],
            "device": device[act_incident],
            "country": country[act_incident],
            "time": times[act_rows],
        }
        return transactions, activity

    # ------------------------------------------------------------------ normal life
    def _legit_transactions(self, window: Slice, n: int) -> Columns:
        rng, pop = self.rng, self.population
        # About 5% are a second purchase a few minutes after another one of the same user.
        n_repeat = int(n * 0.05) if n > 1 else 0
        n_base = n - n_repeat
        base_user = _draw(pop.activity_cdf, rng, n_base)
        base_time = sample_times(rng, n_base, window.start_ms, window.end_ms)
        parent = rng.integers(0, max(n_base, 1), n_repeat)
        user = np.concatenate([base_user, base_user[parent]])
        gap = (rng.exponential(3.0, n_repeat) * MINUTE_MS).astype(np.int64)
        after = base_time[parent] + gap
        before = base_time[parent] - gap  # the other one of the pair, when "after" leaves the window
        repeat_time = np.where(after < window.end_ms, after, np.maximum(before, window.start_ms))
        times = np.concatenate([base_time, repeat_time])
        n = len(user)
        favourite = pop.favourite_merchants[user, rng.integers(0, 6, n)]
        merchant = np.where(rng.random(n) < 0.75, favourite, _draw(pop.merchant_cdf, rng, n))
        amount = np.exp(pop.amount_mu[user] + pop.amount_sigma[user] * rng.standard_normal(n))
        # Now and then a splurge (a new TV, a flight) far above the usual amounts, as fraud is.
        splurge = rng.random(n) < 0.005
        amount = np.where(splurge, pop.median_amount(user) * rng.lognormal(np.log(8.0), 0.5, n), amount)
        home = pop.home_country[user]
        travelling = rng.random(n) < 0.004
        new_phone = rng.random(n) < 0.003
        return {
            "user": user,
            "merchant": merchant,
            "amount": _money(amount),
            "country": np.where(travelling, _other_country(home, rng), home),
            "device": np.where(new_phone, _new_devices(rng, n), pop.usual_device(user, rng)),
            "channel": pop.channel(user, rng),
            "time": times,
            "fraud": np.zeros(n, dtype=bool),
        }

    def _sessions(self, window: Slice, n_events: int) -> Columns:
        """Sessions of activity until exactly ``n_events`` events (the last one cut short)."""
        rng, pop = self.rng, self.population
        # session_start, [failed logins, login], page views; about 6 events on average
        n_sessions = max(1, int(n_events / 6 * 1.2) + 8)
        has_login = rng.random(n_sessions) < 0.7
        n_failed = np.where(rng.random(n_sessions) < 0.06, rng.integers(1, 3, n_sessions), 0) * has_login
        n_views = rng.geometric(0.25, n_sessions)
        sizes = 1 + has_login * (1 + n_failed) + n_views
        while sizes.sum() < n_events:  # rare: not enough sessions drawn, add as many again
            sizes = np.concatenate([sizes, sizes])
            has_login, n_failed = np.concatenate([has_login, has_login]), np.concatenate([n_failed, n_failed])
        ends = np.cumsum(sizes)
        n_sessions = int(np.searchsorted(ends, n_events, side="left")) + 1 if n_events > 0 else 0
        sizes = sizes[:n_sessions].copy()
        if n_sessions:
            sizes[-1] -= ends[n_sessions - 1] - n_events
        has_login, n_failed = has_login[:n_sessions], n_failed[:n_sessions]

        user = _draw(pop.activity_cdf, rng, n_sessions)
        start = sample_times(rng, n_sessions, window.start_ms, window.end_ms)
        home = pop.home_country[user]
        device = np.where(rng.random(n_sessions) < 0.01, _new_devices(rng, n_sessions), pop.usual_device(user, rng))
        country = np.where(rng.random(n_sessions) < 0.004, _other_country(home, rng), home)
        session = self._session_ids(n_sessions)

        group, rank = _groups(sizes)
        logins = has_login[group] * (1 + n_failed[group])  # login rows, the last one succeeds
        is_login = (rank >= 1) & (rank <= logins)
        kind = np.select([rank == 0, is_login], [SESSION_START, LOGIN], PAGE_VIEW)
        success = np.select([is_login & (rank < logins), is_login], [0, 1], NO_SUCCESS)
        gap = np.select([rank == 0, is_login], [0.0, rng.uniform(2, 15, len(rank))],
                        rng.exponential(25.0, len(rank))) * SECOND_MS
        return {
            "user": user[group],
            "kind": kind,
            "success": success,
            "session": session[group],
            "device": device[group],
            "country": country[group],
            "time": _place_groups(start, gap, sizes, window),
        }

    def _session_ids(self, n: int) -> np.ndarray:
        first = self.next_id["session"]
        self.next_id["session"] += n
        return np.arange(first, first + n, dtype=np.int64)

    # ------------------------------------------------------------------ labels
    def _schedule_chargebacks(self, transactions: Columns) -> None:
        """Decide now which transactions get a chargeback, and when it will arrive."""
        s, rng = self.settings, self.rng
        probability = np.where(transactions["fraud"], s.chargeback_rate, s.false_chargeback_rate)
        rows = np.flatnonzero(rng.random(len(probability)) < probability)
        # 1 to 30 days later, most within the first week (median about 4.5 days).
        delay_days = 1.0 + np.minimum(rng.exponential(5.0, len(rows)), 29.0)
        delay = (delay_days * DAY_MS).astype(np.int64)
        first = self.next_id["chargeback"]
        self.next_id["chargeback"] += len(rows)
        scheduled = {
            "seq": np.arange(first, first + len(rows), dtype=np.int64),
            "transaction_seq": transactions["seq"][rows],
            "user": transactions["user"][rows],
            "merchant": transactions["merchant"][rows],
            "transaction_time": transactions["time"][rows],
            "time": transactions["time"][rows] + delay,
            "fraud": transactions["fraud"][rows],
        }
        self.pending_chargebacks = _concat(self.pending_chargebacks, scheduled)

    def _due_chargebacks(self, window: Slice) -> Columns:
        pending = _take(self.pending_chargebacks, np.argsort(self.pending_chargebacks["time"], kind="stable"))
        now = np.searchsorted(pending["time"], window.end_ms, side="left")
        due = _take(pending, np.arange(now))
        self.pending_chargebacks = _take(pending, np.arange(now, _length(pending)))
        if window.is_last:  # they would arrive after the period: dropped, like real label delay
            self.dropped_chargebacks += _length(self.pending_chargebacks)
            self.pending_chargebacks = _empty_chargebacks()
        return due

    # ------------------------------------------------------------------ defects
    def _choose_malformed(self, transactions: Columns, activity: Columns) -> None:
        """Mark this window's exact share of malformed records: which kind, which column."""
        rng = self.malformed_rng
        n_tx, n_act = _length(transactions), _length(activity)
        n_bad = self.malformed_spreader.take(n_tx + n_act)
        rows = np.sort(rng.choice(n_tx + n_act, n_bad, replace=False)) if n_bad else np.zeros(0, np.int64)
        for event_type, columns, own_rows in ((TRANSACTIONS, transactions, rows[rows < n_tx]),
                                              (ACTIVITY, activity, rows[rows >= n_tx] - n_tx)):
            n = _length(columns)
            columns["malformed_kind"] = np.full(n, NOT_MALFORMED, dtype=np.int8)
            columns["malformed_column"] = np.full(n, -1, dtype=np.int16)
            if len(own_rows) == 0:
                continue
            # Round-robin over the kinds this output can carry, continued across windows.
            kinds = np.array([KIND_CODES[k] for k in self.settings.malformed_kinds[event_type]], dtype=np.int8)
            turn = self.malformed_round_robin[event_type] + np.arange(len(own_rows))
            self.malformed_round_robin[event_type] += len(own_rows)
            kind = kinds[turn % len(kinds)]
            columns["malformed_kind"][own_rows] = kind
            schema = SCHEMAS[event_type]
            required = np.array([i for i, f in enumerate(schema.fields) if not f.nullable])
            wrong = np.array([schema.names.index(name) for name in WRONG_TYPE_COLUMNS[event_type]])
            unknown = np.array([schema.names.index(name) for name in ALLOWED_VALUES[event_type]])
            column = np.select(
                [kind == KIND_CODES[cleaning.MISSING_FIELD], kind == KIND_CODES[cleaning.WRONG_TYPE],
                 kind == KIND_CODES[cleaning.UNKNOWN_VALUE]],
                [required[rng.integers(0, len(required), len(own_rows))],
                 wrong[rng.integers(0, len(wrong), len(own_rows))],
                 unknown[rng.integers(0, len(unknown), len(own_rows))]], -1)
            columns["malformed_column"][own_rows] = column

    def _corrupt_typed_values(self, columns: Columns) -> None:
        """Negative amounts and far-future times are values; the other kinds are applied
        when the table (missing field -> null) or the JSON text is built."""
        kind = columns["malformed_kind"]
        negative = kind == KIND_CODES[cleaning.NEGATIVE_AMOUNT]
        if negative.any():
            columns["amount"] = np.where(negative, -columns["amount"], columns["amount"])
        future = np.flatnonzero(kind == KIND_CODES[cleaning.FUTURE_TIMESTAMP])
        if len(future):
            # A device clock years ahead: any validator clock flags it for decades.
            years_ahead = self.malformed_rng.uniform(10, 50, len(future))
            columns["time"][future] = self.period_end_ms + (years_ahead * YEAR_MS).astype(np.int64)

    def _make_late(self, transactions: Columns, activity: Columns, window: Slice) -> None:
        """Live mode: some good events arrive late: their time lies before this window."""
        n_tx = _length(transactions)
        good = np.flatnonzero(np.concatenate([transactions["malformed_kind"], activity["malformed_kind"]])
                              == NOT_MALFORMED)
        n_late = self.late_spreader.take(len(good))
        rows = np.sort(self.late_rng.choice(good, n_late, replace=False)) if n_late else np.zeros(0, np.int64)
        lateness = self.late_rng.integers(1, self.settings.max_lateness_ms + 1, n_late)
        for columns, in_this, offset in ((transactions, rows < n_tx, 0), (activity, rows >= n_tx, n_tx)):
            columns["late"] = np.zeros(_length(columns), dtype=bool)
            own_rows = rows[in_this] - offset
            columns["late"][own_rows] = True
            columns["time"][own_rows] = window.start_ms - lateness[in_this]


def _by_time(columns: Columns) -> Columns:
    return _take(columns, np.argsort(columns["time"], kind="stable"))


def _money(amount: np.ndarray) -> np.ndarray:
    return np.round(np.maximum(amount, 0.5), 2)


def _empty_chargebacks() -> Columns:
    ints = np.zeros(0, dtype=np.int64)
    return {"seq": ints, "transaction_seq": ints, "user": ints, "merchant": ints, "transaction_time": ints,
            "time": ints, "fraud": np.zeros(0, dtype=bool)}


# ============================================================ columns -> Arrow / JSON
def arrow_schema(event_type: str, all_nullable: bool = False) -> pa.Schema:
    """The declared schema in Arrow (timestamps as UTC microseconds). ``all_nullable`` when
    malformed records are written: a missing field is a null in a required column."""
    schema = to_arrow_schema(SCHEMAS[event_type], timezone="UTC")
    if all_nullable:
        schema = pa.schema([f.with_nullable(True) for f in schema])
    return schema


def _timestamps(ms: np.ndarray) -> pa.Array:
    return pa.array(ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")).cast(pa.timestamp("us", tz="UTC"))


class TableBuilder:
    """Turns generated columns into Arrow tables of the declared schemas (and JSON lines)."""

    def __init__(self, population: Population, run_tag: str, all_nullable: bool):
        self.population = population
        self.run_tag = run_tag
        self.all_nullable = all_nullable
        self.countries = pa.array(COUNTRIES)
        self.currencies = pa.array(CURRENCIES)
        self.channels = pa.array(CHANNELS)
        self.activity_types = pa.array(ACTIVITY_TYPES)

    def _ids(self, letter: str, seq: np.ndarray) -> pa.Array:
        return _prefixed(f"{letter}{self.run_tag}-", seq, 9)

    def _devices(self, codes: np.ndarray) -> pa.Array:
        return _prefixed("d", codes, 8)

    def transactions(self, c: Columns) -> pa.Table:
        pop = self.population
        arrays = {
            "transaction_id": self._ids("t", c["seq"]),
            "user_id": pop.user_ids.take(c["user"]),
            "merchant_id": pop.merchant_ids.take(c["merchant"]),
            "amount": pa.array(c["amount"], pa.float64()),
            "currency": self.currencies.take(c["country"]),
            "country": self.countries.take(c["country"]),
            "device_id": self._devices(c["device"]),
            "channel": self.channels.take(c["channel"]),
            "event_time": _timestamps(c["time"]),
        }
        return self._table(TRANSACTIONS, arrays, c)

    def activity(self, c: Columns) -> pa.Table:
        pop = self.population
        success = c["success"]
        session = c["session"]
        arrays = {
            "event_id": self._ids("a", c["seq"]),
            "user_id": pop.user_ids.take(c["user"]),
            "activity_type": self.activity_types.take(c["kind"]),
            "success": pa.array(success == 1, pa.bool_(), mask=success == NO_SUCCESS),
            "session_id": self._ids("s", session),
            "device_id": self._devices(c["device"]),
            "country": self.countries.take(c["country"]),
            "event_time": _timestamps(c["time"]),
        }
        return self._table(ACTIVITY, arrays, c)

    def chargebacks(self, c: Columns) -> pa.Table:
        pop = self.population
        arrays = {
            "chargeback_id": self._ids("c", c["seq"]),
            "transaction_id": self._ids("t", c["transaction_seq"]),
            "user_id": pop.user_ids.take(c["user"]),
            "merchant_id": pop.merchant_ids.take(c["merchant"]),
            "transaction_time": _timestamps(c["transaction_time"]),
            "event_time": _timestamps(c["time"]),
        }
        return self._table(CHARGEBACKS, arrays, c)

    def _table(self, event_type: str, arrays: dict[str, pa.Array], c: Columns) -> pa.Table:
        schema = arrow_schema(event_type, self.all_nullable)
        if "malformed_kind" in c:  # a missing field: null where the value should be
            missing = c["malformed_kind"] == KIND_CODES[cleaning.MISSING_FIELD]
            for index, name in enumerate(schema.names):
                rows = missing & (c["malformed_column"] == index)
                if rows.any():
                    arrays[name] = pc.if_else(pa.array(rows), pa.scalar(None, arrays[name].type), arrays[name])
        return pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)

    # ------------------------------------------------------------------ JSON lines
    def json_lines(self, event_type: str, table: pa.Table, c: Columns, rng: np.random.Generator) -> bytes:
        """The table as JSON lines (UTF-8, one object per line), with the JSON-only defects.

        Built by one Arrow string join over all columns, not a Python loop per record:
        our values need no escaping (ids, codes, numbers, ISO times). A null in a
        required column (a missing field) drops the key; a null in a nullable column is
        written as null.
        """
        schema = SCHEMAS[event_type]
        parts: list = ["{"]
        for position, f in enumerate(schema.fields):
            key = ("" if position == 0 else ",") + f'"{f.name}":'
            values = table.column(f.name).combine_chunks()
            opening, text, closing = _json_value(values, f.dataType)
            if values.null_count == 0:
                parts += [key + opening, text, closing]
            else:
                piece = pc.binary_join_element_wise(key + opening, text, closing, "")
                parts.append(pc.fill_null(piece, f"{key}null" if f.nullable else ""))
        parts.append("}\n")
        lines = pc.binary_join_element_wise(*parts, "")

        kinds = c.get("malformed_kind")
        if kinds is not None:
            # Defects of the text itself, done per line in Python (they are few). A missing
            # first field left "{," behind: repaired on the same path.
            missing_first = (kinds == KIND_CODES[cleaning.MISSING_FIELD]) & (c["malformed_column"] == 0)
            text_defects = np.flatnonzero((kinds == KIND_CODES[cleaning.BROKEN_JSON])
                                          | (kinds == KIND_CODES[cleaning.WRONG_TYPE])
                                          | (kinds == KIND_CODES[cleaning.UNKNOWN_VALUE]) | missing_first)
            if len(text_defects):
                originals = lines.take(pa.array(text_defects)).to_pylist()
                replaced = [_corrupt_json(line[:-1].replace("{,", "{", 1), int(kinds[row]),
                                          int(c["malformed_column"][row]), schema, rng) + "\n"
                            for line, row in zip(originals, text_defects, strict=True)]
                mask = np.zeros(len(lines), dtype=bool)
                mask[text_defects] = True
                lines = pc.replace_with_mask(lines, pa.array(mask), pa.array(replaced, pa.string()))
        return _concatenated(lines)


def _json_value(values: pa.Array, data_type: T.DataType) -> tuple[str, pa.Array, str]:
    """(text before, the values as text, text after) of a column's JSON values."""
    if isinstance(data_type, T.StringType):
        return '"', values, '"'
    if isinstance(data_type, T.TimestampType):  # ISO-8601 with offset, millisecond precision
        # Arrow prints a zone-less timestamp as "2026-01-01 00:22:50.199" (the UTC wall
        # time here) ten times faster than strftime; only the "T" is missing.
        text = pc.replace_substring(pc.cast(values, pa.timestamp("ms")).cast(pa.string()), " ", "T")
        return '"', text, '+00:00"'
    return "", pc.cast(values, pa.string()), ""  # numbers and booleans print as JSON literals


def _corrupt_json(line: str, kind_code: int, column: int, schema: T.StructType, rng: np.random.Generator) -> str:
    kind = cleaning.REJECT_KINDS[kind_code]
    if kind == cleaning.MISSING_FIELD:
        return line  # already without the key
    if kind == cleaning.BROKEN_JSON:
        # A producer that died mid-write: the line stops before its closing brace.
        return line[: int(rng.integers(1, len(line) - 1))]
    record = json.loads(line)
    name = schema.names[column]
    if kind == cleaning.UNKNOWN_VALUE:
        record[name] = UNKNOWN_VALUES[name]
    elif name == "amount":
        record[name] = f"{record[name]:.2f}".replace(".", ",")   # "12,50": a locale bug
    elif name == "success":
        record[name] = "unknown"
    else:  # a timestamp in a local day-first format, without offset
        record[name] = dt.datetime.fromisoformat(record[name]).strftime("%d/%m/%Y %H:%M:%S")
    return json.dumps(record, separators=(",", ":"))


def _concatenated(lines: pa.Array) -> bytes:
    """All strings of an Arrow array back to back: its data buffer, no per-line Python."""
    if len(lines) == 0:
        return b""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset: lines.offset + len(lines) + 1]
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()


# ===================================================================== outputs
def open_filesystem(uri: str, cfg=None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it for a local path or s3://bucket/prefix."""
    if not uri.startswith(("s3://", "s3a://")):
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    cfg = cfg if cfg is not None else load_config()
    return filesystem_and_root(uri, cfg.storage_options(uri))


class HistoryWriter:
    """Parquet or JSON-lines files under <out>/<event_type>/[date=YYYY-MM-DD/]part-NNNNN.<ext>."""

    def __init__(self, out: str, fmt: str, partition_by_date: bool, overwrite: bool, cfg=None):
        self.out, self.fmt, self.partition_by_date = out, fmt, partition_by_date
        self.fs, self.root = open_filesystem(out, cfg)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.files = 0
        for event_type in EVENT_TYPES:
            folder = f"{self.root}/{event_type}"
            existing = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True))
            if any(info.type == pafs.FileType.File for info in existing):
                if not overwrite:
                    raise FileExistsError(f"{out}/{event_type} already holds files; pass --overwrite to replace them")
                self.fs.delete_dir_contents(folder, missing_dir_ok=True)

    def write(self, event_type: str, window: Slice, table: pa.Table, json_bytes: bytes | None) -> None:
        if table.num_rows == 0:
            return
        folder = f"{self.root}/{event_type}"
        if self.partition_by_date:
            day = dt.datetime.fromtimestamp(window.start_ms / 1000, dt.timezone.utc).date()
            folder += f"/date={day.isoformat()}"
        if self.is_local:  # S3 has no folders to create
            self.fs.create_dir(folder, recursive=True)
        path = f"{folder}/part-{window.index:05d}.{'parquet' if self.fmt == 'parquet' else 'jsonl'}"
        if self.fmt == "parquet":
            pq.write_table(table, path, filesystem=self.fs)
        else:
            with self.fs.open_output_stream(path) as stream:
                stream.write(json_bytes)
        self.files += 1


class LandingWriter:
    """JSON-lines files in <landing_dir>/<event_type>/, each appearing whole: written under
    a hidden name (.name.tmp, ignored by Spark's file source) and renamed in one step."""

    def __init__(self, landing_dir: str, run_tag: str):
        if landing_dir.startswith(("s3://", "s3a://")):
            raise ValueError("live mode writes to a local landing folder, not to S3")
        self.root = Path(landing_dir).expanduser().resolve()
        self.run_tag = run_tag
        self.files = 0
        for event_type in EVENT_TYPES:
            (self.root / event_type).mkdir(parents=True, exist_ok=True)

    def write(self, event_type: str, window: Slice, json_bytes: bytes, table: pa.Table) -> None:
        if not json_bytes:
            return
        start = dt.datetime.fromtimestamp(window.start_ms / 1000, dt.timezone.utc)
        # Names sort by time and never repeat across runs (the run tag has seed and clock).
        name = f"{start:%Y%m%dT%H%M%S}.{start.microsecond // 1000:03d}Z-{self.run_tag}-{window.index:06d}.jsonl"
        folder = self.root / event_type
        temporary = folder / f".{name}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(json_bytes)
        os.replace(temporary, folder / name)  # atomic on one filesystem
        self.files += 1

    def window_done(self) -> None:
        """Each file is in place once written."""

    def __str__(self) -> str:
        return str(self.root)


class KafkaWriter:
    """One record per JSON line on the event type's topic, keyed by the event's entity
    (``EVENT_ENTITY_COLUMNS``; no key when a malformed record lacks it). A window's records
    are acknowledged by the broker before the next window starts (``window_done``)."""

    unit = "records"

    def __init__(self, topics: KafkaTopics):
        ensure_topics(topics)  # a new prefix, or a cluster without them yet
        self.topics = topics
        self.producer = EventProducer(topics)

    @property
    def files(self) -> int:
        return self.producer.sent

    def write(self, event_type: str, window: Slice, json_bytes: bytes, table: pa.Table) -> None:
        if not json_bytes:
            return
        lines = json_bytes.split(b"\n")[:-1]  # one record per line; the text has no other newlines
        keys = [None if key is None else key.encode() for key in
                table.column(EVENT_ENTITY_COLUMNS[event_type]).to_pylist()]
        assert len(lines) == len(keys), (event_type, len(lines), len(keys))
        self.producer.send(event_type, lines, keys)

    def window_done(self) -> None:
        self.producer.flush()

    def __str__(self) -> str:
        return str(self.topics)


def live_destination(cfg: Config) -> str | KafkaTopics:
    """Where live events go for a profile: its Kafka topics, or its landing folder."""
    return KafkaTopics.of(cfg) if cfg.events.source == "kafka" else cfg.events.landing_dir


# ===================================================================== the runs
@dataclass
class Summary:
    mode: str
    out: str
    fmt: str
    counts: Counter = field(default_factory=Counter)        # rows per event type
    malformed: Counter = field(default_factory=Counter)     # rows per malformed kind
    fraud_transactions: int = 0
    fraud_chargebacks: int = 0
    false_chargebacks: int = 0
    dropped_chargebacks: int = 0
    late_events: int = 0
    files: int = 0
    elapsed_s: float = 0.0
    unit: str = "files"  # what ``files`` counts: files, or Kafka records

    @property
    def events(self) -> int:
        """Transactions + activity: what --events counts."""
        return self.counts[TRANSACTIONS] + self.counts[ACTIVITY]

    def text(self) -> str:
        per_s = self.events / self.elapsed_s if self.elapsed_s > 0 else float("inf")
        malformed = ", ".join(f"{kind} {n:,}" for kind, n in sorted(self.malformed.items())) or "none"
        return "\n".join([
            f"generated {self.mode}: {self.events:,} events "
            f"(transactions {self.counts[TRANSACTIONS]:,}, activity {self.counts[ACTIVITY]:,}) "
            f"+ {self.counts[CHARGEBACKS]:,} chargebacks",
            f"  fraud transactions: {self.fraud_transactions:,}; chargebacks: {self.fraud_chargebacks:,} fraud, "
            f"{self.false_chargebacks:,} false, {self.dropped_chargebacks:,} dropped (after the period)",
            f"  malformed: {sum(self.malformed.values()):,} ({malformed})"
            + (f"; late: {self.late_events:,}" if self.mode == "live" else ""),
            f"  written to: {self.out} ({self.fmt}, {self.files} {self.unit})",
            f"  elapsed: {self.elapsed_s:.2f} s, {per_s:,.0f} events/s",
        ])


def _run(generator: EventGenerator, windows: Iterator[Slice], total: int, emit, summary: Summary,
         progress: bool) -> None:
    """Generate each window and hand its three batches to ``emit``; keep the tallies."""
    with tqdm(total=total, unit="ev", unit_scale=True, desc=f"generate {summary.mode}", disable=not progress,
              file=sys.stderr, mininterval=0.5) as bar:
        for window in windows:
            transactions, activity, chargebacks = generator.generate(window)
            emit(window, transactions, activity, chargebacks)
            summary.counts.update({TRANSACTIONS: _length(transactions), ACTIVITY: _length(activity),
                                   CHARGEBACKS: _length(chargebacks)})
            for columns in (transactions, activity):
                for code, n in zip(*np.unique(columns["malformed_kind"], return_counts=True), strict=True):
                    if code != NOT_MALFORMED:
                        summary.malformed[cleaning.REJECT_KINDS[code]] += int(n)
                summary.late_events += int(columns.get("late", np.zeros(0, bool)).sum())
            summary.fraud_transactions += int(transactions["fraud"].sum())
            summary.fraud_chargebacks += int(chargebacks["fraud"].sum())
            summary.false_chargebacks += int((~chargebacks["fraud"]).sum())
            bar.update(_length(transactions) + _length(activity))
            bar.set_postfix(tx=summary.counts[TRANSACTIONS], act=summary.counts[ACTIVITY],
                            cb=summary.counts[CHARGEBACKS], bad=sum(summary.malformed.values()), refresh=False)
    summary.dropped_chargebacks = generator.dropped_chargebacks


def history_windows(total: int, start_ms: int, days: int, chunk_events: int) -> list[Slice]:
    """Cut each day into slices of about ``chunk_events`` events (equal expected traffic,
    so busy afternoons get shorter slices than nights; whole minutes), and share
    ``total`` exactly among all slices in proportion to their expected traffic."""
    per_day = max(1, -(-total // days // chunk_events))  # ceil(total / days / chunk_events)
    minutes = np.arange(DAY_MS // MINUTE_MS)
    share_by_minute = np.cumsum(daily_intensity(minutes)) / daily_intensity(minutes).sum()
    cuts = np.unique(np.concatenate([[0], np.searchsorted(share_by_minute, np.arange(1, per_day) / per_day) + 1,
                                     [len(minutes)]]))
    bounds = [(start_ms + d * DAY_MS + a * MINUTE_MS, start_ms + d * DAY_MS + b * MINUTE_MS)
              for d in range(days) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    traffic = np.cumsum([expected_traffic(a, b) for a, b in bounds])
    ends = np.round(total * traffic / traffic[-1]).astype(np.int64)
    counts = np.diff(np.concatenate([[0], ends]))
    return [Slice(i, a, b, int(n), i == len(bounds) - 1)
            for i, ((a, b), n) in enumerate(zip(bounds, counts, strict=True))]


def live_windows(total: int, start_ms: int, rate: float, interval_s: float) -> Iterator[Slice]:
    """One window per file interval, ``rate`` events per second, ``total`` in all."""
    per_window = rate * interval_s
    n_windows = max(1, int(np.ceil(total / per_window)))
    interval_ms = int(round(interval_s * SECOND_MS))
    done = 0
    for k in range(n_windows):
        upto = total if k == n_windows - 1 else min(total, int(round(per_window * (k + 1))))
        yield Slice(k, start_ms + k * interval_ms, start_ms + (k + 1) * interval_ms, upto - done, k == n_windows - 1)
        done = upto


def generate_history(out: str, *, events: int, days: int = 7, start_date: dt.date = dt.date(2026, 1, 1),
                     users: int | None = None, seed: int = 42, fmt: str = "parquet",
                     partition_by_date: bool = False, malformed_fraction: float = 0.0, fraud_rate: float = 0.01,
                     chunk_events: int = 200_000, overwrite: bool = False, cfg=None,
                     progress: bool = True) -> Summary:
    """Write ``events`` transaction + activity records for ``days`` days from ``start_date``."""
    began = time.monotonic()
    start_ms = int(dt.datetime.combine(start_date, dt.time(), dt.timezone.utc).timestamp() * SECOND_MS)
    end_ms = start_ms + days * DAY_MS
    settings = Settings(seed=seed, n_users=users or default_users(events), fraud_rate=fraud_rate,
                        malformed_fraction=malformed_fraction,
                        malformed_kinds=TYPED_KINDS if fmt == "parquet" else JSON_KINDS)
    generator = EventGenerator(settings, events, start_ms, end_ms)
    writer = HistoryWriter(out, fmt, partition_by_date, overwrite, cfg)
    builder = TableBuilder(generator.population, generator.run_tag, all_nullable=malformed_fraction > 0)

    def emit(window: Slice, transactions: Columns, activity: Columns, chargebacks: Columns) -> None:
        for event_type, columns, table in ((TRANSACTIONS, transactions, builder.transactions(transactions)),
                                           (ACTIVITY, activity, builder.activity(activity)),
                                           (CHARGEBACKS, chargebacks, builder.chargebacks(chargebacks))):
            text = builder.json_lines(event_type, table, columns, generator.malformed_rng) if fmt == "jsonl" else None
            writer.write(event_type, window, table, text)

    summary = Summary("history", out, fmt + (", partitioned by date" if partition_by_date else ""))
    _run(generator, iter(history_windows(events, start_ms, days, chunk_events)), events, emit, summary, progress)
    summary.files = writer.files
    summary.elapsed_s = time.monotonic() - began
    return summary


def generate_live(out: str | KafkaTopics, *, rate: float, events: int | None = None, duration_s: float | None = None,
                  file_interval_s: float = 1.0, start_time: dt.datetime | None = None,
                  late_fraction: float = 0.0, max_lateness_s: float = 60.0, users: int = 1000, seed: int = 42,
                  malformed_fraction: float = 0.0, fraud_rate: float = 0.01, realtime: bool = True,
                  progress: bool = True) -> Summary:
    """Send JSON lines at ``rate`` events/s: to Kafka (``out`` a :class:`KafkaTopics`, see
    :func:`live_destination`) or as files into the landing folder ``out``.

    Event times follow ``start_time`` (default: the wall clock at the start); a window's
    events are sent (its file written, its records acknowledged) when the wall clock
    reaches the end of the window, so an event never has a time ahead of the moment it
    arrives (unless ``start_time`` says otherwise, or ``realtime=False`` sends everything
    at once).
    """
    began_wall = time.time()
    began = time.monotonic()
    total = events if events is not None else int(round(rate * (duration_s or 0.0)))
    if total < 1:
        raise ValueError("nothing to generate: give --events or --duration with --rate")
    clock_ms = int((start_time.timestamp() if start_time else began_wall) * SECOND_MS)
    windows = list(live_windows(total, clock_ms, rate, file_interval_s))
    settings = Settings(seed=seed, n_users=users, fraud_rate=fraud_rate, malformed_fraction=malformed_fraction,
                        malformed_kinds=JSON_KINDS, late_fraction=late_fraction,
                        max_lateness_ms=max(1, int(max_lateness_s * SECOND_MS)))
    generator = EventGenerator(settings, total, clock_ms, windows[-1].end_ms)
    writer = KafkaWriter(out) if isinstance(out, KafkaTopics) else LandingWriter(out, generator.run_tag)
    builder = TableBuilder(generator.population, generator.run_tag, all_nullable=True)

    def emit(window: Slice, transactions: Columns, activity: Columns, chargebacks: Columns) -> None:
        texts = [(event_type, table, builder.json_lines(event_type, table, columns, generator.malformed_rng))
                 for event_type, columns, table in (
                     (TRANSACTIONS, transactions, builder.transactions(transactions)),
                     (ACTIVITY, activity, builder.activity(activity)),
                     (CHARGEBACKS, chargebacks, builder.chargebacks(chargebacks)))]
        if realtime:  # wait for the end of the window on the wall clock
            due = began + (window.index + 1) * file_interval_s
            time.sleep(max(0.0, due - time.monotonic()))
        for event_type, table, text in texts:
            writer.write(event_type, window, text, table)
        writer.window_done()

    summary = Summary("live", str(writer), "jsonl", unit=getattr(writer, "unit", "files"))
    _run(generator, iter(windows), total, emit, summary, progress)
    summary.files = writer.files
    summary.elapsed_s = time.monotonic() - began
    return summary


def default_users(events: int) -> int:
    """About 200 events per user: a few dozen transactions each per week at the defaults."""
    return int(min(1_000_000, max(50, events // 200)))


# ===================================================================== the command
def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _instant(text: str) -> dt.datetime:
    return as_utc(dt.datetime.fromisoformat(text))


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``history`` and ``live`` subcommands to ``parser`` (its own or the console command's)."""
    common = argparse.ArgumentParser(add_help=False)
    add_profile_option(common)
    common.add_argument("--seed", type=int, default=42, help="random seed; same seed, same bytes (default 42)")
    common.add_argument("--users", type=_positive_int, help="number of users (history default: events/200; "
                                                            "live default: 1000)")
    common.add_argument("--fraud-rate", type=_fraction, default=0.01,
                        help="share of transactions that are fraudulent (default 0.01)")
    common.add_argument("--malformed-fraction", type=_fraction, default=0.0,
                        help="exact share of malformed records (default 0)")
    common.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    modes = parser.add_subparsers(dest="mode", required=True, metavar="history|live")
    history = modes.add_parser(
        "history", parents=[common], help="write a period of past events as Parquet (or JSON lines)",
        description="Write --events transaction and activity events over --days days, plus the chargebacks "
                    "that arrive within the period, under <out>/<event_type>/.")
    history.add_argument("--out", help="local folder or s3://bucket/prefix (default: events.history_uri of the "
                                       "profile)")
    history.add_argument("--events", type=_positive_int, default=100_000,
                         help="transaction + activity events, exactly (default 100000)")
    history.add_argument("--days", type=_positive_int, default=7, help="length of the period (default 7)")
    history.add_argument("--start-date", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1),
                         help="first day, UTC (default 2026-01-01)")
    history.add_argument("--format", choices=("parquet", "jsonl"), default="parquet",
                         help="parquet (typed; malformed kinds limited to what types can hold) or jsonl "
                              "(every malformed kind)")
    history.add_argument("--partition-by-date", action="store_true", help="date=YYYY-MM-DD sub-folders")
    history.add_argument("--chunk-events", type=_positive_int, default=200_000,
                         help="about how many events to generate and write at a time (memory bound)")
    history.add_argument("--overwrite", action="store_true", help="replace files already in the output")

    live = modes.add_parser(
        "live", parents=[common], help="send JSON lines to the Kafka topics (or the landing folder) at a given rate",
        description="Send JSON lines at --rate events/s for --duration seconds (or until --events), one "
                    "window per --file-interval seconds: records on the profile's Kafka topics (events.source: "
                    "kafka), or one file per window and event type in the landing folder (events.source: files, "
                    "or --out).")
    live.add_argument("--out", help="write files into this landing folder, whatever the profile's events.source "
                                    "(default: the profile's Kafka topics, or its events.landing_dir with "
                                    "source files)")
    live.add_argument("--rate", type=_positive_float, default=1000.0, help="events per second (default 1000)")
    amount = live.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=_positive_float, help="seconds to run (default 60)")
    amount.add_argument("--events", type=_positive_int, help="stop after exactly this many events")
    live.add_argument("--file-interval", type=_positive_float, default=1.0,
                      help="seconds per window: a file, or a flush of Kafka records (default 1)")
    live.add_argument("--start-time", type=_instant,
                      help="clock of the first event, ISO-8601 (default: now); fixes the content")
    live.add_argument("--late-fraction", type=_fraction, default=0.0,
                      help="exact share of good events that arrive late (default 0)")
    live.add_argument("--max-lateness-s", type=_positive_float, default=60.0,
                      help="how late a late event can be, seconds (default 60)")
    live.add_argument("--as-fast-as-possible", dest="realtime", action="store_false",
                      help="do not wait for the wall clock between files")
    return parser


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m jobs.generate_events",
        description="Generate synthetic transactions, user activity and chargebacks, seeded and deterministic.")
    return configure_parser(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.profile)
    if args.mode == "history":
        summary = generate_history(
            args.out or cfg.events.history_uri, events=args.events, days=args.days, start_date=args.start_date,
            users=args.users, seed=args.seed, fmt=args.format, partition_by_date=args.partition_by_date,
            malformed_fraction=args.malformed_fraction, fraud_rate=args.fraud_rate,
            chunk_events=args.chunk_events, overwrite=args.overwrite, cfg=cfg, progress=args.progress)
    else:
        summary = generate_live(
            args.out or live_destination(cfg), rate=args.rate, events=args.events,
            duration_s=args.duration if args.events is None else None,
            file_interval_s=args.file_interval, start_time=args.start_time, late_fraction=args.late_fraction,
            max_lateness_s=args.max_lateness_s, users=args.users or 1000, seed=args.seed,
            malformed_fraction=args.malformed_fraction, fraud_rate=args.fraud_rate, realtime=args.realtime,
            progress=args.progress)
    print(summary.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    # Through the console command the help should say how it was called.
    parser = build_parser("tessera generate" if Path(sys.argv[0]).name == "tessera" else None)
    args = parser.parse_args(argv)
    if args.mode == "live" and args.events is None and args.duration is None:
        args.duration = 60.0
    try:
        return run(args)
    except (FileExistsError, ValueError) as exc:
        print(f"generate_events: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:  # no broker (`tessera up`), a record not delivered
        print(f"generate_events: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
