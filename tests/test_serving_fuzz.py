"""Schemathesis against the API's own OpenAPI document: valid and invalid requests,
generated from the schema, must never get a 5xx nor an answer the document does not
describe (status, content type, body schema). Bounded: a few dozen examples per operation.

The app runs in-process (ASGI) on the shared Redis, under a Feast project of this run,
with a small registered model and a required API key; the entities the document gives
as examples have stored rows, so example-based requests get present values too.
"""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone

import mlflow
import numpy as np
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from plumbing.config import load_config
from plumbing.online_store import OnlineStoreWriter
from serving import model_registry
from serving.app import create_app
from tests.test_serving import feature_rows, register_model
from transformations.catalog import FEATURE_TABLES

API_KEY = "fuzz-key"
EXAMPLE_ENTITIES = {"user_id": "user-000042", "merchant_id": "merchant-0007"}  # serving.models' examples
EXAMPLES_PER_OPERATION = 100


@pytest.fixture(scope="module")
def api_schema(local_services):
    os.environ["TESSERA_FUZZ_API_KEY"] = API_KEY
    cfg = load_config("local", environ={**os.environ, "TESSERA__SERVING__REQUIRE_API_KEY": "true",
                                        "TESSERA__SERVING__API_KEY_ENV": "TESSERA_FUZZ_API_KEY"})
    project = f"t_fuzz_{uuid.uuid4().hex[:8]}"
    writer, rng = OnlineStoreWriter(cfg, project), np.random.default_rng(3)
    for table in FEATURE_TABLES.values():
        rows = feature_rows(table, [EXAMPLE_ENTITIES[table.entity_column]], rng,
                            datetime.now(timezone.utc) - timedelta(minutes=5))
        writer.write(table, rows)
    name = f"tessera-fraud-fuzz-{uuid.uuid4().hex[:8]}"
    _, version = register_model(cfg, name, seed=3)
    mlflow.MlflowClient().set_registered_model_alias(name, model_registry.CHAMPION_ALIAS, version)

    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(cfg, project=project, model_name=name))

    mlflow.MlflowClient().delete_registered_model(name)
    client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, password=cfg.redis_password())
    for key in client.scan_iter(match=b"*" + project.encode(), count=10_000):
        client.delete(key)


def test_no_server_error_and_every_answer_matches_the_schema(api_schema):
    statuses: dict[str, set[int]] = {}  # per operation: to see that valid requests got through too
    for result in api_schema.get_all_operations():
        operation = result.ok()
        # Schema-valid and schema-invalid requests, and the document's own examples.
        cases = st.one_of(*[operation.as_strategy(generation_mode=mode) for mode in GenerationMode],
                          *api_schema.get_strategies_from_examples(operation))

        @given(case=cases)
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call_and_validate(case):
            # Every check but "schema-valid data is accepted": JSON Schema cannot say that an
            # entity must carry the join keys of the views asked for, nor name the known
            # feature references or the configured maximum of entities, so some
            # schema-valid requests are a 422 by design.
            response = case.call_and_validate(headers={"X-API-Key": API_KEY},
                                              excluded_checks=[positive_data_acceptance])
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        call_and_validate()
    assert all(200 in seen for seen in statuses.values()), statuses
