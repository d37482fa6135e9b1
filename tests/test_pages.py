"""The pages people look at, in headless Chromium whose network stops at loopback
(jobs/screenshots.py, the same checks `tessera screenshots` runs for docs/images/):

* the API's docs served by the app itself: /docs lists every endpoint and "Try it out"
  answers 200, /redoc renders; and every request example of the OpenAPI document, posted
  to the real app, is answered 200;
* `tessera feast ui` on a registry of this test: bound to loopback, listed by `tessera
  status`, its page lists the three feature views, `tessera down` stops it;
* MLflow: feature-table runs recorded by plumbing.tracking open in the runs view with
  their tags as columns, and a run's page shows its validation result.

Each browser test saves its screenshots in its tmp_path.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import mlflow
import pandas as pd
import psutil
import pytest
from fastapi.testclient import TestClient

from expectations.runner import record_validation, validate
from expectations.suites import feature_table_suite
from jobs import screenshots
from plumbing import tracking
from plumbing.config import REPO_ROOT
from plumbing.online_store import FEAST_PROJECT
from serving.app import create_app
from serving.model_registry import CHAMPION_ALIAS
from tests.test_serving import local_cfg_with, register_model
from transformations.catalog import FEATURE_TABLES, spark_schema

TESSERA = [sys.executable, "-m", "jobs.cli"]


@pytest.fixture(scope="module")
def browser():
    with screenshots.chromium() as chromium:
        yield chromium


def saved(png) -> bool:
    """A screenshot was written and is not an empty page (a blank 1400x820 PNG is ~5 kB)."""
    return png.exists() and png.stat().st_size > 20_000


# ---- the API's docs ---------------------------------------------------------------------------
def test_api_docs_load_offline_list_every_endpoint_and_try_it_out_answers(local_services, browser, tmp_path):
    with screenshots.api_server("local", screenshots.free_port()) as api_url:
        listed = screenshots.swagger_ui(browser, api_url, tmp_path / "api-docs.png")
        summaries = screenshots.redoc(browser, api_url, tmp_path / "api-redoc.png")
    assert sorted(listed) == sorted(["POST /v1/features", "POST /v1/predict", "GET /healthz", "GET /readyz",
                                     "GET /metrics"])
    assert "Feature values of entities, with their status and age" in summaries
    assert saved(tmp_path / "api-docs.png") and saved(tmp_path / "api-redoc.png")


def test_the_docs_pages_need_nothing_from_outside(local_cfg):
    """What the browser test proves by loading, said in the HTML: every script, stylesheet and
    icon of /docs and /redoc is served by the app."""
    client = TestClient(create_app(local_cfg))  # no lifespan: nothing is read from Redis or MLflow
    for path in ("/docs", "/redoc"):
        page = client.get(path)
        assert page.status_code == 200
        assert "http" not in page.text.replace("http-equiv", ""), page.text  # no absolute URL at all
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200, asset
    assert client.get("/redoc").headers["content-security-policy"] == "img-src 'self' data:"


def test_every_request_example_is_answered_200_by_the_real_app(local_services):
    """What "Try it out" sends for each operation: its example, posted to the app with real
    Redis and a real champion model."""
    name = f"tessera-fraud-test-{uuid.uuid4().hex[:8]}"
    _, version = register_model(local_services, name, seed=3)
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION_ALIAS, version)
    try:
        roomy = local_cfg_with(SERVING__REQUEST_TIMEOUT_S="30")  # a busy machine; timeouts have their own test
        with TestClient(create_app(roomy, project=f"t_pages_{uuid.uuid4().hex[:8]}", model_name=name)) as client:
            spec = client.get("/openapi.json").json()
            sent = []
            for path, operations in spec["paths"].items():
                for method, operation in operations.items():
                    body = operation.get("requestBody")
                    if body is None:
                        assert client.request(method, path).status_code == 200, (method, path)
                        continue
                    examples = body["content"]["application/json"]["examples"]
                    assert examples, f"{method} {path} has no request example"
                    for example_name, example in examples.items():
                        answer = client.request(method, path, json=example["value"])
                        assert answer.status_code == 200, (path, example_name, answer.text)
                        sent.append(f"{path} {example_name}")
    finally:
        mlflow.MlflowClient().delete_registered_model(name)
    assert sent == ["/v1/features feature_service", "/v1/features features", "/v1/predict one_transaction"]


# ---- Feast's UI -------------------------------------------------------------------------------
def test_tessera_feast_ui_serves_the_catalog_on_loopback_and_status_lists_it(local_services, browser, tmp_path):
    port = screenshots.free_port()
    env = {**os.environ, "TESSERA_PROFILE": "local",
           "TESSERA__DATA_DIR": str(tmp_path / "data"),  # a registry, PID file and log of this test
           local_services.redis.password_env: local_services.redis_password()}

    def tessera(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*TESSERA, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)

    started = tessera("feast", "ui", "--port", str(port))
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert "applying feature_repo/" in started.stdout  # no registry yet: applied first
        assert "feast-ui: started (pid " in started.stdout and f"http://127.0.0.1:{port}" in started.stdout
        listed = [line for line in tessera("status").stdout.splitlines() if line.startswith("feast-ui")]
        assert len(listed) == 1 and "healthy" in listed[0] and f"127.0.0.1:{port}" in listed[0], listed
        listening = {conn.laddr.ip for conn in psutil.net_connections("tcp")
                     if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port}
        assert listening == {"127.0.0.1"}
        views = screenshots.feature_catalog(browser, f"http://127.0.0.1:{port}", FEAST_PROJECT, list(FEATURE_TABLES),
                                            tmp_path / "feature-catalog.png")
        assert sorted(views) == sorted(FEATURE_TABLES)
        assert saved(tmp_path / "feature-catalog.png")
    finally:
        stopped = tessera("down", "--only", "feast-ui")
    assert stopped.returncode == 0 and "feast-ui: stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not [line for line in tessera("status").stdout.splitlines() if line.startswith("feast-ui")]


# ---- MLflow -----------------------------------------------------------------------------------
def valid_rows(table, count: int, newest: datetime) -> pd.DataFrame:
    """Rows that pass the table's suite: every feature at its lower bound (or 0)."""
    rows = pd.DataFrame({table.entity_column: [f"pages-{i}" for i in range(count)],
                         table.timestamp_column: [newest - timedelta(minutes=i) for i in range(count)]})
    for feature in table.features:
        value = feature.min_value if feature.min_value is not None else 0
        rows[feature.name] = int(value) if feature.dtype == "bigint" else float(value)
    return rows


