"""MLflow helpers for the jobs: one run per feature table per job, what each run records,
and how to find the run that wrote a given table version.

Tags of a feature-table run (strings; ``find_runs`` searches the first two):
  table                     the feature table name (set by ``feature_table_run``)
  delta_version             the Delta table version the run committed
  range_start, range_end    the computed time range, ISO-8601 UTC
  schema                    the written schema as a Spark simpleString (JSON: artifact schema.json)
  feature_definitions_hash  hash of the feature definitions' code, computed by the caller
  failure_reason            why a FAILED run failed (every reason: artifact failure_reasons.txt)
Metrics: row_count, plus the validation metrics of ``expectations.runner.record_validation``.

The log helpers write to the active run and refuse when there is none: MLflow would
otherwise start a fresh, untagged run silently.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator, Sequence

import mlflow
from mlflow.entities import Run
from mlflow.tracking.fluent import ActiveRun
from pyspark.sql.types import StructType

from plumbing.config import Config

FEATURE_TABLES_EXPERIMENT = "tessera/feature-tables"
TABLE_TAG = "table"
DELTA_VERSION_TAG = "delta_version"
FAILURE_REASON_TAG = "failure_reason"
MAX_TAG_LENGTH = 8000  # MLflow rejects longer tag values


def configure_tracking(cfg: Config) -> None:
    """Point MLflow at the profile's tracking server."""
    # The environment variable too, so subprocesses (spark-submit, workers) log to the same server.
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow.tracking_uri
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)


@contextmanager
def feature_table_run(cfg: Config, table_name: str, *, run_name: str | None = None,
                      tags: dict[str, str] | None = None) -> Iterator[ActiveRun]:
    """Open the MLflow run of one feature table, tagged ``table=<table_name>``.

    The run ends FINISHED when the block completes and FAILED, with the exception as the
    reason, when it raises. Inside the block the caller may end it FAILED itself with
    :func:`fail_run` (e.g. after a failed validation).
    """
    configure_tracking(cfg)
    mlflow.set_experiment(FEATURE_TABLES_EXPERIMENT)
    # mlflow's ActiveRun ends the run on exit, FAILED on an exception, unless already ended.
    with mlflow.start_run(run_name=run_name or table_name,
                          tags={**(tags or {}), TABLE_TAG: table_name}) as run:
        try:
            yield run
        except BaseException as exc:
            if _is_active(run):
                fail_run([f"{type(exc).__name__}: {exc}"])
            raise


def fail_run(reasons: Sequence[str]) -> None:
    """End the active run as FAILED, recording the reasons as a tag and an artifact."""
    _require_active_run()
    text = "\n".join(reasons) or "no reason given"
    mlflow.set_tag(FAILURE_REASON_TAG, _fit_tag(text))
    mlflow.log_text(text + "\n", "failure_reasons.txt")
    mlflow.end_run(status="FAILED")


def log_delta_version(version: int) -> None:
    _require_active_run()
    mlflow.set_tag(DELTA_VERSION_TAG, str(version))


def log_row_count(row_count: int) -> None:
    _require_active_run()
    mlflow.log_metric("row_count", row_count)


def log_time_range(start: datetime, end: datetime) -> None:
    """The computed range of event time; naive datetimes are taken as UTC."""
    _require_active_run()
    mlflow.set_tags({"range_start": _utc_iso(start), "range_end": _utc_iso(end)})


def log_schema(schema: StructType) -> None:
    _require_active_run()
    mlflow.log_dict(schema.jsonValue(), "schema.json")
    mlflow.set_tag("schema", _fit_tag(schema.simpleString()))


def log_feature_definitions_hash(definitions_hash: str) -> None:
    _require_active_run()
    mlflow.set_tag("feature_definitions_hash", definitions_hash)


def find_runs(cfg: Config, table_name: str, delta_version: int | None = None) -> list[Run]:
    """The runs of ``table_name`` (optionally: the one that wrote ``delta_version``), newest first."""
    configure_tracking(cfg)
    experiment = mlflow.get_experiment_by_name(FEATURE_TABLES_EXPERIMENT)
    if experiment is None:
        return []
    conditions = [f"tags.{TABLE_TAG} = {_quoted(table_name)}"]
    if delta_version is not None:
        conditions.append(f"tags.{DELTA_VERSION_TAG} = {_quoted(str(delta_version))}")
    return mlflow.search_runs(experiment_ids=[experiment.experiment_id],
                              filter_string=" and ".join(conditions),
                              order_by=["attributes.start_time DESC"], output_format="list")


def _is_active(run: ActiveRun) -> bool:
    active = mlflow.active_run()
    return active is not None and active.info.run_id == run.info.run_id


def _require_active_run() -> None:
    if mlflow.active_run() is None:
        raise RuntimeError("no active MLflow run: call this inside plumbing.tracking.feature_table_run")


def _fit_tag(text: str) -> str:
    return text if len(text) <= MAX_TAG_LENGTH else text[:MAX_TAG_LENGTH - 1] + "…"


def _utc_iso(instant: datetime) -> str:
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return instant.astimezone(timezone.utc).isoformat()


def _quoted(value: str) -> str:
    # MLflow's filter syntax has no escape for a quote inside a value.
    if "'" in value:
        raise ValueError(f"cannot search for a value containing a quote: {value!r}")
    return f"'{value}'"
