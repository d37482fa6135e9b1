"""The simulated people and their events, slice by slice, as numpy columns (what the data
looks like: ``jobs/generate_events.py``)."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transformations import cleaning
from transformations.schemas import (
    ACTIVITY,
    ACTIVITY_TYPES,
    ALLOWED_VALUES,
    CHANNELS,
    SCHEMAS,
    TRANSACTIONS,
)

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


def column_length(columns: Columns) -> int:
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
        self.user_ids = prefixed_ids("u", np.arange(n_users), user_width)
        self.merchant_ids = prefixed_ids("m", np.arange(self.n_merchants), merchant_width)

    def median_amount(self, user: np.ndarray) -> np.ndarray:
        return np.exp(self.amount_mu[user])

    def usual_device(self, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Device codes of the users' own phones and laptops: 2 * user + (0 or 1)."""
        return 2 * user + (rng.random(len(user)) * self.n_devices[user]).astype(np.int64)

    def channel(self, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (rng.random(len(user))[:, None] > self.channel_cdf[user]).sum(axis=1).clip(0, len(CHANNELS) - 1)


def prefixed_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
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
        legit_tx = self._legit_transactions(window, n_transactions - column_length(fraud_tx))
        legit_act = self._sessions(window, n_activity - column_length(fraud_act))
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
        n = column_length(columns)
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
        self.pending_chargebacks = _take(pending, np.arange(now, column_length(pending)))
        if window.is_last:  # they would arrive after the period: dropped, like real label delay
            self.dropped_chargebacks += column_length(self.pending_chargebacks)
            self.pending_chargebacks = _empty_chargebacks()
        return due

    # ------------------------------------------------------------------ defects
    def _choose_malformed(self, transactions: Columns, activity: Columns) -> None:
        """Mark this window's exact share of malformed records: which kind, which column."""
        rng = self.malformed_rng
        n_tx, n_act = column_length(transactions), column_length(activity)
        n_bad = self.malformed_spreader.take(n_tx + n_act)
        rows = np.sort(rng.choice(n_tx + n_act, n_bad, replace=False)) if n_bad else np.zeros(0, np.int64)
        for event_type, columns, own_rows in ((TRANSACTIONS, transactions, rows[rows < n_tx]),
                                              (ACTIVITY, activity, rows[rows >= n_tx] - n_tx)):
            n = column_length(columns)
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
        n_tx = column_length(transactions)
        good = np.flatnonzero(np.concatenate([transactions["malformed_kind"], activity["malformed_kind"]])
                              == NOT_MALFORMED)
        n_late = self.late_spreader.take(len(good))
        rows = np.sort(self.late_rng.choice(good, n_late, replace=False)) if n_late else np.zeros(0, np.int64)
        lateness = self.late_rng.integers(1, self.settings.max_lateness_ms + 1, n_late)
        for columns, in_this, offset in ((transactions, rows < n_tx, 0), (activity, rows >= n_tx, n_tx)):
            columns["late"] = np.zeros(column_length(columns), dtype=bool)
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
