"""The stream's in-memory state: the past of the entities, on the driver across micro-batches.

Memory: the history holds every accepted event of the last 30 days of event time (the
merchants' window) on the driver: size the driver for it, or shorten the windows. The
cost of a micro-batch grows with the history its Spark jobs get: a merchant's 30 days
reach them as a few edge events and one precounted row, but a touched user's 24 hours
of activity and 7 days of transactions go one by one (their windows' max, standard
deviation and distinct counts cannot be added up ahead).
"""
from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.streaming.schemas import BASELINE_ARROW_SCHEMA, EVENT_ARROW_SCHEMAS
from plumbing.config import Config
from plumbing.event_tables import BATCH_ID, QUERY_ID, bronze_table
from transformations.catalog import FEATURE_TABLES
from transformations.schemas import EVENT_ID_COLUMNS, EVENT_TYPES, SCHEMAS, TRANSACTIONS
from transformations.user_transactions import USER_ID
from transformations.windows import EVENT_TIME

# Each event type is kept as long as the longest window that reads it (the tables' ttls).
RETENTION = {event_type: max(table.ttl for table in FEATURE_TABLES.values() if event_type in table.sources)
             for event_type in EVENT_TYPES}
MAX_HISTORY_CHUNKS = 64
EVICT_EVERY = timedelta(hours=1)  # of event time: how far the horizon moves before old events are dropped


class EventHistory:
    """The past the features of a micro-batch need, carried on the driver across micro-batches.

    Per event type, the accepted events with ``event_time >= horizon`` (the type's
    ``RETENTION`` before the watermark: every window of a new event reaches back less),
    as Arrow; per user, the lifetime totals of the older transactions (the
    ``lifetime_baseline`` of ``user_transaction_features``). Built from bronze when the job
    starts (the one read of bronze), then extended with each finished micro-batch's events,
    so a micro-batch reads no lake table. Events older than the horizon leave it in steps
    of ``EVICT_EVERY``; old transactions are folded into the baseline then.
    """

    def __init__(self, events: dict[str, pa.Table], baseline: pa.Table, horizon: dict[str, datetime]):
        self.events = events
        self.baseline = baseline
        self.horizon = horizon

    @classmethod
    def from_bronze(cls, spark: SparkSession, cfg: Config, reference: datetime, query_id: str,
                    batch_id: int) -> EventHistory:
        """The history for events from ``reference`` on. Rows this query wrote for micro-batch
        ``batch_id`` or later (a re-run after a crash) are left out: they are its new events."""
        horizon = {event_type: reference - RETENTION[event_type] for event_type in EVENT_TYPES}
        not_this_batch = ~((F.col(QUERY_ID) == query_id) & (F.col(BATCH_ID) >= batch_id))
        events, baseline = {}, BASELINE_ARROW_SCHEMA.empty_table()
        for event_type in EVENT_TYPES:
            table = bronze_table(cfg, event_type)
            if not table.exists():
                events[event_type] = EVENT_ARROW_SCHEMAS[event_type].empty_table()
                continue
            recent = (table.read(spark, start=horizon[event_type]).where(not_this_batch)
                      .dropDuplicates([EVENT_ID_COLUMNS[event_type]]).select(*SCHEMAS[event_type].fieldNames()))
            events[event_type] = recent.toArrow().cast(EVENT_ARROW_SCHEMAS[event_type])
            if event_type == TRANSACTIONS:
                older = (table.read(spark, end=horizon[event_type]).where(not_this_batch)
                         .dropDuplicates(["transaction_id"]))  # a replayed event counts once
                baseline = older.groupBy(USER_ID).agg(
                    F.count(F.lit(1)).alias("lifetime_txn_count"),
                    F.coalesce(F.sum("amount"), F.lit(0.0)).alias("lifetime_txn_spend"),
                    F.max(EVENT_TIME).alias("baseline_until"),
                ).toArrow().cast(BASELINE_ARROW_SCHEMA)
        return cls(events, baseline, horizon)

    def covers(self, first_event_time: datetime) -> bool:
        """Whether the windows of an event at ``first_event_time`` or later lie in the history."""
        return all(first_event_time - RETENTION[event_type] >= self.horizon[event_type]
                   for event_type in EVENT_TYPES)

    def of(self, event_type: str, entity_column: str, entities: pa.Array) -> pa.Table:
        events = self.events[event_type]
        return events.filter(pc.is_in(events[entity_column], value_set=entities))

    def baseline_of(self, users: pa.Array) -> pa.Table:
        return self.baseline.filter(pc.is_in(self.baseline[USER_ID], value_set=users))

    def add(self, accepted: dict[str, pa.Table]) -> None:
        """Take in a finished micro-batch's events (a replayed id is dropped by the features)."""
        for event_type, events in accepted.items():
            history = pa.concat_tables(
                [self.events[event_type], events.select(EVENT_ARROW_SCHEMAS[event_type].names)])
            # A chunk per micro-batch: every filter over the history pays per chunk, so
            # copy them into one now and then (a few ms for 300k events).
            if history.column(0).num_chunks > MAX_HISTORY_CHUNKS:
                history = history.combine_chunks()
            self.events[event_type] = history

    def evict(self, watermark: datetime) -> None:
        """Drop the events no window of a future event reaches (those before the watermark
        minus the retention); fold old transactions into the lifetime baseline."""
        for event_type in EVENT_TYPES:
            horizon = watermark - RETENTION[event_type]
            if horizon - self.horizon[event_type] < EVICT_EVERY:
                continue
            events = self.events[event_type].combine_chunks()
            is_old = before(events, horizon)
            if event_type == TRANSACTIONS:
                self.baseline = merge_baselines(self.baseline, lifetime_totals(events.filter(is_old)))
            self.events[event_type] = events.filter(pc.invert(is_old))
            self.horizon[event_type] = horizon


