"""Consistency check: are the values in Redis the batch values over the same events?

    python -m jobs.consistency_check [--tables t1,t2] [--sample-fraction 0.1] [--as-of ISO]
    tessera consistency-check ...                      (the same, through the console command)

For each feature table, the table's catalog function (the batch job's) runs over the events
the streaming job accepted (``bronze_<event_type>``) before the cut-off T (default: now),
and gives each entity's value as of T: its newest row, if within the table's ttl (the
"as of" rule of ``transformations``). Redis gives its value as of T through
``OnlineStoreReader``, read on the executors. For every entity of those events, or a
sample, the check compares

- presence: a batch row and a present Redis value, or neither (missing or expired);
- the instant: the Redis value's event time equals the batch row's ``event_timestamp``;
- each feature: both null, or ``|online - batch| <= tolerance * max(1, |batch|)`` (the
  stream adds sums up from another starting point: they differ in the last bits).

An entity whose Redis value is from T or later (the stream went on after the cut-off)
cannot be compared as of T: it is counted as ``skipped_newer``, not as a mismatch. Run the
check on a drained or stopped stream: while a micro-batch is between its bronze commit
and its Redis write, its entities differ for a moment.

Reports per table the entities checked, the mismatched ones and their rate, and per
feature the mismatches and the largest absolute difference; records them in an MLflow
run (experiment ``tessera/consistency-check``, report as ``consistency.json``).
``comparisons`` gives the same comparison entity by entity and feature by feature, as a
pandas DataFrame (``notebooks/03_online_vs_offline.ipynb`` plots it).

Exit codes: 0 every table within ``--max-mismatch-rate``; 1 a table above it; 2 bad usage.
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import mlflow
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from plumbing import tracking
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.event_tables import bronze_table
from plumbing.online_store import EXPIRED, MISSING, PRESENT, OnlineStoreReader
from plumbing.spark import get_spark
from transformations.catalog import FEATURE_TABLES, spark_schema
from transformations.schemas import SCHEMAS
from transformations.tables import Feature, FeatureTable
from transformations.times import as_utc

CONSISTENCY_EXPERIMENT = "tessera/consistency-check"
# Window sums are differences of running totals (transformations.windows.sum_in_last), whose
# rounding grows with the running total, and the stream's totals start later than the
# batch's. A missing or double-counted event moves a value far more than this.
DEFAULT_TOLERANCE = 1e-6
EXAMPLES = 5  # mismatched entity ids shown per table

# Columns of the comparison: the batch side and the online side of each value.
BATCH_TS, ONLINE_TS, ONLINE_STATUS = "batch_event_timestamp", "online_event_timestamp", "online_status"


def batch_column(feature: str) -> str:
    return f"batch__{feature}"


def online_column(feature: str) -> str:
    return f"online__{feature}"


@dataclass
class FeatureCheck:
    mismatches: int
    max_abs_diff: float | None  # over the entities where both sides hold a number


@dataclass
class TableCheck:
    table: str
    entities_checked: int
    skipped_newer: int          # the Redis value is from the cut-off or later
    mismatched_entities: int
    presence_mismatches: int    # a value on one side only
    timestamp_mismatches: int   # values of different instants
    features: dict[str, FeatureCheck]
    examples: list[str]         # some mismatched entity ids

    @property
    def mismatch_rate(self) -> float:
        return self.mismatched_entities / self.entities_checked if self.entities_checked else 0.0


# ------------------------------------------------------------------ both sides
def batch_values(spark: SparkSession, cfg: Config, table: FeatureTable, as_of: datetime) -> DataFrame:
    """Per entity of the bronze events before ``as_of``: its batch row as of ``as_of``, or
    nulls when its newest row is past the ttl. Columns: entity, BATCH_TS, batch__<feature>."""
    sources = {}
    for event_type in table.sources:
        bronze = bronze_table(cfg, event_type)
        sources[event_type] = (bronze.read(spark, end=as_of).select(*SCHEMAS[event_type].fieldNames())
                               if bronze.exists() else spark.createDataFrame([], SCHEMAS[event_type]))
    # Every entity with an event has rows, so the newest row per entity covers them all.
    newest = (table.build(**sources).groupBy(table.entity_column)
              .agg(F.max_by(F.struct(*table.columns), F.col(table.timestamp_column)).alias("row")))
    is_valid = F.col(f"row.{table.timestamp_column}") >= F.lit(as_of - table.ttl)
    return newest.select(
        F.col(table.entity_column),
        F.when(is_valid, F.col(f"row.{table.timestamp_column}")).alias(BATCH_TS),
        *[F.when(is_valid, F.col(f"row.{name}")).alias(batch_column(name)) for name in table.feature_names],
    )


def online_values(entities: DataFrame, table: FeatureTable, cfg: Config, as_of: datetime) -> DataFrame:
    """Redis's values as of ``as_of`` for ``entities`` (one column, the entity), read on the
    executors. Columns: entity, ONLINE_STATUS, ONLINE_TS, online__<feature> (null unless present)."""
    entity = table.entity_column
    refs = [f"{table.name}:{name}" for name in table.feature_names]
    feature_types = {field.name: field.dataType for field in spark_schema(table).fields}
    schema = T.StructType([
        T.StructField(entity, T.StringType()),
        T.StructField(ONLINE_STATUS, T.StringType()),
        T.StructField(ONLINE_TS, T.TimestampType()),
        *[T.StructField(online_column(name), feature_types[name]) for name in table.feature_names],
    ])
    arrow_schema = to_arrow_schema(schema, timezone="UTC")

    def read_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        reader = OnlineStoreReader(cfg, tables=[table])
        for batch in batches:
            ids = batch.column(entity).to_pylist()
            rows = []
            for entity_id, values in zip(ids, reader.read(refs, [{entity: entity_id} for entity_id in ids],
                                                          now=as_of), strict=True):
                statuses = {value.status for value in values.values()}
                status = PRESENT if PRESENT in statuses else EXPIRED if EXPIRED in statuses else MISSING
                row = {entity: entity_id, ONLINE_STATUS: status,
                       ONLINE_TS: next((value.event_time for value in values.values() if value.event_time), None)}
                row.update({online_column(name): values[ref].value
                            for name, ref in zip(table.feature_names, refs, strict=True)})
                rows.append(row)
            yield pa.RecordBatch.from_pylist(rows, schema=arrow_schema)

    return entities.mapInArrow(read_partition, schema)


# ------------------------------------------------------------------ the comparison
def _equal(feature: Feature, tolerance: float) -> Column:
    batch, online = F.col(batch_column(feature.name)), F.col(online_column(feature.name))
    if feature.dtype == "bigint":
        return batch.eqNullSafe(online)
    close = F.abs(online - batch) <= F.lit(tolerance) * F.greatest(F.lit(1.0), F.abs(batch))
    return (batch.isNull() & online.isNull()) | F.coalesce(close, F.lit(False))


def _compared(spark: SparkSession, cfg: Config, table: FeatureTable, as_of: datetime,
              sample_fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """(the batch side, persisted: unpersist it when done; both sides joined per entity)."""
    entity = table.entity_column
    batch = batch_values(spark, cfg, table, as_of)
    if sample_fraction < 1.0:
        batch = batch.sample(fraction=sample_fraction, seed=seed)
    batch = batch.persist(StorageLevel.MEMORY_AND_DISK)
    return batch, batch.join(online_values(batch.select(entity), table, cfg, as_of), on=entity, how="left")


@dataclass(frozen=True)
class _Conditions:
    """The comparison's conditions on the joined sides (see the module docstring)."""

    both: Column              # a batch row and a present Redis value
    is_newer: Column          # the Redis value is from the cut-off or later: not comparable
    presence_differs: Column
    timestamp_differs: Column
    feature_differs: dict[str, Column]  # per feature: both sides there, values unequal


