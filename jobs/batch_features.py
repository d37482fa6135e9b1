"""Batch features: raw history -> validated, versioned Delta feature tables (+ Redis).

    spark-submit jobs/batch_features.py --profile local --start 2026-01-01 --end 2026-01-08
    tessera batch-features --start 2026-01-01 --end 2026-01-08          (the same)

The range is half-open, ``[--start, --end)`` in UTC dates; a backfill is the same command
with a wider range, and re-running a range replaces it (no duplicates).

For each event type the job reads the history the windows need (the range plus the
longest window before it), splits off malformed rows into the dead-letter table
``dead_letter_<event_type>`` with the reason, validates the rest (Great Expectations,
recorded as an MLflow run) and replaces the range's accepted events in
``bronze_<event_type>``, the event table the streaming job continues (``plumbing.event_tables``).
Then, for each feature table of ``transformations.catalog``:

1. compute it with the table's transformation and keep the rows in the range;
2. validate it: a failed suite blocks publication - the table keeps its previous version
   and the run ends FAILED with the failed expectations;
3. publish: one Delta commit replacing the range (``plumbing.lake``), then the newest
   row per entity to the online store (Redis, Feast's layout) unless ``--no-online``;
4. track: one MLflow run per table with the Delta version, row count, time range,
   schema, the hash of the feature definitions and the validation result + data docs.

Exit codes: 0 all tables published; 1 a validation failed (named on stderr); 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import mlflow
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from expectations.runner import record_validation, validate
from expectations.suites import feature_table_suite, raw_events_suite
from plumbing import feature_stats, tracking
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.event_tables import (
    ARRIVED_AT,
    BATCH_ID,
    BATCH_JOB_QUERY_ID,
    QUERY_ID,
    bronze_table,
    dead_letter_table,
)
from plumbing.lake import LakeTable
from plumbing.raw_events import SOURCE_DATE, has_history, read_history
from plumbing.spark import get_spark
from transformations import cleaning
from transformations.catalog import FEATURE_TABLES, definitions_hash
from transformations.schemas import EVENT_ENTITY_COLUMNS, EVENT_ID_COLUMNS, EVENT_TYPES, SCHEMAS
from transformations.tables import FeatureTable
from transformations.times import as_utc, utc_midnight

# History read before the range: a table's ttl is its longest window (the catalog's rule,
# tests/test_catalog.py), so the longest ttl holds every window's events; a longer window
# added to the catalog lengthens it.
LOOKBACK = max(table.ttl for table in FEATURE_TABLES.values())
# Above this share of malformed input rows the input itself is suspect: stop.
DEFAULT_MAX_REJECT_FRACTION = 0.05
RAW_EVENTS_RUN_PREFIX = "raw_events."


class NoHistory(Exception):
    """No history at all of an event type every chosen table needs."""


class ValidationFailed(Exception):
    """A suite failed: nothing was published for that table."""


@dataclass
class TableResult:
    table: str
    published: bool
    delta_version: int | None
    row_count: int
    run_id: str
    failures: list[str]


# ------------------------------------------------------------------ raw events
def read_valid_events(spark: SparkSession, cfg: Config, event_type: str, start: date, end: date,
                      now: datetime, max_reject_fraction: float) -> DataFrame:
    """Valid, de-duplicated events of [start - LOOKBACK, end); malformed ones of [start, end)
    go to the dead-letter table. Validates the valid events of the range (MLflow run)."""
    lookback_start = utc_midnight(start) - LOOKBACK
    raw = read_history(spark, cfg, event_type, lookback_start, utc_midnight(end))
    checked = cleaning.validate_typed_events(raw, event_type, now=now).persist(StorageLevel.MEMORY_AND_DISK)
    valid, rejected = cleaning.split_valid(checked)
    valid = cleaning.drop_duplicate_events(valid, EVENT_ENTITY_COLUMNS[event_type], EVENT_ID_COLUMNS[event_type])

    in_range = ((F.col("event_time") >= F.lit(utc_midnight(start)))
                & (F.col("event_time") < F.lit(utc_midnight(end))))
    # A row belongs to this run by the date folder it was filed under, else by its time:
    # so a malformed time (far future) is still caught, by exactly one run. A null time
    # outside date folders belongs to no day: every run files it rather than none.
    last_day = (end - timedelta(days=1)).isoformat()
    owned = F.coalesce(F.col(SOURCE_DATE).between(F.lit(start.isoformat()), F.lit(last_day)),
                       in_range, F.col("event_time").isNull())
    dead_letters = write_dead_letters(cfg, event_type, rejected.where(owned), start, end)

    valid_in_range = valid.where(in_range).drop(SOURCE_DATE)
    with tracking.feature_table_run(cfg, RAW_EVENTS_RUN_PREFIX + event_type,
                                    tags={"range_start": str(start), "range_end": str(end)}):
        total = checked.where(owned).count()
        reject_fraction = dead_letters / total if total else 0.0
        mlflow.log_metrics({"input_rows": total, "dead_letter_rows": dead_letters,
                            "reject_fraction": reject_fraction})
        print(f"  {event_type}: {total:,} input rows in range, {dead_letters:,} to dead_letter_{event_type} "
              f"({reject_fraction:.2%})", flush=True)
        outcome = validate(valid_in_range, raw_events_suite(event_type, now))
        record_validation(outcome, RAW_EVENTS_RUN_PREFIX + event_type)
        failures = list(outcome.failed)
        if reject_fraction > max_reject_fraction:
            failures.append(f"reject fraction {reject_fraction:.2%} above the limit {max_reject_fraction:.2%}")
        if failures:
            tracking.fail_run(failures)
            raise ValidationFailed(f"raw {event_type} events: " + "; ".join(failures))
        # The stream stamps its rows with its micro-batch; these rows say they came from here.
        version = bronze_table(cfg, event_type).write(
            valid_in_range.select(*SCHEMAS[event_type].fieldNames(), F.lit(now).alias(ARRIVED_AT),
                                  F.lit(-1).cast("bigint").alias(BATCH_ID),
                                  F.lit(BATCH_JOB_QUERY_ID).alias(QUERY_ID)),
            mode="replace_range", replace_range=(start, end))
        mlflow.log_metric("bronze_table_version", version)
    return valid.drop(SOURCE_DATE)


def write_dead_letters(cfg: Config, event_type: str, rejected: DataFrame, start: date, end: date) -> int:
    """Replace the run's dead letters (filed under the range's first day) and count them."""
    table = dead_letter_table(cfg, event_type, "batch")
    rows = rejected.select(
        F.lit(event_type).alias("event_type"),
        F.col(cleaning.RAW).alias("raw"),
        F.col(cleaning.REJECT_REASON).alias("reject_reason"),
        F.col("event_time"),
        F.lit("batch").alias("source"),
        F.lit(utc_midnight(start)).alias("filed_at"),  # the same run files to the same day: re-runs replace
        F.current_timestamp().alias("arrived_at"),
    )
    table.write(rows, mode="replace_range", replace_range=(start, end))
    return rejected.count()


# ------------------------------------------------------------------ feature tables
def expected_row_count(table: FeatureTable, sources: dict[str, DataFrame], start: date, end: date) -> int:
    """Distinct (entity, instant) pairs of the table's source events in the range: one row each."""
    pairs: DataFrame | None = None
    for event_type in table.sources:
        part = (sources[event_type]
                .where((F.col("event_time") >= F.lit(utc_midnight(start)))
                       & (F.col("event_time") < F.lit(utc_midnight(end))))
                .select(F.col(table.entity_column), F.col("event_time")))
        pairs = part if pairs is None else pairs.unionByName(part)
    assert pairs is not None  # a table has at least one source
    return pairs.distinct().count()


