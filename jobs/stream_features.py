"""Streaming features: live events from Kafka (or the landing zone) -> bronze Delta tables -> Redis.

    spark-submit jobs/stream_features.py --profile local
    python -m jobs.stream_features --available-now      (process what has landed, then stop)
    tessera stream-features ...                         (the same, through the console command)

One Structured Streaming query reads the three event types - the Kafka topics
``transactions``, ``activity``, ``chargebacks`` (``events.source: kafka``, the default; see
Kafka below) or the folders ``<events.landing_dir>/<event_type>/`` (``files``: JSON lines,
Spark's text file source) - parses every record on the stream itself with
``transformations.cleaning.parse_json_events`` (a record is one JSON line either way), and
unions the three into one stream with an event-time watermark. ``foreachBatch`` then
handles each micro-batch, the same code whatever the source:

1. collect: ONE Spark job reads and parses the micro-batch's records and brings it to the
   driver as Arrow, each record classified ``malformed`` (cleaning's reason), ``too_late``
   (a valid event older than the micro-batch's watermark) or ``accepted``; the counts and
   the freshness percentiles are computed there (exactly);
2. features: for each feature table the micro-batch touches, the table's catalog function
   (the batch job's, unchanged) over the accepted events and the history of their
   entities (``EventHistory``: the accepted events of the longest window that reads
   them, kept in memory on the driver across micro-batches, and the older lifetime
   totals as ``lifetime_baseline``), one Spark job per table on a session without
   adaptive execution. A table gets only the history its new rows' windows reach (its
   ttl), and what every one of those windows holds goes condensed: user transactions
   get 7 of the merchants' 30 days, the rest folded into the lifetime baseline;
   merchants get their events near the 30-day windows' edges one by one and the rest
   as one precounted row per merchant (``online_rows``). The rows at each entity's
   newest instant come back (the window rule of ``transformations``), so online
   values are batch values;
3. online: those rows -> Redis in Feast's layout, pipelined from the driver
   (``plumbing.online_store``: a row is stored only if newer than the stored one);
4. bronze: the accepted events -> ``bronze_<event_type>`` (Delta, append, written from
   the driver: no Spark job), the history ``jobs.consistency_check`` reads and the job
   rebuilds its in-memory history from when it starts;
5. dead letters: the malformed and too-late records -> ``stream_dead_letter_<event_type>`` (raw
   record, reason, arrival time, ``source="stream"``, batch id), likewise;
6. progress: one log line per micro-batch (counts, online writes, freshness p50/p99, the
   seconds of each step, the rows the feature jobs computed over) and the same numbers
   as metrics of the job's MLflow run, step = batch id.

Steps 2-3 (per table) and 4-5 (per table) run side by side; the micro-batch ends (and Spark
commits it) only when all are done, so bronze holds every committed micro-batch. They are
independent: the features take the new events from the micro-batch itself and the past
from memory; the in-memory history takes in a micro-batch's events only once all its
writes succeeded (a failed micro-batch is re-run with the same events).

Memory: the history holds every accepted event of the last 30 days of event time (the
merchants' window) on the driver: size the driver for it, or shorten the windows. The
cost of a micro-batch grows with the history its Spark jobs get: a merchant's 30 days
reach them as a few edge events and one precounted row, but a touched user's 24 hours
of activity and 7 days of transactions go one by one (their windows' max, standard
deviation and distinct counts cannot be added up ahead).

Why one query over the union rather than one per event type: merchant features read
transactions and chargebacks together. Two queries would each compute merchant rows
without the other's newest events, and since an older row never replaces a newer one,
Redis could keep a row that misses some. One query sees both in the same micro-batch and
keeps one watermark and one checkpoint.

Nothing lost, nothing counted twice
    After a crash (``kill -9`` included) the restarted job re-runs the unfinished micro-batch
    with the same records (Kafka offset ranges, or files), batch id and watermark: Spark
    keeps them in the checkpoint. It
    first rebuilds the in-memory history from bronze, leaving out the rows bronze may
    already hold of the micro-batch being re-run. Every step repeats safely: a Delta table
    that already holds rows of this query's batch id is not appended to again (seen in the
    file statistics of its log, without reading data; checked for the first micro-batch
    after each start, the only one that can be a re-run), the features are recomputed
    from the same events, and the online store skips rows that are not newer than the
    stored ones. A failed micro-batch (Redis down, a lake
    conflict) stops the query; the job restarts it from the checkpoint after a back-off
    (2, 4, 8 ... 30 s) and gives up after ``--max-failures`` failures in a row without a
    finished micro-batch in between.

Late events
    The watermark of a micro-batch is the newest valid event time of the earlier
    micro-batches minus ``--allowed-lateness-s``: Spark's own, which it records in the
    checkpoint before it runs the micro-batch. A valid event at or after the watermark is
    accepted: it lands in bronze and counts in every row computed from then on (its own,
    and those of its entity's later events). An older one is not applied: it goes to the
    dead-letter table with reason ``too_late``, raw record kept, for a backfill.
    Online, an accepted late event shows at once: if its entity already has a newer event,
    the entity's row at that newest instant is recomputed with the late event and replaces
    the stored row of the same instant. (A Kafka micro-batch ends at an offset per
    partition, so events of one merchant, spread over partitions by user, reach the job out
    of order as a matter of course: without this, merchants' rows would miss them.)

    Valid events may lie at most ``--max-future-s`` ahead of the micro-batch's clock (5
    minutes, against cleaning's 1 day for the batch job): one event a day ahead would
    move the watermark a day ahead and make every real event ``too_late``.

Freshness
    Each Redis value carries its event time (Feast's ``_ts`` field). Per micro-batch the job
    reports the end-to-end lag of its accepted events, from event time to the end of the
    micro-batch's Redis writes (an upper bound for each value): p50 and p99.

Kafka
    With ``events.source: kafka`` each event type is a topic, ``<events.kafka_topic_prefix>
    <event_type>`` on ``events.kafka_bootstrap_servers`` (unset: the broker ``tessera up``
    starts, ``services.kafka``), read with Spark's connector (spark-sql-kafka, loaded from
    ``.jars/spark`` by ``plumbing.spark``). A record's value is the JSON line (its key, the
    entity, is not read), so parsing, dead letters and everything after are the file
    source's. The offsets read are Spark's, in the checkpoint (no consumer group commits):
    a new checkpoint starts at the oldest record the topics keep (``startingOffsets
    earliest``), a restart where the checkpoint ends. ``--max-records-per-trigger`` caps a
    micro-batch per topic (``maxOffsetsPerTrigger``). ``failOnDataLoss`` stays true: records
    gone before they were read (retention ran out while the job was stopped, a topic
    deleted and made again) fail the query, so the job stops after ``--max-failures``
    instead of skipping events silently; to go on without them, start on a new checkpoint
    (docs/operations.md). A broker that goes away stalls or fails the micro-batch: the job
    restarts from the checkpoint with its back-off and catches up once the broker is back
    (tested: ``tests/test_stream_features.py``, broker stopped and started mid-stream).

Exit codes: 0 stopped cleanly (drained with ``--available-now``, or SIGTERM/SIGINT);
1 too many failures in a row; 2 bad usage.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.streaming import StreamingQuery

from plumbing import tracking
from plumbing.config import Config, load_config_for_command
from plumbing.event_tables import ARRIVED_AT, BATCH_ID, QUERY_ID, bronze_table, dead_letter_table
from plumbing.lake import LakeTable
from plumbing.online_store import OnlineStoreWriter, WriteResult
from plumbing.spark import get_spark
from transformations import cleaning
from transformations.catalog import FEATURE_TABLES, MERCHANT_FEATURES, USER_TRANSACTION_FEATURES
from transformations.merchants import MERCHANT_ID, PRECOUNTED_SCHEMA
from transformations.schemas import EVENT_ID_COLUMNS, EVENT_TYPES, SCHEMAS, TRANSACTIONS
from transformations.tables import FeatureTable
from transformations.user_transactions import LIFETIME_BASELINE_SCHEMA, USER_ID
from transformations.windows import EVENT_TIME

STREAMING_EXPERIMENT = "tessera/stream-features"

# Columns the job adds to the records.
EVENT_TYPE = "event_type"
STATUS = "status"
ACCEPTED, MALFORMED, TOO_LATE = "accepted", "malformed", "too_late"

MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class StreamSettings:
    """How the stream runs: command-line arguments (a ``streaming:`` config section later)."""

    checkpoint_location: Path
    allowed_lateness: timedelta = timedelta(seconds=60)
    trigger_interval: timedelta = timedelta(seconds=0.5)
    available_now: bool = False        # process what has landed in as many micro-batches as needed, then stop
    max_files_per_trigger: int | None = None  # per event folder (source files); None: all new files
    max_records_per_trigger: int | None = None  # per topic (source kafka); None: all new records
    max_future: timedelta = timedelta(minutes=5)
    max_failures: int = 10


# ------------------------------------------------------------------ the stream
def read_events(spark: SparkSession, cfg: Config, settings: StreamSettings) -> DataFrame:
    """All event types as one stream: one row per record with its parse result, the typed
    event in a struct column named after its type, and the event-time watermark."""
    streams = []
    for event_type in EVENT_TYPES:
        parsed = cleaning.parse_json_events(_raw_records(spark, cfg, settings, event_type), event_type,
                                            max_future=settings.max_future)
        is_valid = F.col(cleaning.REJECT_REASON).isNull()
        streams.append(parsed.select(
            F.lit(event_type).alias(EVENT_TYPE),
            # Only valid events move the watermark: a malformed record's time can be years off.
            F.when(is_valid, F.col(EVENT_TIME)).alias(EVENT_TIME),
            F.col(cleaning.RAW),
            F.col(cleaning.REJECT_REASON),
            F.struct(*SCHEMAS[event_type].fieldNames()).alias(event_type),
            F.current_timestamp().alias(ARRIVED_AT),  # in a stream: the micro-batch's timestamp
        ))
    events = functools.reduce(lambda left, right: left.unionByName(right, allowMissingColumns=True), streams)
    return events.withWatermark(EVENT_TIME, _interval(settings.allowed_lateness))


def _raw_records(spark: SparkSession, cfg: Config, settings: StreamSettings, event_type: str) -> DataFrame:
    """The JSON lines of one event type in column ``value``: a Kafka record's value (binary,
    read as UTF-8 by the parser) or a line of a landing file."""
    if cfg.events.source == "kafka":
        reader = (spark.readStream.format("kafka")
                  .option("kafka.bootstrap.servers", cfg.kafka_bootstrap_servers())
                  .option("subscribe", cfg.kafka_topic(event_type))
                  # A new checkpoint starts at the oldest record kept; later starts at the
                  # checkpoint's offsets (this option is then ignored).
                  .option("startingOffsets", "earliest")
                  # Records deleted before they were read (retention, a re-created topic)
                  # stop the query instead of being skipped silently (see the docstring).
                  .option("failOnDataLoss", "true"))
        if settings.max_records_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", settings.max_records_per_trigger)
        return reader.load().select("value")
    folder = Path(cfg.events.landing_dir) / event_type
    folder.mkdir(parents=True, exist_ok=True)  # the file source refuses a missing folder
    reader = spark.readStream
    if settings.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", settings.max_files_per_trigger)
    return reader.text(str(folder))


def source_description(cfg: Config) -> str:
    """Where the stream reads: ``kafka <servers> topics ...`` or ``files <landing folder>``."""
    if cfg.events.source == "kafka":
        topics = ",".join(cfg.kafka_topic(event_type) for event_type in EVENT_TYPES)
        return f"kafka {cfg.kafka_bootstrap_servers()} topics {topics}"
    return f"files {cfg.events.landing_dir}"


def _interval(duration: timedelta) -> str:
    return f"{int(duration.total_seconds() * 1000)} milliseconds"


def batch_watermark(checkpoint: Path, batch_id: int) -> datetime:
    """The event-time watermark of micro-batch ``batch_id``, as Spark computed it.

    Spark records it before running the micro-batch in the checkpoint's offset log (the
    second line of ``offsets/<batch id>`` holds ``batchWatermarkMs``) and reuses that record
    when it re-runs the micro-batch after a crash. A query without stateful operators, like
    this one, lets older rows through, so the job applies the watermark itself, with
    Spark's value.
    """
    metadata = json.loads((checkpoint / "offsets" / str(batch_id)).read_text().splitlines()[1])
    return datetime.fromtimestamp(metadata["batchWatermarkMs"] / 1000, timezone.utc)


def checkpoint_query_id(checkpoint: Path) -> str:
    """The query id Spark stored in the checkpoint when the query first started."""
    return json.loads((checkpoint / "metadata").read_text())["id"]


# ------------------------------------------------------------------ one micro-batch
def classify(batch: DataFrame, watermark: datetime) -> DataFrame:
    """``batch`` plus ``status``: malformed, too_late (older than the watermark) or accepted."""
    status = (F.when(F.col(cleaning.REJECT_REASON).isNotNull(), F.lit(MALFORMED))
              .when(F.col(EVENT_TIME) < F.lit(watermark), F.lit(TOO_LATE))
              .otherwise(F.lit(ACCEPTED)))
    return batch.withColumn(STATUS, status)


def collect_batch(classified: DataFrame) -> pa.Table:
    """The micro-batch on the driver, from ONE Spark job (reading and parsing its files):
    per record its type, status, reason and arrival time, the typed event of each type (a
    struct column per type, null for the other types) and, for a rejected record only,
    the raw line."""
    return classified.select(
        F.col(EVENT_TYPE), F.col(STATUS), F.col(cleaning.REJECT_REASON), F.col(ARRIVED_AT),
        F.when(F.col(STATUS) != ACCEPTED, F.col(cleaning.RAW)).alias(cleaning.RAW),
        *[F.col(event_type) for event_type in EVENT_TYPES],
    ).toArrow()


def _nullable(schema: T.StructType) -> T.StructType:
    return T.StructType([T.StructField(f.name, f.dataType, nullable=True) for f in schema.fields])


# What the job appends to the lake: the events (bronze) and the rejected records (dead letters),
# each row stamped with its micro-batch.
_STAMP_FIELDS = [T.StructField(BATCH_ID, T.LongType()), T.StructField(QUERY_ID, T.StringType())]
BRONZE_SCHEMAS = {event_type: T.StructType([*_nullable(SCHEMAS[event_type]).fields,
                                            T.StructField(ARRIVED_AT, T.TimestampType()), *_STAMP_FIELDS])
                  for event_type in EVENT_TYPES}
DEAD_LETTER_SCHEMA = T.StructType([
    T.StructField(EVENT_TYPE, T.StringType()), T.StructField("raw", T.StringType()),
    T.StructField("reject_reason", T.StringType()), T.StructField(EVENT_TIME, T.TimestampType()),
    T.StructField("source", T.StringType()), T.StructField("filed_at", T.TimestampType()),
    T.StructField(ARRIVED_AT, T.TimestampType()), *_STAMP_FIELDS,
])
# The events as the features read them, in Arrow (one schema, so history and new events concatenate).
EVENT_ARROW_SCHEMAS = {event_type: to_arrow_schema(_nullable(SCHEMAS[event_type]), timezone="UTC")
                       for event_type in EVENT_TYPES}
BASELINE_ARROW_SCHEMA = to_arrow_schema(_nullable(LIFETIME_BASELINE_SCHEMA), timezone="UTC")
PRECOUNTED_ARROW_SCHEMA = to_arrow_schema(PRECOUNTED_SCHEMA, timezone="UTC")


def split_records(records: pa.Table) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """(accepted events, dead-letter rows) by event type, types without any left out.

    Accepted events have their type's columns plus the arrival time; dead-letter rows the
    dead-letter table's columns (raw record, reason - ``too_late`` for a valid event behind
    the watermark - event time when known, ``source="stream"``, filing and arrival time)."""
    accepted, rejected = {}, {}
    for event_type in EVENT_TYPES:
        of_type = pc.equal(records[EVENT_TYPE], event_type)
        is_accepted = pc.equal(records[STATUS], ACCEPTED)
        good = records.filter(pc.and_(of_type, is_accepted))
        if good.num_rows:
            events = pa.Table.from_struct_array(good[event_type])
            accepted[event_type] = (events.select(SCHEMAS[event_type].fieldNames())
                                    .cast(EVENT_ARROW_SCHEMAS[event_type])
                                    .append_column(ARRIVED_AT, good[ARRIVED_AT]))
        bad = records.filter(pc.and_(of_type, pc.invert(is_accepted)))
        if bad.num_rows:
            rejected[event_type] = pa.table({
                EVENT_TYPE: bad[EVENT_TYPE],
                "raw": bad[cleaning.RAW],
                "reject_reason": pc.coalesce(bad[cleaning.REJECT_REASON], pa.scalar(TOO_LATE)),
                EVENT_TIME: pa.Table.from_struct_array(bad[event_type])[EVENT_TIME],
                "source": pa.array(["stream"] * bad.num_rows, pa.string()),
                "filed_at": bad[ARRIVED_AT],
                ARRIVED_AT: bad[ARRIVED_AT],
            })
    return accepted, rejected


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class BatchCounts:
    """What a micro-batch held, counted on the driver (exact percentiles)."""

    by_type: dict[str, dict[str, int]]      # event type -> received / accepted / malformed / too_late
    first_event_time: dict[str, datetime]   # event type -> its earliest accepted event
    event_micros_p01: int | None            # percentiles of the accepted events' times (all types)
    event_micros_p50: int | None

    @classmethod
    def of(cls, records: pa.Table, accepted: dict[str, pa.Table]) -> BatchCounts:
        by_type = {event_type: dict.fromkeys(("received", ACCEPTED, MALFORMED, TOO_LATE), 0)
                   for event_type in EVENT_TYPES}
        counted = records.group_by([EVENT_TYPE, STATUS]).aggregate([([], "count_all")])
        for event_type, status, count in zip(counted[EVENT_TYPE].to_pylist(), counted[STATUS].to_pylist(),
                                             counted["count_all"].to_pylist(), strict=True):
            by_type[event_type][status] += count
            by_type[event_type]["received"] += count
        first_event_time = {event_type: pc.min(events[EVENT_TIME]).as_py().astimezone(timezone.utc)
                            for event_type, events in accepted.items()}
        micros = np.concatenate([_micros(events[EVENT_TIME]) for events in accepted.values()] or [np.zeros(0)])
        if not len(micros):
            return cls(by_type, first_event_time, None, None)
        p01, p50 = np.percentile(micros, [1, 50], method="lower")
        return cls(by_type, first_event_time, int(p01), int(p50))

    def total(self, name: str) -> int:
        return sum(counts[name] for counts in self.by_type.values())


def holds_batch(table: LakeTable, query_id: str, batch_id: int) -> bool:
    """Whether ``table`` already holds rows of this query's micro-batch ``batch_id``.

    Read from the file statistics in the Delta log, not from the data: each write of a
    micro-batch makes files holding that micro-batch only, so their min statistics name it
    (delta-spark keeps a 32-character prefix of a string's: the query id's first 32 of 36).
    """
    if not table.exists():
        return False
    files = pa.table(DeltaTable(table.uri, storage_options=table.storage_options).get_add_actions(flatten=True))
    if f"min.{BATCH_ID}" not in files.column_names:
        return False
    return any(query is not None and query_id.startswith(query) and batch == batch_id
               for query, batch in zip(files.column(f"min.{QUERY_ID}").to_pylist(),
                                       files.column(f"min.{BATCH_ID}").to_pylist(), strict=True))


def append_once(table: LakeTable, rows: pa.Table, schema: T.StructType, query_id: str, batch_id: int,
                may_hold_it: bool) -> float:
    """Append ``rows`` stamped with the micro-batch, unless the table already holds it (a
    re-run after a crash: only possible when ``may_hold_it``). Returns the seconds taken."""
    started = time.monotonic()
    if may_hold_it and holds_batch(table, query_id, batch_id):
        return time.monotonic() - started
    stamped = (rows.append_column(BATCH_ID, pa.array(np.full(rows.num_rows, batch_id, dtype=np.int64)))
               .append_column(QUERY_ID, pa.array([query_id] * rows.num_rows, pa.string())))
    table.append_arrow(stamped, schema)
    return time.monotonic() - started


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
            is_old = _before(events, horizon)
            if event_type == TRANSACTIONS:
                self.baseline = merge_baselines(self.baseline, lifetime_totals(events.filter(is_old)))
            self.events[event_type] = events.filter(pc.invert(is_old))
            self.horizon[event_type] = horizon


def _before(events: pa.Table, instant: datetime, inclusive: bool = False) -> pa.ChunkedArray:
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


def online_rows(spark: SparkSession, table: FeatureTable, history: EventHistory,
                new_events: dict[str, pa.Table]) -> tuple[pa.Table, int]:
    """The rows of ``table`` to store online for ``new_events`` (accepted events by type):
    per entity of them, its row at its newest instant, computed by the
    table's catalog function (the batch job's, unchanged) over the entity's history and
    the new events. One Spark job. Also returns how many rows went into it (events, and
    the rows standing for counted ones): the job's cost grows with them.

    An entity that already has a newer event than its new ones (they are late) gets its
    row at that newest instant, recomputed with them.

    The history goes in whole where a window could end inside it, and condensed where
    every wanted window holds it: a user's transactions older than the 7-day windows as
    lifetime-baseline totals (``user_transaction_features``' ``lifetime_baseline``), a
    merchant's events between the edges of its 30-day windows as counts
    (``merchant_features``' ``precounted``). Both are exact."""
    entity, timestamp = table.entity_column, table.timestamp_column
    instants = pa.concat_tables([new_events[event_type].select([entity, EVENT_TIME])
                                 for event_type in table.sources if event_type in new_events])
    entities = pc.unique(instants[entity].combine_chunks())
    first_new = pc.min(instants[EVENT_TIME]).as_py()
    histories = {event_type: history.of(event_type, entity, entities) for event_type in table.sources}
    # A late event's entity may have a newer event already, and a row at it in Redis: the
    # wanted row is then the one at that newer instant, recomputed with the late event (the
    # writer lets a row replace the stored row of the same instant).
    later = [events.filter(pc.invert(_before(events, first_new))).select([entity, EVENT_TIME])
             for events in histories.values()]
    newest = pa.concat_tables([instants, *later]).group_by(entity).aggregate([(EVENT_TIME, "max")])
    newest = pa.table({entity: newest[entity], timestamp: newest[f"{EVENT_TIME}_max"]})
    # Every wanted row lies in [first_new, last_wanted], so its window starts after
    # first_new - ttl and holds everything in (last_wanted - ttl, first_new).
    last_wanted = pc.max(newest[timestamp]).as_py()
    window_start = first_new - table.ttl
    inputs, input_rows = {}, 0
    baseline = history.baseline_of(entities) if table is USER_TRANSACTION_FEATURES else None
    precounted = []
    for event_type in table.sources:
        events = histories[event_type]
        if table is USER_TRANSACTION_FEATURES:
            is_old = _before(events, window_start)
            baseline = merge_baselines(baseline, lifetime_totals(events.filter(is_old)))
            events = events.filter(pc.invert(is_old))
        if table is MERCHANT_FEATURES:
            # Events no wanted window holds count in none of its running totals' differences.
            events = events.filter(pc.invert(_before(events, window_start, inclusive=True)))
            inside_every_window = pc.and_(pc.invert(_before(events, last_wanted - table.ttl, inclusive=True)),
                                          _before(events, first_new))
            precounted.append(count_events(events.filter(inside_every_window), event_type))
            events = events.filter(pc.invert(inside_every_window))
        if event_type in new_events:
            events = pa.concat_tables([events, new_events[event_type].select(events.column_names)])
        # One chunk: the history holds a chunk per micro-batch, and each chunk would
        # reach Spark as an Arrow batch of its own (measured: 40 chunks made the three
        # tables' jobs 0.4-0.9 s slower at ~160k events).
        inputs[event_type] = spark.createDataFrame(events.combine_chunks(), SCHEMAS[event_type])
        input_rows += events.num_rows
    if table is USER_TRANSACTION_FEATURES and baseline is not None and baseline.num_rows:
        # Without one, lifetimes start at zero: the same as an empty baseline.
        inputs["lifetime_baseline"] = spark.createDataFrame(baseline, LIFETIME_BASELINE_SCHEMA)
    if precounted:
        counts = merge_counts(precounted)
        if counts.num_rows:
            inputs["precounted"] = spark.createDataFrame(counts, PRECOUNTED_SCHEMA)
            input_rows += counts.num_rows
    # Only rows from the earliest wanted instant on leave Spark; the exact pick is an Arrow
    # join on the driver (a broadcast join in Spark cost a job of its own per table).
    earliest = pc.min(newest[timestamp]).as_py()
    rows = table.build(**inputs).where(F.col(timestamp) >= F.lit(earliest)).toArrow()
    return rows.join(newest, keys=[entity, timestamp], join_type="left semi"), input_rows


def count_events(events: pa.Table, event_type: str) -> pa.Table:
    """Per merchant, its ``events`` of ``event_type`` (each id once) as one precounted
    row: their number, at the instant of the newest."""
    once = events.group_by([MERCHANT_ID, EVENT_ID_COLUMNS[event_type]], use_threads=False).aggregate(
        [(EVENT_TIME, "max")])
    counts = once.group_by(MERCHANT_ID).aggregate([([], "count_all"), (f"{EVENT_TIME}_max", "max")])
    return pa.table({
        MERCHANT_ID: counts[MERCHANT_ID], EVENT_TIME: counts[f"{EVENT_TIME}_max_max"],
        **{kind: counts["count_all"] if kind == event_type else pa.array(np.zeros(counts.num_rows, np.int64))
           for kind in PRECOUNTED_SCHEMA.fieldNames()[2:]},
    }).cast(PRECOUNTED_ARROW_SCHEMA)


def merge_counts(counts: list[pa.Table]) -> pa.Table:
    """Precounted rows of the same instants' events as one row per merchant: counts
    added, at the newest instant (every wanted window holds them all)."""
    kinds = PRECOUNTED_SCHEMA.fieldNames()[2:]
    merged = pa.concat_tables(counts).group_by(MERCHANT_ID).aggregate(
        [(EVENT_TIME, "max"), *[(kind, "sum") for kind in kinds]])
    return pa.table({MERCHANT_ID: merged[MERCHANT_ID], EVENT_TIME: merged[f"{EVENT_TIME}_max"],
                     **{kind: merged[f"{kind}_sum"] for kind in kinds}}).cast(PRECOUNTED_ARROW_SCHEMA)


@dataclass(frozen=True)
class BatchProgress:
    """What one micro-batch did: the progress log line and the MLflow metrics."""

    batch_id: int
    counts: BatchCounts
    online: WriteResult
    watermark: datetime
    lag_p50_s: float | None
    lag_p99_s: float | None
    duration_s: float
    steps_s: dict[str, float]  # seconds per step: collect, history, features, redis, lake
    feature_input_events: int  # rows the tables' Spark jobs computed over: events (new and history), precounted rows

    def metrics(self) -> dict[str, float]:
        metrics = {
            "received": self.counts.total("received"),
            "accepted": self.counts.total(ACCEPTED),
            "malformed": self.counts.total(MALFORMED),
            "too_late": self.counts.total(TOO_LATE),
            "online_written": self.online.written,
            "online_skipped_older": self.online.skipped_older,
            "online_skipped_expired": self.online.skipped_expired,
            "feature_input_events": self.feature_input_events,
            "duration_s": self.duration_s,
            "events_per_s": self.counts.total("received") / self.duration_s if self.duration_s else 0.0,
            **{f"{step}_s": seconds for step, seconds in self.steps_s.items()},
        }
        if self.lag_p50_s is not None and self.lag_p99_s is not None:  # both or neither
            metrics.update(lag_p50_s=self.lag_p50_s, lag_p99_s=self.lag_p99_s)
        return metrics

    def line(self) -> str:
        """key=value pairs: readable, and parsed by bench/bench_streaming.py."""
        values: dict[str, object] = {"batch": self.batch_id,
                  **{event_type: self.counts.by_type[event_type]["received"] for event_type in EVENT_TYPES}}
        values.update({name: round(value, 3) if isinstance(value, float) else value
                       for name, value in self.metrics().items()})
        values["watermark"] = self.watermark.strftime("%Y-%m-%dT%H:%M:%SZ")
        return "stream-features " + " ".join(f"{name}={value}" for name, value in values.items())


class StreamRun:
    """The job's MLflow run: per-micro-batch metrics, logged without blocking the stream."""

    def __init__(self, cfg: Config, settings: StreamSettings):
        tracking.configure_tracking(cfg)
        experiment_id = tracking.use_experiment(STREAMING_EXPERIMENT, (
            "One run per start of the streaming job: per micro-batch its events (accepted, malformed, too "
            "late), freshness p50/p99 and the time of each step; tags `source` and `input` say what it read."))
        self.client = MlflowClient()
        self.run_id = self.client.create_run(
            experiment_id, run_name="stream_features",
            tags={"checkpoint": str(settings.checkpoint_location), "source": cfg.events.source,
                  "input": source_description(cfg)}).info.run_id
        trigger = ("availableNow" if settings.available_now
                   else f"processingTime {settings.trigger_interval.total_seconds()}s")
        self.client.log_batch(self.run_id, params=[
            Param("allowed_lateness_s", str(settings.allowed_lateness.total_seconds())),
            Param("trigger", trigger),
            Param("max_files_per_trigger", str(settings.max_files_per_trigger)),
            Param("max_records_per_trigger", str(settings.max_records_per_trigger)),
            Param("max_future_s", str(settings.max_future.total_seconds())),
        ])

    def log(self, progress: BatchProgress) -> None:
        now_ms = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now_ms, progress.batch_id) for name, value in progress.metrics().items()]
        # Asynchronous: a slow or absent tracking server must not hold up the stream.
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)

    def end(self, status: str) -> None:
        mlflow.flush_async_logging()
        self.client.set_terminated(self.run_id, status)