def _conditions(table: FeatureTable, as_of: datetime, tolerance: float) -> _Conditions:
    has_batch = F.col(BATCH_TS).isNotNull()
    has_online = F.col(ONLINE_STATUS) == PRESENT
    both = has_batch & has_online
    return _Conditions(
        both=both,
        is_newer=has_online & (F.col(ONLINE_TS) >= F.lit(as_of)),
        presence_differs=has_batch != has_online,
        timestamp_differs=both & (F.col(BATCH_TS) != F.col(ONLINE_TS)),
        feature_differs={feature.name: both & ~_equal(feature, tolerance) for feature in table.features},
    )


def check_table(spark: SparkSession, cfg: Config, table: FeatureTable, as_of: datetime,
                sample_fraction: float = 1.0, seed: int = 0, tolerance: float = DEFAULT_TOLERANCE) -> TableCheck:
    entity = table.entity_column
    batch, compared = _compared(spark, cfg, table, as_of, sample_fraction, seed)
    conditions = _conditions(table, as_of, tolerance)
    both, is_newer = conditions.both, conditions.is_newer
    presence_differs, timestamp_differs = conditions.presence_differs, conditions.timestamp_differs
    feature_differs = conditions.feature_differs
    any_differs = functools.reduce(Column.__or__, [presence_differs, timestamp_differs, *feature_differs.values()])

    def count_where(condition: Column) -> Column:
        return F.count(F.when(condition, True))

    compared = compared.withColumn("skipped_newer", is_newer).withColumn("differs", ~is_newer & any_differs)
    checked = ~F.col("skipped_newer")
    totals = compared.agg(
        count_where(checked).alias("checked"),
        count_where(F.col("skipped_newer")).alias("skipped_newer"),
        count_where(F.col("differs")).alias("mismatched"),
        count_where(checked & presence_differs).alias("presence"),
        count_where(checked & timestamp_differs).alias("timestamp"),
        *[count_where(checked & differs).alias(f"mismatches__{name}") for name, differs in feature_differs.items()],
        *[F.max(F.when(checked & both, F.abs(F.col(online_column(name)) - F.col(batch_column(name)))))
          .cast("double").alias(f"max_abs_diff__{name}") for name in table.feature_names],
    ).first()
    assert totals is not None  # an aggregation without groups has one row
    examples = ([row[entity] for row in compared.where(F.col("differs")).select(entity).limit(EXAMPLES).collect()]
                if totals["mismatched"] else [])
    batch.unpersist()
    return TableCheck(
        table=table.name, entities_checked=totals["checked"], skipped_newer=totals["skipped_newer"],
        mismatched_entities=totals["mismatched"], presence_mismatches=totals["presence"],
        timestamp_mismatches=totals["timestamp"],
        features={name: FeatureCheck(totals[f"mismatches__{name}"], totals[f"max_abs_diff__{name}"])
                  for name in table.feature_names},
        examples=sorted(examples))