def compute_table(table: FeatureTable, sources: dict[str, DataFrame], start: date, end: date) -> DataFrame:
    inputs = {event_type: sources[event_type] for event_type in table.sources}
    features = table.build(**inputs)
    in_range = ((F.col(table.timestamp_column) >= F.lit(utc_midnight(start)))
                & (F.col(table.timestamp_column) < F.lit(utc_midnight(end))))
    return features.where(in_range).select(*table.columns)


def publish_table(cfg: Config, table: FeatureTable, sources: dict[str, DataFrame], start: date, end: date,
                  freshness_tolerance: timedelta, online: bool) -> TableResult:
    lake_table = LakeTable.for_config(cfg, table.name, time_column=table.timestamp_column)
    with tracking.feature_table_run(cfg, table.name,
                                    tags={"range_start": str(start), "range_end": str(end)}) as run:
        features = compute_table(table, sources, start, end).persist(StorageLevel.MEMORY_AND_DISK)
        row_count = features.count()
        expected = expected_row_count(table, sources, start, end)
        print(f"  {table.name}: {row_count:,} rows computed (expected {expected:,})", flush=True)
        suite = feature_table_suite(table, expected_row_count=expected,
                                    newest_at_least=utc_midnight(end) - freshness_tolerance)
        outcome = validate(features, suite)
        record_validation(outcome, table.name)
        tracking.log_row_count(row_count)
        tracking.log_time_range(utc_midnight(start), utc_midnight(end))
        tracking.log_schema(features.schema)
        tracking.log_feature_definitions_hash(definitions_hash())
        # What the features look like and what moved since the newest version with
        # statistics, on the validated rows (persisted: no second read of anything).
        reference = feature_stats.load(cfg, table.name)
        statistics = feature_stats.compute(features, table.name, table.feature_names, reference)
        failures = outcome.failed + feature_stats.judge(statistics, cfg.monitoring)
        record_statistics(statistics, reference)
        print(f"  {feature_stats.drift_line(table.name, statistics)}", flush=True)
        if failures:
            tracking.fail_run(failures)
            features.unpersist()
            return TableResult(table.name, False, None, row_count, run.info.run_id, failures)

        version = lake_table.write(features, mode="replace_range", replace_range=(start, end))
        tracking.log_delta_version(version)
        feature_stats.save(cfg, statistics, version, datetime.now(timezone.utc))
        if online:
            from plumbing.online_store import write_dataframe_online

            online_result = write_dataframe_online(features, table, cfg)
            mlflow.log_metrics({"online_rows_written": online_result.written,
                                "online_rows_skipped_older": online_result.skipped_older,
                                "online_rows_skipped_expired": online_result.skipped_expired})
        features.unpersist()
        return TableResult(table.name, True, version, row_count, run.info.run_id, [])