class MicroBatchProcessor:
    """The ``foreachBatch`` function. Every step is safe to repeat (see the module docstring)."""

    def __init__(self, cfg: Config, settings: StreamSettings, run: StreamRun, spark: SparkSession):
        self.cfg = cfg
        self.settings = settings
        self.run = run
        self.spark = micro_batch_session(spark)
        self.writer = OnlineStoreWriter(cfg)
        self.history: EventHistory | None = None  # built from bronze by the first micro-batch that needs it
        self.batches_done = 0
        self.query_started = True  # set by run() at each (re)start: the next micro-batch may be a re-run

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        steps: dict[str, float] = {}
        spark = self.spark
        checkpoint = self.settings.checkpoint_location
        query_id = checkpoint_query_id(checkpoint)
        watermark = batch_watermark(checkpoint, batch_id)
        records = collect_batch(classify(batch, watermark))
        accepted, rejected = split_records(records)
        counts = BatchCounts.of(records, accepted)
        steps["collect"] = time.monotonic() - started

        if accepted:
            first = min(counts.first_event_time.values())
            if self.history is None or not self.history.covers(first):
                began = time.monotonic()
                # Later micro-batches' events are no older than this (the watermark only rises).
                known = watermark if watermark.timestamp() > 0 else first  # a new checkpoint has none yet
                reference = min(first, known) - self.settings.allowed_lateness
                self.history = EventHistory.from_bronze(spark, self.cfg, reference, query_id, batch_id)
                steps["history"] = time.monotonic() - began
        touched = [table for table in FEATURE_TABLES.values()
                   if any(event_type in accepted for event_type in table.sources)]
        may_hold_it = self.query_started
        # The online rows first (freshness), the lake appends beside them (deltalake, from
        # this process: no Spark job). They are independent: the features take the new
        # events from the micro-batch and the history from memory.
        with ThreadPoolExecutor(max_workers=len(touched) + len(accepted) + len(rejected) or 1) as pool:
            online_writes = [pool.submit(self._write_online, spark, table, accepted) for table in touched]
            lake_writes = [pool.submit(append_once, bronze_table(self.cfg, event_type), events,
                                       BRONZE_SCHEMAS[event_type], query_id, batch_id, may_hold_it)
                           for event_type, events in accepted.items()]
            lake_writes += [pool.submit(append_once, dead_letter_table(self.cfg, event_type, "stream"), rows,
                                        DEAD_LETTER_SCHEMA, query_id, batch_id, may_hold_it)
                            for event_type, rows in rejected.items()]
            online = WriteResult()
            features_s = redis_s = 0.0
            feature_input_events = 0
            for write in online_writes:
                result, input_rows, table_features_s, table_redis_s = write.result()
                online += result
                feature_input_events += input_rows
                features_s, redis_s = max(features_s, table_features_s), max(redis_s, table_redis_s)
            written_at = time.time()
            steps["online"] = time.monotonic() - started - steps["collect"] - steps.get("history", 0.0)
            steps["features"], steps["redis"] = features_s, redis_s
            steps["lake"] = max((write.result() for write in lake_writes), default=0.0)
        if accepted:
            assert self.history is not None  # loaded above when there are accepted events
            self.history.add(accepted)
            self.history.evict(watermark)
        self.query_started = False
        progress = BatchProgress(
            batch_id=batch_id, counts=counts, online=online, watermark=watermark,
            # lag p50 is the time since the median event; p99 the time since the 1st percentile.
            lag_p50_s=_seconds_since(written_at, counts.event_micros_p50),
            lag_p99_s=_seconds_since(written_at, counts.event_micros_p01),
            duration_s=time.monotonic() - started, steps_s=steps, feature_input_events=feature_input_events)
        print(progress.line(), flush=True)
        self.run.log(progress)
        self.batches_done += 1

    def _write_online(self, spark: SparkSession, table: FeatureTable,
                      accepted: dict[str, pa.Table]) -> tuple[WriteResult, int, float, float]:
        """Compute ``table``'s rows for the new events and write them to Redis from the
        driver; returns the result, the rows computed over and the seconds of each part."""
        assert self.history is not None  # loaded before the online writes
        began = time.monotonic()
        rows, input_rows = online_rows(spark, table, self.history, accepted)
        computed = time.monotonic()
        result = self.writer.write(table, rows)
        return result, input_rows, computed - began, time.monotonic() - computed


