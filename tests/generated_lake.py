"""A generated history and its feature tables (one Delta version each), computed by the
batch job's transformations without its validation and tracking (tested elsewhere).
Shared by the tests that need a small lake to train on (not a test module itself)."""
from __future__ import annotations

from datetime import date, timedelta

from pyspark.sql import SparkSession

from jobs import batch_features, generate_events
from plumbing.config import Config
from plumbing.lake import LakeTable
from plumbing.raw_events import read_history
from transformations.catalog import FEATURE_TABLES
from transformations.schemas import EVENT_TYPES


def write_generated_lake(spark: SparkSession, cfg: Config, *, events: int, start: date, days: int, seed: int,
                         fraud_rate: float) -> None:
    """Generate ``events`` over ``days`` from ``start`` into the profile's history, and
    write every feature table of that period to the profile's lake."""
    generate_events.generate_history(cfg.events.history_uri, events=events, days=days, start_date=start,
                                     seed=seed, fraud_rate=fraud_rate, partition_by_date=True, progress=False)
    sources = {event_type: read_history(spark, cfg, event_type) for event_type in EVENT_TYPES}
    end = start + timedelta(days=days)
    for table in FEATURE_TABLES.values():
        rows = batch_features.compute_table(table, sources, start, end)
        LakeTable.for_config(cfg, table.name, time_column=table.timestamp_column).write(rows)