def record_statistics(statistics: list[feature_stats.FeatureStatistics],
                      reference: dict[str, feature_stats.FeatureStatistics]) -> None:
    """The statistics and drift in the run: JSON, one PNG, and drift metrics and warnings."""
    mlflow.log_dict({"features": feature_stats.as_json(statistics)}, "feature_statistics.json")
    figure = feature_stats.plot(statistics, reference)
    mlflow.log_figure(figure, "feature_statistics.png")
    figure.clf()
    compared = [stats for stats in statistics if stats.psi is not None]
    if compared:
        warned = [stats for stats in compared if stats.warnings]
        mlflow.log_metrics({"drift_reference_version": compared[0].reference_version or 0,
                            "drift_psi_max": max(stats.psi or 0.0 for stats in compared),
                            "drift_features_warned": len(warned)})
        if warned:
            mlflow.set_tag("drift_warnings", "; ".join(f"{stats.feature}: {', '.join(stats.warnings)}"
                                                        for stats in warned)[:5000])


# ------------------------------------------------------------------ the job
def run(cfg: Config, start: date, end: date, tables: list[str] | None = None, now: datetime | None = None,
        freshness_tolerance: timedelta = timedelta(days=1), online: bool = True,
        max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
        spark: SparkSession | None = None) -> list[TableResult]:
    """Compute, validate, publish and track ``tables`` (default: all) for [start, end)."""
    if end <= start:
        raise ValueError(f"empty range: --end {end} must be after --start {start}")
    chosen = [FEATURE_TABLES[name] for name in (tables or FEATURE_TABLES)]
    now = now or datetime.now(timezone.utc)
    # The stage bar for a person at a terminal; logs and tests get no carriage-return lines.
    spark = spark or get_spark(cfg, "batch-features", console_progress=sys.stderr.isatty())
    tracking.configure_tracking(cfg)

    needed = sorted({event_type for table in chosen for event_type in table.sources},
                    key=EVENT_TYPES.index)
    # An event type without any history (an export without activity, no chargebacks): the
    # tables that need it are skipped, said once; the others compute.
    absent = [event_type for event_type in needed if not has_history(spark, cfg, event_type)]
    for event_type in absent:
        skipped = [table.name for table in chosen if event_type in table.sources]
        print(f"batch-features: no {event_type} history under {cfg.events.history_uri}: skipping "
              f"{', '.join(skipped)}", flush=True)
    chosen = [table for table in chosen if not set(table.sources) & set(absent)]
    needed = [event_type for event_type in needed if event_type not in absent]
    if not chosen:
        raise NoHistory(f"no history of {', '.join(absent)} under {cfg.events.history_uri}: nothing to compute")
    print(f"batch-features [{start}, {end}) profile={cfg.profile}: reading {', '.join(needed)}", flush=True)
    sources = {event_type: read_valid_events(spark, cfg, event_type, start, end, now, max_reject_fraction)
               .persist(StorageLevel.MEMORY_AND_DISK)
               for event_type in needed}
    results = [publish_table(cfg, table, sources, start, end, freshness_tolerance, online) for table in chosen]
    for df in sources.values():
        df.unpersist()
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch_features", description=__doc__.split("\n\n")[0],
        epilog="The range is half-open [start, end) in UTC dates.")
    add_profile_option(parser)
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="first date, YYYY-MM-DD")
    parser.add_argument("--end", type=date.fromisoformat, required=True, help="date after the last, YYYY-MM-DD")
    parser.add_argument("--tables", help=f"comma-separated subset of: {', '.join(FEATURE_TABLES)}")
    parser.add_argument("--now", type=datetime.fromisoformat,
                        help="the clock for future-timestamp checks (default: now)")
    parser.add_argument("--freshness-tolerance-hours", type=float, default=24.0,
                        help="the newest row must be at most this old at --end (default 24)")
    parser.add_argument("--max-reject-fraction", type=float, default=DEFAULT_MAX_REJECT_FRACTION,
                        help=f"stop when more of the input is malformed (default {DEFAULT_MAX_REJECT_FRACTION})")
    parser.add_argument("--no-online", dest="online", action="store_false",
                        help="do not publish the newest values to the online store")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.start >= args.end:
        parser.error(f"--start {args.start} must be before --end {args.end} (the range is [start, end))")
    tables = [name for name in (args.tables or "").split(",") if name] or None
    unknown = set(tables or []) - set(FEATURE_TABLES)
    if unknown:
        print(f"batch_features: unknown table(s) {sorted(unknown)}; known: {', '.join(FEATURE_TABLES)}",
              file=sys.stderr)
        return 2
    cfg = load_config_for_command(args.profile, "batch_features")
    now = as_utc(args.now) if args.now else None
    started = time.monotonic()
    try:
        results = run(cfg, args.start, args.end, tables, now=now,
                      freshness_tolerance=timedelta(hours=args.freshness_tolerance_hours),
                      online=args.online, max_reject_fraction=args.max_reject_fraction)
    except ValidationFailed as exc:
        print(f"batch_features: validation failed, nothing published: {exc}", file=sys.stderr)
        return 1
    except NoHistory as exc:
        print(f"batch_features: {exc}", file=sys.stderr)
        return 2
    print(f"batch-features done in {time.monotonic() - started:.0f}s; MLflow: {cfg.mlflow.tracking_uri}")
    for result in results:
        state = f"published as version {result.delta_version}" if result.published else "NOT published"
        print(f"  {result.table:28s} {result.row_count:>10,} rows  {state}  (run {result.run_id})")
    failed = [result for result in results if not result.published]
    for result in failed:
        print(f"batch_features: {result.table} failed validation:\n    " + "\n    ".join(result.failures),
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