def test_mlflow_opens_the_feature_table_runs_with_their_tags_and_validation(spark, local_services, browser,
                                                                              tmp_path):
    """The runs go to the profile's real experiment, under the catalog's table names, and are
    deleted at the end: `tessera table history` and `tessera screenshots` never see them."""
    cfg = local_services
    newest = datetime.now(timezone.utc).replace(microsecond=0)
    runs = {}
    try:
        for number, table in enumerate(FEATURE_TABLES.values()):
            frame = spark.createDataFrame(valid_rows(table, 3, newest), schema=spark_schema(table))
            outcome = validate(frame, feature_table_suite(table, expected_row_count=3, newest_at_least=newest))
            assert outcome.success, outcome.failed
            with tracking.feature_table_run(cfg, table.name) as run:  # what the batch job records
                runs[table.name] = run.info.run_id
                record_validation(outcome, table.name)
                tracking.log_row_count(3)
                tracking.log_delta_version(900 + number)
                tracking.log_time_range(newest - timedelta(days=1), newest)

        experiment = mlflow.get_experiment_by_name(tracking.FEATURE_TABLES_EXPERIMENT)
        assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.CLASSIC_ML_KIND
        assert experiment.tags[tracking.DESCRIPTION_TAG]
        assert tracking.SHARED_VIEW_TAG_PREFIX + tracking.RUNS_VIEW_KEY in experiment.tags
        screenshots.mlflow_runs(browser, tracking.runs_url(cfg, experiment.experiment_id), runs,
                                ["table", "delta_version", "row_count"], tmp_path / "mlflow-runs.png")
        first = next(iter(runs))
        screenshots.mlflow_run(browser, tracking.run_url(cfg, experiment.experiment_id, runs[first]),
                               [first, "validation_success_percent", "validation_evaluated_expectations",
                                "delta_version"], tmp_path / "mlflow-run.png")
    finally:
        for run_id in runs.values():
            mlflow.MlflowClient().delete_run(run_id)
    assert saved(tmp_path / "mlflow-runs.png") and saved(tmp_path / "mlflow-run.png")