def micro_batch_session(spark: SparkSession) -> SparkSession:
    """A session of its own (same Spark context) for the micro-batches' small jobs:

    * no adaptive execution: its extra jobs per query stage cost more than they save on a
      few thousand rows;
    * one shuffle partition: the tables' jobs run side by side, so they share the cores
      anyway, and each task costs its scheduling (measured: a table's job 0.55-0.68 s with
      one partition, 0.7-1.0 s with two);
    * inputs from Arrow as one RDD partition each, not as a local relation: Spark turns a
      local relation into rows on the driver and the optimizer evaluates projections over
      it row by row (measured on three tables' inputs of ~200k events: plan building and
      planning 1.3 s with local relations, 0.6 s without).
    """
    session = spark.newSession()
    for key, value in (("spark.sql.adaptive.enabled", "false"), ("spark.sql.shuffle.partitions", "1"),
                       ("spark.sql.session.timeZone", "UTC"),
                       ("spark.sql.execution.arrow.pyspark.enabled", "true"),
                       ("spark.sql.execution.arrow.localRelationThreshold", "0"),
                       ("spark.sql.execution.arrow.maxRecordsPerBatch", str(2 ** 31 - 1))):
        session.conf.set(key, value)
    return session


def _seconds_since(instant_s: float, event_micros: int | None) -> float | None:
    return None if event_micros is None else instant_s - event_micros / 1_000_000


