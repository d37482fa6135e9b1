"""The stream's input: the events of every type as one query with Spark's watermark, and
each micro-batch's records classified and brought to the driver.

One Structured Streaming query reads the three event types - the Kafka topics
``transactions``, ``activity``, ``chargebacks`` (``events.source: kafka``, the default; see
Kafka below) or the folders ``<events.landing_dir>/<event_type>/`` (``files``: JSON lines,
Spark's text file source) - parses every record on the stream itself with
``transformations.cleaning.parse_json_events`` (a record is one JSON line either way), and
unions the three into one stream with an event-time watermark.

Why one query over the union rather than one per event type: merchant features read
transactions and chargebacks together. Two queries would each compute merchant rows
without the other's newest events, and since an older row never replaces a newer one,
Redis could keep a row that misses some. One query sees both in the same micro-batch and
keeps one watermark and one checkpoint.

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
"""
from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.streaming.schemas import ACCEPTED, EVENT_ARROW_SCHEMAS, EVENT_TYPE, MALFORMED, STATUS, TOO_LATE
from jobs.streaming.settings import StreamSettings
from plumbing.config import Config
from plumbing.event_tables import ARRIVED_AT
from transformations import cleaning
from transformations.schemas import EVENT_TYPES, SCHEMAS
from transformations.windows import EVENT_TIME


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
    return events.withWatermark(EVENT_TIME, interval(settings.allowed_lateness))


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


OFFSET_LOG_VERSION = "v1"  # the first line of a checkpoint's offsets/<batch id>, Spark 3 to 4.2


def interval(duration: timedelta) -> str:
    return f"{int(duration.total_seconds() * 1000)} milliseconds"


def batch_watermark(checkpoint: Path, batch_id: int) -> datetime:
    """The event-time watermark of micro-batch ``batch_id``, as Spark computed it.

    Spark records it in the checkpoint's offset log before running the micro-batch and
    reuses that record when it re-runs the micro-batch after a crash. A query without
    stateful operators, like this one, lets older rows through, so the job applies the
    watermark itself, with Spark's value.

    No public API hands it to ``foreachBatch`` (``StreamingQuery.lastProgress`` reports it
    only once the micro-batch is over), so it is read from ``offsets/<batch id>``: line 1
    the log's version ``v1``, line 2 JSON with ``batchWatermarkMs`` (Spark 3 to 4.2).
    ``tests/test_stream_checkpoint.py`` holds this equal to the watermark Spark reports
    through ``StreamingQuery.recentProgress``; a log of another layout raises here.
    """
    path = checkpoint / "offsets" / str(batch_id)
    lines = path.read_text().splitlines()
    if not lines or lines[0] != OFFSET_LOG_VERSION:
        raise RuntimeError(f"{path}: an offset log of version {lines[:1]}, not {OFFSET_LOG_VERSION!r}: this Spark "
                           f"writes its checkpoint in a layout the stream does not read (see batch_watermark)")
    try:
        watermark_ms = json.loads(lines[1])["batchWatermarkMs"]
        return datetime.fromtimestamp(watermark_ms / 1000, timezone.utc)
    except (IndexError, ValueError, KeyError, TypeError) as error:
        raise RuntimeError(f"{path}: no batchWatermarkMs on the offset log's second line ({error!r}): this "
                           f"Spark writes its checkpoint in a layout the stream does not read (see batch_watermark)"
                           ) from error


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
