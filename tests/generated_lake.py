"""A generated history and its feature tables (one Delta version each), computed by the
batch job's transformations without its validation and tracking (tested elsewhere).
Shared by the tests that need a small lake to train on (not a test module itself). And the
history the batch job's own run is made from (``batch_job_lake`` in tests/conftest.py)."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

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


# The batch job's own run on a small history: tests/conftest.py's ``batch_job_lake``.
BATCH_START, BATCH_END = date(2026, 1, 1), date(2026, 1, 4)
BATCH_NOW = datetime(2026, 1, 4, tzinfo=timezone.utc)
BATCH_EVENTS, BATCH_MALFORMED_FRACTION, BATCH_SEED = 3000, 0.01, 7


def generate_batch_history(cfg: Config, *extra: str, malformed_fraction: float = BATCH_MALFORMED_FRACTION) -> None:
    """BATCH_EVENTS over the days of [BATCH_START, BATCH_END) into the profile's history,
    through the generator's command line, as a user runs it."""
    days = (BATCH_END - BATCH_START).days
    code = generate_events.main(["history", "--out", cfg.events.history_uri, "--profile", cfg.profile,
                                 "--events", str(BATCH_EVENTS), "--days", str(days),
                                 "--start-date", BATCH_START.isoformat(), "--partition-by-date", "--overwrite",
                                 "--no-progress", "--seed", str(BATCH_SEED),
                                 "--malformed-fraction", str(malformed_fraction), *extra])
    assert code == 0
