"""Streaming features: live events from Kafka (or the landing zone) -> bronze Delta tables -> Redis.

    spark-submit jobs/stream_features.py --profile local
    python -m jobs.stream_features --available-now      (process what has landed, then stop)
    tessera stream-features ...                         (the same, through the console command)

One Structured Streaming query reads the three event types - the Kafka topics
``transactions``, ``activity``, ``chargebacks`` (``events.source: kafka``, the default; see
``jobs.streaming.source``) or the folders ``<events.landing_dir>/<event_type>/`` (``files``: JSON lines,
Spark's text file source) - parses every record on the stream itself with
``transformations.cleaning.parse_json_events`` (a record is one JSON line either way), and
unions the three into one stream with an event-time watermark. ``foreachBatch`` then
handles each micro-batch.

The parts, a module each (``jobs/streaming/``):

* ``source``: the query's input, the watermark, Kafka, late events; a micro-batch's
  records classified (accepted, malformed, too late) and brought to the driver;
* ``micro_batch``: the ``foreachBatch`` function and its steps; why nothing is lost or
  counted twice;
* ``state``: the entities' history kept in memory (``EventHistory``);
* ``features``: the rows a micro-batch stores online (``online_rows``);
* ``sinks``: bronze and dead-letter appends, once per micro-batch;
* ``progress``: the log line, the MLflow run, freshness;
* ``schemas``, ``settings``: the tables' and the records' shapes, the command line's settings.

This module is the command: it starts the query and restarts it after a failure. A
failed micro-batch (Redis down, a lake conflict) stops the query; the job restarts it
from the checkpoint after a back-off (2, 4, 8 ... 30 s) and gives up after
``--max-failures`` failures in a row without a finished micro-batch in between.

Exit codes: 0 stopped cleanly (drained with ``--available-now``, or SIGTERM/SIGINT);
1 too many failures in a row; 2 bad usage.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path

from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from jobs.streaming.micro_batch import MicroBatchProcessor
from jobs.streaming.progress import StreamRun
from jobs.streaming.settings import StreamSettings
from jobs.streaming.source import interval, read_events, source_description
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.spark import get_spark

MAX_BACKOFF_S = 30.0


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
        writer = writer.trigger(processingTime=interval(settings.trigger_interval))
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
            processor.query_id_is(query.id)
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
    add_profile_option(parser)
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
