"""One micro-batch, the ``foreachBatch`` function: the same code whatever the source.

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
   (``plumbing.online_store``: a row is stored unless older than the stored one);
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

Nothing lost, nothing counted twice
    After a crash (``kill -9`` included) the restarted job re-runs the unfinished micro-batch
    with the same records (Kafka offset ranges, or files), batch id and watermark: Spark
    keeps them in the checkpoint. It first rebuilds the in-memory history from bronze,
    leaving out the rows bronze may already hold of the micro-batch being re-run. Every
    step repeats safely: a Delta table that already holds rows of this query's batch id
    is not appended to again (seen in the file statistics of its log, without reading
    data; checked for the first micro-batch after each start, the only one that can be a
    re-run), the features are recomputed from the same events, and the online store
    never lets an older row replace a newer one (a re-run's rows are of the same
    instants, with the same values). A failed micro-batch stops the query, which
    ``jobs.stream_features`` restarts from the checkpoint.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from jobs.streaming.features import micro_batch_session, online_rows
from jobs.streaming.progress import BatchCounts, BatchProgress, StreamRun, seconds_since
from jobs.streaming.schemas import BRONZE_SCHEMAS, DEAD_LETTER_SCHEMA
from jobs.streaming.settings import StreamSettings
from jobs.streaming.sinks import append_once
from jobs.streaming.source import batch_watermark, classify, collect_batch, split_records
from jobs.streaming.state import EventHistory
from plumbing.config import Config
from plumbing.event_tables import bronze_table, dead_letter_table
from plumbing.online_store import OnlineStoreWriter, WriteResult
from transformations.catalog import FEATURE_TABLES
from transformations.tables import FeatureTable

QUERY_ID_WAIT_S = 60.0  # how long a micro-batch waits for the query's id after start()


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
        self.query_id: str | None = None  # the query's StreamingQuery.id, told by run() (query_id_is)
        self._query_id_known = threading.Event()

    def query_id_is(self, query_id: str) -> None:
        """The query's id, ``StreamingQuery.id``: public, and the same at every restart from the
        checkpoint (its rows in the lake carry it). ``start()`` returns it, and Spark may call
        the first micro-batch before that: the micro-batch waits for it."""
        self.query_id = query_id
        self._query_id_known.set()

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        steps: dict[str, float] = {}
        spark = self.spark
        if not self._query_id_known.wait(QUERY_ID_WAIT_S):
            raise RuntimeError(f"micro-batch {batch_id}: the query's id was not told in {QUERY_ID_WAIT_S:.0f} s")
        query_id = self.query_id
        assert query_id is not None  # set with the event
        watermark = batch_watermark(self.settings.checkpoint_location, batch_id)
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
            lag_p50_s=seconds_since(written_at, counts.event_micros_p50),
            lag_p99_s=seconds_since(written_at, counts.event_micros_p01),
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
