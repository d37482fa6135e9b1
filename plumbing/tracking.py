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

The project's experiments carry tags for MLflow 3's UI (:func:`use_experiment`): the kind
of experiment (classic model development, not GenAI's traces), a description, and a saved
view of the runs table with the tags above as columns; :func:`runs_url` opens it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.tracking.fluent import ActiveRun
from pyspark.sql.types import StructType

from plumbing.config import Config
from transformations.times import as_utc

FEATURE_TABLES_EXPERIMENT = "tessera/feature-tables"
TABLE_TAG = "table"
DELTA_VERSION_TAG = "delta_version"
FAILURE_REASON_TAG = "failure_reason"
MAX_TAG_LENGTH = 8000  # MLflow rejects longer tag values

# Experiment tags read by MLflow 3's UI (mlflow 3.17's server/js; see use_experiment).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"  # the runs page; "genai_development" is the traces one
DESCRIPTION_TAG = "mlflow.note.content"        # markdown shown above the runs
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # + key: a runs-table view, opened by ?viewStateShareKey=key
RUNS_VIEW_KEY = "tessera"
FEATURE_TABLES_DESCRIPTION = (
    "One run per feature table, and per raw event type (`raw_events.<type>`), each time the batch job "
    "computes a range: tag `delta_version` is the Delta version it committed, `range_start`/`range_end` the "
    "range; metric `row_count`; the Great Expectations result as `validation_*` metrics and under the "
    "artifacts `validation/<table>/` (result.json, failed.txt, data docs). A FAILED run did not pass "
    "validation and committed nothing (tag `failure_reason`). `tessera table history <table>` lists a "
    "table's versions with their runs.")
FEATURE_TABLES_COLUMNS = ("tags.table", "tags.delta_version", "tags.validation_success", "tags.range_start",
                          "tags.range_end", "metrics.row_count", "metrics.validation_success_percent",
                          "attributes.Duration")


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
    use_experiment(FEATURE_TABLES_EXPERIMENT, FEATURE_TABLES_DESCRIPTION, FEATURE_TABLES_COLUMNS, "Feature tables")
    # mlflow's ActiveRun ends the run on exit, FAILED on an exception, unless already ended.
    with mlflow.start_run(run_name=run_name or table_name,
                          tags={**(tags or {}), TABLE_TAG: table_name}) as run:
        try:
            yield run
        except BaseException as exc:
            if _is_active(run):
                fail_run([f"{type(exc).__name__}: {exc}"])
            raise


def use_experiment(name: str, description: str, columns: Sequence[str] = (), view_name: str = "") -> str:
    """Make ``name`` the active experiment (created if missing), tagged for MLflow 3's UI;
    return its id.

    Its kind is classic model development; ``description`` is set when it has none (a note
    edited in the UI stays); ``columns`` ("tags.<key>", "metrics.<key>", "params.<key>" or
    "attributes.<column>") make a saved view of the runs table, named ``view_name`` in the
    page's "Views" menu. Two choices stay with the browser: the default columns, and (in
    MLflow 3.17's UI) the page itself, which follows the UI-wide "GenAI | Model training"
    switch (GenAI until toggled) rather than the kind. The links of :func:`runs_url` and
    :func:`run_url` set both.
    """
    experiment = mlflow.set_experiment(name)
    wanted = {EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND}
    if not experiment.tags.get(DESCRIPTION_TAG):
        wanted[DESCRIPTION_TAG] = description
    if columns:
        # Dated by the experiment, so the same view is the same tag value and is not rewritten.
        wanted[SHARED_VIEW_TAG_PREFIX + RUNS_VIEW_KEY] = _runs_view(view_name or name, columns,
                                                                   experiment.creation_time or 0)
    client = MlflowClient()
    for key, value in wanted.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def runs_url(cfg: Config, experiment_id: str) -> str:
    """The UI's page of an experiment's runs (the "Model training" side), in the view
    :func:`use_experiment` saved."""
    return (f"{cfg.mlflow.tracking_uri}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}")


def run_url(cfg: Config, experiment_id: str, run_id: str) -> str:
    """The UI's page of one run (its metrics, tags, artifacts)."""
    return f"{cfg.mlflow.tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _runs_view(name: str, columns: Sequence[str], created_ms: int) -> str:
    """A saved view as the UI stores one: a named envelope around its state (search facets
    and table state, as JSON text). The UI writes columns as "<kind>.`<key>`"; the run name
    and start time are always shown."""
    selected = []
    for column in columns:
        kind, _, key = column.partition(".")
        if kind not in ("tags", "metrics", "params", "attributes") or not key:
            raise ValueError(f"not a runs-table column: {column!r}")
        selected.append(f"{kind}.`{key}`")
    state = {"orderByKey": "attributes.start_time", "orderByAsc": False, "selectedColumns": selected,
             "columnOrder": selected}
    return json.dumps({"name": name, "createdAt": created_ms, "updatedAt": created_ms, "state": json.dumps(state)})


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
    mlflow.set_tags({"range_start": as_utc(start).isoformat(), "range_end": as_utc(end).isoformat()})


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


def _quoted(value: str) -> str:
    # MLflow's filter syntax has no escape for a quote inside a value.
    if "'" in value:
        raise ValueError(f"cannot search for a value containing a quote: {value!r}")
    return f"'{value}'"