# ------------------------------------------------------------------ the job
def start_query(spark: SparkSession, cfg: Config, settings: StreamSettings,
                processor: MicroBatchProcessor) -> StreamingQuery:
    writer = (read_events(spark, cfg, settings).writeStream
              .queryName("stream_features")
              .foreachBatch(processor)
              .option("checkpointLocation", str(settings.checkpoint_location)))
    if settings.available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=_interval(settings.trigger_interval))
    return writer.start()


def run(cfg: Config, settings: StreamSettings, spark: SparkSession | None = None,
        stop: threading.Event | None = None) -> int:
    """Run the stream until it drains (``available_now``), ``stop`` is set, or it fails
    ``max_failures`` times in a row. Returns the exit code."""
    spark = spark or get_spark(cfg, "stream-features")
    stop = stop or threading.Event()
    stream_run = StreamRun(cfg, settings)
    processor = MicroBatchProcessor(cfg, settings, stream_run, spark)
    print(f"stream-features: {source_description(cfg)} -> bronze + Redis "
          f"{cfg.redis.host}:{cfg.redis.port}; checkpoint {settings.checkpoint_location}; "
          f"MLflow run {stream_run.run_id}", flush=True)
    failures = 0
    try:
        while not stop.is_set():
            batches_before = processor.batches_done
            processor.query_started = True
            query = start_query(spark, cfg, settings, processor)
            try:
                # Short waits, so a stop request is seen between them.
                while query.isActive and not stop.is_set():
                    query.awaitTermination(1)
                query.stop()
                query.awaitTermination()  # raises if the query failed
                break
            except StreamingQueryException as error:
                failures = 1 if processor.batches_done > batches_before else failures + 1
                reason = str(error).strip().splitlines()[0][:300]
                if failures >= settings.max_failures:
                    print(f"stream-features: giving up after {failures} failures in a row: {reason}",
                          file=sys.stderr, flush=True)
                    stream_run.end("FAILED")
                    return 1
                backoff = min(2.0 ** failures, MAX_BACKOFF_S)
                print(f"stream-features: micro-batch failed ({reason}); restarting from the checkpoint "
                      f"in {backoff:.0f}s (failure {failures} of at most {settings.max_failures} in a row)",
                      file=sys.stderr, flush=True)
                stop.wait(backoff)
    except BaseException:
        stream_run.end("FAILED")
        raise
    stream_run.end("FINISHED")
    print(f"stream-features: stopped after {processor.batches_done} micro-batch(es)", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream_features", description=__doc__.split("\n\n")[0],
        epilog="Runs until stopped (SIGTERM/SIGINT), or with --available-now until what has landed is processed.")
    parser.add_argument("--profile", default=os.environ.get("TESSERA_PROFILE", "local"),
                        help="config profile or YAML path (default: $TESSERA_PROFILE or local)")
    parser.add_argument("--checkpoint", type=Path,
                        help="checkpoint location (default: <data_dir>/checkpoints/stream_features)")
    parser.add_argument("--allowed-lateness-s", type=float, default=60.0,
                        help="how far behind the newest event time an event may be and still count (default 60)")
    trigger = parser.add_mutually_exclusive_group()
    trigger.add_argument("--trigger-interval-s", type=float, default=0.5,
                         help="start a micro-batch every this many seconds (default 0.5: a new file waits at most "
                              "that long when the job is idle; a busy job starts the next one as soon as one ends; "
                              "0: poll continuously)")
    trigger.add_argument("--available-now", action="store_true",
                         help="process the events that have arrived (files landed, records in the "
                              "topics), then stop")
    parser.add_argument("--max-files-per-trigger", type=int,
                        help="source files: at most this many new files per event folder and micro-batch "
                             "(default: all)")
    parser.add_argument("--max-records-per-trigger", type=int,
                        help="source kafka: at most this many new records per topic and micro-batch "
                             "(default: all)")
    parser.add_argument("--max-future-s", type=float, default=300.0,
                        help="valid events may lie at most this far ahead of the clock (default 300)")
    parser.add_argument("--max-failures", type=int, default=10,
                        help="give up after this many failed micro-batches in a row (default 10)")
    return parser


def settings_from_args(args: argparse.Namespace, cfg: Config) -> StreamSettings:
    return StreamSettings(
        checkpoint_location=(args.checkpoint or cfg.checkpoint_dir / "stream_features").resolve(),
        allowed_lateness=timedelta(seconds=args.allowed_lateness_s),
        trigger_interval=timedelta(seconds=args.trigger_interval_s),
        available_now=args.available_now,
        max_files_per_trigger=args.max_files_per_trigger,
        max_records_per_trigger=args.max_records_per_trigger,
        max_future=timedelta(seconds=args.max_future_s),
        max_failures=args.max_failures,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config_for_command(args.profile, "stream_features")
    settings = settings_from_args(args, cfg)
    spark = get_spark(cfg, "stream-features")
    stop = threading.Event()
    # The handler only sets the flag: the main thread stops the query between its waits.
    # Installed after the session starts: PySpark's SparkContext sets its own SIGINT handler
    # (cancel every job, raise KeyboardInterrupt), which would make Ctrl-C a failure.
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    return run(cfg, settings, spark=spark, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
