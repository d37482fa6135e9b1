"""The rows a micro-batch stores online: each touched table's catalog function (the batch
job's, unchanged) over the new events and their entities' history, one small Spark job
per table on a session of its own.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.streaming.schemas import PRECOUNTED_ARROW_SCHEMA
from jobs.streaming.state import EventHistory, before, lifetime_totals, merge_baselines
from transformations.catalog import MERCHANT_FEATURES, USER_TRANSACTION_FEATURES
from transformations.merchants import MERCHANT_ID, PRECOUNTED_SCHEMA
from transformations.schemas import EVENT_ID_COLUMNS, SCHEMAS
from transformations.tables import FeatureTable
from transformations.user_transactions import LIFETIME_BASELINE_SCHEMA
from transformations.windows import EVENT_TIME


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
    later = [events.filter(pc.invert(before(events, first_new))).select([entity, EVENT_TIME])
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
            is_old = before(events, window_start)
            baseline = merge_baselines(baseline, lifetime_totals(events.filter(is_old)))
            events = events.filter(pc.invert(is_old))
        if table is MERCHANT_FEATURES:
            # Events no wanted window holds count in none of its running totals' differences.
            events = events.filter(pc.invert(before(events, window_start, inclusive=True)))
            inside_every_window = pc.and_(pc.invert(before(events, last_wanted - table.ttl, inclusive=True)),
                                          before(events, first_new))
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
