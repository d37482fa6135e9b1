"""MLflow tracking against the real local tracking server: what a feature-table run
records, how a failed validation or an exception ends it, and finding it again."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from pyspark.sql import types as T

from expectations.runner import record_validation, validate
from expectations.suites import feature_table_suite
from plumbing import tracking
from transformations.tables import Feature, FeatureTable

UTC = timezone.utc
NEWEST = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
FEATURE_DDL = "merchant_id string, event_timestamp timestamp, merchant_txn_count_30d bigint"
ROWS = [("m1", NEWEST - timedelta(hours=2), 4), ("m2", NEWEST, 9)]


def unique_table_name(prefix: str) -> str:
    """The tracking server outlives test runs: a fresh name keeps searches to this test's runs."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def small_table(name: str) -> FeatureTable:
    return FeatureTable(
        name=name, entity_column="merchant_id", timestamp_column="event_timestamp", sources=("transactions",),
        features=(Feature("merchant_txn_count_30d", "bigint", "transactions in 30 days", 0, 100),),
        ttl=timedelta(days=30), build=lambda events: events)


@pytest.fixture
def client(local_services) -> MlflowClient:
    tracking.configure_tracking(local_services)
    return MlflowClient()


def test_record_validation_writes_metrics_tags_and_artifacts(spark, local_services, client):
    table = small_table(unique_table_name("test_merchants"))
    df = spark.createDataFrame(ROWS, FEATURE_DDL)
    outcome = validate(df, feature_table_suite(table, expected_row_count=2, newest_at_least=NEWEST))
    assert outcome.success, outcome.failed

    with tracking.feature_table_run(local_services, table.name) as run:
        record_validation(outcome, table.name)
        tracking.log_delta_version(7)
        tracking.log_row_count(2)
        tracking.log_time_range(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
        tracking.log_schema(df.schema)
        tracking.log_feature_definitions_hash("abc123")

    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    evaluated = outcome.statistics["evaluated_expectations"]
    assert stored.data.metrics == {
        "validation_success": 1.0,
        "validation_evaluated_expectations": evaluated,
        "validation_successful_expectations": evaluated,
        "validation_unsuccessful_expectations": 0.0,
        "validation_success_percent": 100.0,
        "row_count": 2.0,
    }
    tags = stored.data.tags
    assert tags["table"] == table.name
    assert tags["delta_version"] == "7"
    assert tags["validation_success"] == "true"
    assert tags["validation_suite"] == f"feature_table.{table.name}"
    assert tags["range_start"] == "2026-03-01T00:00:00+00:00"
    assert tags["range_end"] == "2026-03-02T00:00:00+00:00"
    assert tags["schema"] == df.schema.simpleString()
    assert tags["feature_definitions_hash"] == "abc123"

    validation_dir = f"validation/{table.name}"
    assert {f.path for f in client.list_artifacts(run.info.run_id, validation_dir)} == {
        f"{validation_dir}/result.json", f"{validation_dir}/failed.txt", f"{validation_dir}/data_docs"}
    docs = {f.path for f in client.list_artifacts(run.info.run_id, f"{validation_dir}/data_docs")}
    assert f"{validation_dir}/data_docs/index.html" in docs

    result_file = download_artifacts(run_id=run.info.run_id, artifact_path=f"{validation_dir}/result.json")
    with open(result_file) as handle:
        assert json.load(handle)["statistics"]["evaluated_expectations"] == evaluated
    schema_file = download_artifacts(run_id=run.info.run_id, artifact_path="schema.json")
    with open(schema_file) as handle:
        assert T.StructType.fromJson(json.load(handle)) == df.schema


def test_a_failed_validation_is_a_failed_run_with_the_reasons(spark, local_services, client):
    table = small_table(unique_table_name("test_merchants"))
    df = spark.createDataFrame(ROWS + [("m3", NEWEST, 500)], FEATURE_DDL)  # 500 is above the max
    outcome = validate(df, feature_table_suite(table, expected_row_count=3, newest_at_least=NEWEST))
    assert not outcome.success

    with tracking.feature_table_run(local_services, table.name) as run:
        record_validation(outcome, table.name)
        tracking.fail_run(outcome.failed)

    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.metrics["validation_success"] == 0.0
    assert stored.data.metrics["validation_unsuccessful_expectations"] == 1.0
    reason = stored.data.tags["failure_reason"]
    assert "expect_column_values_to_be_between" in reason and "column=merchant_txn_count_30d" in reason
    reasons_file = download_artifacts(run_id=run.info.run_id, artifact_path="failure_reasons.txt")
    with open(reasons_file) as handle:
        assert handle.read().splitlines() == outcome.failed


def test_an_exception_in_the_run_ends_it_failed_with_the_reason(local_services, client):
    table_name = unique_table_name("test_crash")
    with pytest.raises(ValueError, match="lake unreachable"):
        with tracking.feature_table_run(local_services, table_name):
            raise ValueError("lake unreachable")

    run, = tracking.find_runs(local_services, table_name)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "ValueError: lake unreachable"


def test_find_runs_by_table_name_and_delta_version(local_services):
    table_name = unique_table_name("test_versions")
    run_ids = {}
    for version in (1, 2):
        with tracking.feature_table_run(local_services, table_name) as run:
            tracking.log_delta_version(version)
        run_ids[version] = run.info.run_id
    with tracking.feature_table_run(local_services, unique_table_name("test_other")):
        tracking.log_delta_version(1)

    assert [r.info.run_id for r in tracking.find_runs(local_services, table_name)] == [run_ids[2], run_ids[1]]
    assert [r.info.run_id for r in tracking.find_runs(local_services, table_name, delta_version=1)] == [run_ids[1]]
    assert tracking.find_runs(local_services, table_name, delta_version=3) == []
    assert tracking.find_runs(local_services, unique_table_name("test_never_written")) == []


def test_logging_outside_a_run_is_refused(local_services):
    tracking.configure_tracking(local_services)
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        tracking.log_delta_version(1)