def before(events: pa.Table, instant: datetime, inclusive: bool = False) -> pa.ChunkedArray:
    """Whether each event is before ``instant`` (or at it, with ``inclusive``)."""
    compare = pc.less_equal if inclusive else pc.less
    return compare(events[EVENT_TIME], pa.scalar(instant, pa.timestamp("us", tz="UTC")))


def lifetime_totals(transactions: pa.Table) -> pa.Table:
    """Per user, the lifetime baseline of ``transactions`` (each id once): count, spend of
    the known amounts, and the newest event time."""
    once = transactions.group_by("transaction_id", use_threads=False).aggregate(
        [(USER_ID, "first"), ("amount", "first"), (EVENT_TIME, "first")])
    once = once.rename_columns({f"{name}_first": name for name in (USER_ID, "amount", EVENT_TIME)})
    totals = once.group_by(USER_ID).aggregate([([], "count_all"), ("amount", "sum"), (EVENT_TIME, "max")])
    return pa.table({
        USER_ID: totals[USER_ID], "lifetime_txn_count": totals["count_all"],
        "lifetime_txn_spend": pc.fill_null(totals["amount_sum"], 0.0),
        "baseline_until": totals[f"{EVENT_TIME}_max"],
    }).cast(BASELINE_ARROW_SCHEMA)


def merge_baselines(first: pa.Table, second: pa.Table) -> pa.Table:
    """Two lifetime baselines of disjoint transactions as one: totals added, newest time kept."""
    merged = pa.concat_tables([first, second]).group_by(USER_ID).aggregate(
        [("lifetime_txn_count", "sum"), ("lifetime_txn_spend", "sum"), ("baseline_until", "max")])
    return pa.table({
        USER_ID: merged[USER_ID], "lifetime_txn_count": merged["lifetime_txn_count_sum"],
        "lifetime_txn_spend": merged["lifetime_txn_spend_sum"], "baseline_until": merged["baseline_until_max"],
    }).cast(BASELINE_ARROW_SCHEMA)
