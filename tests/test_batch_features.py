"""The batch feature job end to end, on real files, real Delta tables, real MLflow:
both profiles, the validation gate, re-runs, dead letters, the command line."""
from __future__ import annotations

import os
from datetime import datetime, timedelta

import mlflow
import pytest
from pyspark.sql import functions as F

from jobs import batch_features
from plumbing import tracking
from plumbing.config import load_config
from plumbing.event_tables import bronze_table
from plumbing.lake import LakeTable
from tests.generated_lake import (
    BATCH_END,
    BATCH_EVENTS,
    BATCH_MALFORMED_FRACTION,
    BATCH_NOW,
    BATCH_START,
    generate_batch_history,
)
from transformations.catalog import FEATURE_TABLES

START, END, NOW, EVENTS = BATCH_START, BATCH_END, BATCH_NOW, BATCH_EVENTS


def _cfg(profile: str, lake_root: str, history_uri: str):
    return load_config(profile, environ={**os.environ, "TESSERA__LAKE__ROOT": lake_root,
                                         "TESSERA__EVENTS__HISTORY_URI": history_uri})


@pytest.fixture(scope="module")
def local_run(batch_job_lake):
    """One published run on the local profile, shared by the tests that only read it or re-run
    a range on it: the session's ``batch_job_lake`` (tests/conftest.py), 1 % malformed rows."""
    return batch_job_lake


def test_every_table_is_published_with_one_row_per_entity_instant(local_run, spark):
    cfg, results = local_run
    assert [r.table for r in results] == list(FEATURE_TABLES)
    assert all(r.published and r.delta_version == 0 for r in results)
    for result in results:
        table = FEATURE_TABLES[result.table]
        df = LakeTable.for_config(cfg, table.name, time_column=table.timestamp_column).read(spark)
        assert df.count() == result.row_count > 0
        assert df.select(table.entity_column, table.timestamp_column).distinct().count() == result.row_count
        assert df.agg(F.min(table.timestamp_column)).first()[0] >= datetime(2026, 1, 1)


def test_runs_are_findable_by_table_and_version_with_lineage(local_run):
    cfg, results = local_run
    result = results[0]
    runs = tracking.find_runs(cfg, result.table, delta_version=0)
    assert result.run_id in [run.info.run_id for run in runs]
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["row_count"] == result.row_count
    assert run.data.metrics["validation_success"] == 1.0
    assert len(run.data.tags["feature_definitions_hash"]) == 64
    assert run.data.tags["range_start"].startswith("2026-01-01")
    artifacts = {a.path for a in mlflow.MlflowClient(cfg.mlflow.tracking_uri).list_artifacts(result.run_id)}
    assert "schema.json" in artifacts and "validation" in artifacts


def test_rerunning_the_same_range_leaves_no_duplicates(local_run, spark):
    cfg, first = local_run
    again = batch_features.run(cfg, START, END, now=NOW, online=False, spark=spark,
                               tables=["user_activity_features"])
    before = next(r for r in first if r.table == "user_activity_features")
    assert again[0].published and again[0].delta_version == before.delta_version + 1
    table = LakeTable.for_config(cfg, "user_activity_features", time_column="event_timestamp")
    assert table.read(spark).count() == before.row_count
    assert table.read(spark, version=before.delta_version).count() == before.row_count


def test_accepted_events_of_the_range_land_in_the_events_table_once(local_run, spark):
    cfg, _ = local_run
    # A re-run (the test above re-ran activity) replaces the range: each event once.
    for event_type, id_column in batch_features.EVENT_ID_COLUMNS.items():
        events = bronze_table(cfg, event_type).read(spark)
        rows = events.count()
        assert rows > 0
        assert events.select(id_column).distinct().count() == rows
        first, last = events.agg(F.min("event_time"), F.max("event_time")).first()
        assert datetime(2026, 1, 1) <= first and last < datetime(2026, 1, 4)


def test_failed_validation_keeps_the_previous_version_and_fails_the_run(local_run, spark):
    cfg, first = local_run
    published = next(r for r in first if r.table == "merchant_features")
    table = LakeTable.for_config(cfg, "merchant_features", time_column="event_timestamp")
    version_before = table.version()
    # Zero freshness tolerance: the newest row must be at the very end of the range, which
    # it never is, so the freshness expectation fails.
    results = batch_features.run(cfg, START, END, now=NOW, online=False, spark=spark,
                                 tables=["merchant_features"], freshness_tolerance=timedelta(0))
    assert not results[0].published
    assert any("expect_column_max_to_be_between" in failure for failure in results[0].failures)
    assert table.version() == version_before
    assert table.read(spark).count() == published.row_count
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(results[0].run_id)
    assert run.info.status == "FAILED"
    assert "expect_column_max_to_be_between" in run.data.tags["failure_reason"]