# Columns of ``comparisons``, one row per entity and feature.
COMPARISON_COLUMNS = ["table", "entity", "feature", "batch_value", "online_value", "abs_diff", BATCH_TS,
                      ONLINE_TS, ONLINE_STATUS, "skipped_newer", "matches"]


def comparisons(spark: SparkSession, cfg: Config, table: FeatureTable, as_of: datetime,
                sample_fraction: float = 1.0, seed: int = 0,
                tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """The comparison ``check_table`` counts, entity by entity and feature by feature, in pandas.

    One row per entity of the (sampled) bronze events and feature of ``table``, columns
    ``COMPARISON_COLUMNS``: the entity id; the batch value as of ``as_of`` and Redis's,
    as floats (NaN: none), and their absolute difference (NaN unless both are numbers);
    both sides' event times (UTC; NaT: none) and Redis's status; ``skipped_newer`` (the
    Redis value is from the cut-off or later: not comparable, as in ``check_table``); and
    ``matches``: presence, instant and value all agree. ``check_table``'s mismatched
    entities are the rows not skipped and not matching, counted once per entity; its
    mismatches of a feature are those where the values alone differ (both sides present,
    same instant or not). Sampled as ``check_table`` samples (``sample_fraction``, ``seed``).
    """
    batch, compared = _compared(spark, cfg, table, as_of, sample_fraction, seed)
    conditions = _conditions(table, as_of, tolerance)
    entity_differs = conditions.presence_differs | conditions.timestamp_differs
    per_feature = F.array(*[F.struct(
        F.lit(name).alias("feature"),
        F.col(batch_column(name)).cast("double").alias("batch_value"),
        F.col(online_column(name)).cast("double").alias("online_value"),
        F.abs(F.col(online_column(name)).cast("double") - F.col(batch_column(name)).cast("double")).alias("abs_diff"),
        F.coalesce(~(entity_differs | differs), F.lit(False)).alias("matches"),
    ) for name, differs in conditions.feature_differs.items()])
    rows: pd.DataFrame = compared.select(
        F.lit(table.name).alias("table"), F.col(table.entity_column).alias("entity"),
        F.col(BATCH_TS), F.col(ONLINE_TS), F.col(ONLINE_STATUS),
        F.coalesce(conditions.is_newer, F.lit(False)).alias("skipped_newer"),
        F.inline(per_feature),
    ).toPandas()
    batch.unpersist()
    for column in (BATCH_TS, ONLINE_TS):  # Spark hands naive times of its session's zone (UTC here)
        rows[column] = pd.to_datetime(rows[column])
        if rows[column].dt.tz is None:
            rows[column] = rows[column].dt.tz_localize(timezone.utc)
    return rows[COMPARISON_COLUMNS].sort_values("entity", kind="stable", ignore_index=True)  # features in table order


# ------------------------------------------------------------------ the job
def run(cfg: Config, tables: list[FeatureTable], as_of: datetime, sample_fraction: float = 1.0,
        seed: int = 0, tolerance: float = DEFAULT_TOLERANCE, max_mismatch_rate: float = 0.0,
        spark: SparkSession | None = None) -> tuple[list[TableCheck], bool]:
    """Check ``tables``; record an MLflow run; return the checks and whether all passed."""
    spark = spark or get_spark(cfg, "consistency-check")
    tracking.configure_tracking(cfg)
    tracking.use_experiment(CONSISTENCY_EXPERIMENT, (
        "One run per consistency check: the online values in Redis against the batch function over the "
        "offline events, per table (metrics `<table>.mismatch_rate`, `<table>.entities_checked`, "
        "`<table>.<feature>.mismatches`; artifact `consistency.json`). A FAILED run found more mismatches "
        "than allowed."))
    with mlflow.start_run(run_name="consistency_check", tags={"as_of": as_of.isoformat()}):
        mlflow.log_params({"tables": ",".join(table.name for table in tables), "sample_fraction": sample_fraction,
                           "tolerance": tolerance, "max_mismatch_rate": max_mismatch_rate, "seed": seed})
        checks = [check_table(spark, cfg, table, as_of, sample_fraction, seed, tolerance) for table in tables]
        for check in checks:
            metrics = {f"{check.table}.entities_checked": check.entities_checked,
                       f"{check.table}.mismatch_rate": check.mismatch_rate,
                       f"{check.table}.skipped_newer": check.skipped_newer}
            for name, feature in check.features.items():
                metrics[f"{check.table}.{name}.mismatches"] = feature.mismatches
                if feature.max_abs_diff is not None:
                    metrics[f"{check.table}.{name}.max_abs_diff"] = feature.max_abs_diff
            mlflow.log_metrics(metrics)
        mlflow.log_dict({"as_of": as_of.isoformat(), "checks": [asdict(check) for check in checks]},
                        "consistency.json")
        failed = [f"{check.table}: mismatch rate {check.mismatch_rate:.4%} above {max_mismatch_rate:.4%}"
                  for check in checks if check.mismatch_rate > max_mismatch_rate]
        if failed:
            tracking.fail_run(failed)
    return checks, not failed


def report(checks: list[TableCheck], as_of: datetime) -> str:
    lines = [f"consistency check as of {as_of.isoformat()}"]
    for check in checks:
        lines.append(f"  {check.table}: {check.entities_checked:,} entities checked, "
                     f"{check.mismatched_entities:,} mismatched ({check.mismatch_rate:.4%}); "
                     f"presence {check.presence_mismatches:,}, instant {check.timestamp_mismatches:,}, "
                     f"skipped (Redis newer than the cut-off) {check.skipped_newer:,}")
        for name, feature in check.features.items():
            if feature.mismatches or feature.max_abs_diff:
                lines.append(f"      {name:32s} {feature.mismatches:>8,} mismatches, "
                             f"largest difference {feature.max_abs_diff!r}")
        if check.examples:
            lines.append(f"      e.g. {', '.join(check.examples)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consistency_check", description=__doc__.split("\n\n")[0])
    add_profile_option(parser)
    parser.add_argument("--tables", help=f"comma-separated subset of: {', '.join(FEATURE_TABLES)}")
    parser.add_argument("--as-of", type=datetime.fromisoformat,
                        help="the cut-off, ISO-8601 (default: now; without a zone: UTC)")
    parser.add_argument("--sample-fraction", type=float, default=1.0,
                        help="share of the entities to check (default 1: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"relative tolerance for double features (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--max-mismatch-rate", type=float, default=0.0,
                        help="exit 1 when a table's share of mismatched entities is above this (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [name for name in (args.tables or "").split(",") if name] or list(FEATURE_TABLES)
    unknown = sorted(set(names) - set(FEATURE_TABLES))
    if unknown or not 0.0 < args.sample_fraction <= 1.0:
        problem = f"unknown table(s) {unknown}" if unknown else "--sample-fraction must be in (0, 1]"
        print(f"consistency_check: {problem}", file=sys.stderr)
        return 2
    cfg = load_config_for_command(args.profile, "consistency_check")
    as_of = as_utc(args.as_of) if args.as_of else datetime.now(timezone.utc)
    checks, passed = run(cfg, [FEATURE_TABLES[name] for name in names], as_of, args.sample_fraction, args.seed,
                         args.tolerance, args.max_mismatch_rate)
    print(report(checks, as_of))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