def test_malformed_rows_go_to_the_dead_letter_table_exactly_once(local_run, spark):
    cfg, _ = local_run  # its history has 1 % malformed rows, filed by the first run
    both_sources = ["user_transaction_features", "user_activity_features"]  # chargebacks are never malformed
    # The re-run replaces the dead letters of the range (and a test above re-ran activity).
    batch_features.run(cfg, START, END, now=NOW, online=False, spark=spark, tables=both_sources)
    dead = LakeTable.for_config(cfg, "dead_letter_activity", time_column="filed_at").read(spark)
    malformed_activity = dead.count()
    dead_txn = LakeTable.for_config(cfg, "dead_letter_transactions", time_column="filed_at").read(spark)
    assert malformed_activity > 0
    assert malformed_activity + dead_txn.count() == round(BATCH_MALFORMED_FRACTION * EVENTS)
    assert dead.where(F.col("reject_reason").isNull() | F.col("raw").isNull()).count() == 0


def test_too_many_malformed_rows_stop_the_job_before_publishing(local_services, spark, tmp_path):
    cfg = _cfg("local", str(tmp_path / "lake"), str(tmp_path / "history"))
    generate_batch_history(cfg, malformed_fraction=0.2)
    with pytest.raises(batch_features.ValidationFailed, match="reject fraction"):
        batch_features.run(cfg, START, END, now=NOW, online=False, spark=spark, tables=["user_activity_features"])
    assert not LakeTable.for_config(cfg, "user_activity_features").exists()


def test_s3_profile_reads_history_and_writes_the_lake_on_the_endpoint(s3_services, spark):
    prefix = f"tests/batch-{os.getpid()}-{datetime.now().strftime('%H%M%S%f')}"
    bucket = s3_services.s3.buckets[0]
    cfg = _cfg("s3", f"s3://{bucket}/{prefix}/lake", f"s3://{bucket}/{prefix}/history")
    generate_batch_history(cfg, malformed_fraction=0)
    results = batch_features.run(cfg, START, END, now=NOW, online=False, spark=spark,
                                 tables=["user_transaction_features"])
    assert results[0].published
    table = LakeTable.for_config(cfg, "user_transaction_features", time_column="event_timestamp")
    assert table.uri.startswith("s3://")
    assert table.read(spark).count() == results[0].row_count > 0


def test_the_command_exits_1_and_names_the_failed_expectation(local_run, monkeypatch, capsys):
    # The command line in-process (the warm session); spark-submit runs the same main() and
    # passes its exit code on: tests/test_readme.py runs the README's spark-submit examples.
    cfg, _ = local_run
    monkeypatch.setenv("TESSERA__LAKE__ROOT", cfg.lake.root)
    monkeypatch.setenv("TESSERA__EVENTS__HISTORY_URI", cfg.events.history_uri)
    code = batch_features.main(["--profile", "local", "--start", START.isoformat(), "--end", END.isoformat(),
                                "--tables", "merchant_features", "--now", NOW.isoformat(), "--no-online",
                                "--freshness-tolerance-hours", "0"])
    errors = capsys.readouterr().err
    assert code == 1, errors[-3000:]
    assert "merchant_features failed validation" in errors
    assert "expect_column_max_to_be_between" in errors


def test_a_reversed_range_is_a_usage_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        batch_features.main(["--start", "2026-12-03", "--end", "2026-11-01"])
    assert exit_info.value.code == 2
    assert "--start 2026-12-03 must be before --end 2026-11-01" in capsys.readouterr().err


def test_no_history_of_any_needed_event_type_is_a_clear_error(local_services, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TESSERA__LAKE__ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("TESSERA__EVENTS__HISTORY_URI", str(tmp_path / "empty-history"))
    code = batch_features.main(["--profile", "local", "--start", START.isoformat(), "--end", END.isoformat(),
                                "--tables", "user_activity_features", "--now", NOW.isoformat(), "--no-online"])
    printed = capsys.readouterr()
    assert code == 2, printed.err[-3000:]
    assert "skipping user_activity_features" in printed.out
    assert "no history of activity" in printed.err
    assert not (tmp_path / "lake").exists()
