"""What docs/operations.md and docs/production.md rely on: API-key rotation (several keys
accepted at once), `tessera table` (history with MLflow runs, rollback as a new commit,
validation reports), and the Redis TLS/ACL settings reaching the clients. Real Redis, real
MLflow, real Delta tables; the API through its own app and lifespan."""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone

import mlflow
import numpy as np
import pyarrow as pa
import pytest
import redis
import redis.asyncio
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from jobs import lake_tables
from plumbing import feast_repo, feature_stats, tracking
from plumbing.config import ConfigError, load_config
from plumbing.lake import LakeError, LakeTable
from plumbing.online_store import RedisSettings, redis_client
from serving.app import create_app
from serving.dependencies import api_key_accepted
from serving.online import async_redis_client

KEYS_ENV = "TESSERA_TEST_ROTATION_KEYS"


def _cfg(**overrides: str):
    return load_config("local", environ={**os.environ, **{f"TESSERA__{k}": v for k, v in overrides.items()}})


# ---- API keys ------------------------------------------------------------------------------
def test_every_listed_key_is_accepted_and_nothing_else():
    keys = (b"new-key", b"old-key")
    assert api_key_accepted(keys, b"new-key") and api_key_accepted(keys, b"old-key")
    assert not api_key_accepted(keys, b"new-key,old-key")  # the list itself is no key
    assert not api_key_accepted(keys, b"new-ke") and not api_key_accepted(keys, b"")
    assert not api_key_accepted(keys, None)
    assert api_key_accepted(None, None)  # no key configured: no check


def test_rotation_old_and_new_key_work_together_then_only_the_new_one(local_services, monkeypatch):
    cfg = _cfg(SERVING__REQUIRE_API_KEY="true", SERVING__API_KEY_ENV=KEYS_ENV)
    body = {"features": ["user_activity_features:logins_1h"], "entities": [{"user_id": "u-ops"}]}
    project, model = f"t_ops_{uuid.uuid4().hex[:8]}", "tessera-ops-tests-no-model"

    def statuses(**headers_by_name) -> dict[str, int]:
        with TestClient(create_app(cfg, project=project, model_name=model)) as client:
            return {name: client.post("/v1/features", json=body, headers=headers).status_code
                    for name, headers in headers_by_name.items()}

    # Step 1 of the page: both keys (spaces around the comma are ignored).
    monkeypatch.setenv(KEYS_ENV, "new-key , old-key")
    assert statuses(new={"X-API-Key": "new-key"}, old={"X-API-Key": "old-key"}, none={},
                    wrong={"X-API-Key": "other"}) == {"new": 200, "old": 200, "none": 401, "wrong": 401}
    # Step 3: the new key alone.
    monkeypatch.setenv(KEYS_ENV, "new-key")
    assert statuses(new={"X-API-Key": "new-key"}, old={"X-API-Key": "old-key"}) == {"new": 200, "old": 401}
    # No key at all (only separators) is refused at start, naming the variable.
    monkeypatch.setenv(KEYS_ENV, " , ")
    with pytest.raises(ConfigError, match=KEYS_ENV):
        create_app(cfg)


# ---- tessera table -------------------------------------------------------------------------
@pytest.fixture()
def tracked_table(local_services, spark, tmp_path):
    """A table of three versions (the third adds a column), each tracked like the batch
    job tracks them: version 0 and 2 with a validation report."""
    cfg = _cfg(LAKE__ROOT=str(tmp_path / "lake"))
    name = f"ops_table_{uuid.uuid4().hex[:8]}"
    table = LakeTable.for_config(cfg, name)
    schema_v0 = pa.schema([("user_id", pa.string()), ("event_ts", pa.timestamp("us", tz="UTC")),
                           ("value", pa.float64())])
    rows = pa.table({"user_id": ["a", "b"], "event_ts": pa.array([0, 1], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                     "value": [1.0, 2.0]}, schema=schema_v0)
    from pyspark.sql.pandas.types import from_arrow_schema

    for step, extra in enumerate([None, None, "new_feature"]):
        batch = rows if extra is None else rows.append_column(extra, pa.array([5.0, 6.0]))
        with tracking.feature_table_run(cfg, name):
            version = table.append_arrow(batch, from_arrow_schema(batch.schema))
            tracking.log_delta_version(version)
            if step != 1:
                mlflow.log_text("", f"validation/{name}/failed.txt")
                mlflow.log_dict({"success": True, "step": step}, f"validation/{name}/result.json")
    return cfg, name, table


def test_history_lists_versions_newest_first_with_their_runs(tracked_table):
    cfg, name, table = tracked_table
    rows = lake_tables.history(cfg, name)
    assert [row["version"] for row in rows] == list(range(table.version(), -1, -1))
    runs = {row["version"]: row["run"] for row in rows}
    for version in (0, table.version()):
        assert runs[version] == tracking.find_runs(cfg, name, delta_version=version)[0].info.run_id


def test_rollback_is_a_new_commit_and_every_version_stays_readable(tracked_table):
    cfg, name, table = tracked_table
    before = table.version()
    rows_before = {v: DeltaTable(table.uri, version=v).to_pyarrow_table() for v in range(before + 1)}
    new_version = lake_tables.rollback(cfg, name, 0)
    assert new_version == before + 1 == table.version()
    current = DeltaTable(table.uri)
    # Version 0's content and schema (the later column is gone) ...
    assert current.schema().to_arrow().names == rows_before[0].schema.names
    assert sorted(current.to_pyarrow_table().column("value").to_pylist()) == [1.0, 2.0]
    # ... and nothing rewritten: every older version reads as before.
    for version, content in rows_before.items():
        assert DeltaTable(table.uri, version=version).to_pyarrow_table().equals(content)
    assert table.history(1)[0]["operation"] == "RESTORE"
    run = tracking.find_runs(cfg, name, delta_version=new_version)[0]
    assert run.data.tags[lake_tables.RESTORED_FROM_TAG] == "0" and run.info.status == "FINISHED"
    with pytest.raises(LakeError, match="roll back only to a version in"):
        lake_tables.rollback(cfg, name, new_version)


def test_report_downloads_the_validation_of_the_version(tracked_table, tmp_path):
    cfg, name, table = tracked_table
    run_id, folder = lake_tables.fetch_report(cfg, name, 0, tmp_path / "report")
    assert run_id == tracking.find_runs(cfg, name, delta_version=0)[0].info.run_id
    assert '"step": 0' in (folder / "result.json").read_text()
    assert (folder / "failed.txt").exists()
    with pytest.raises(LakeError, match="of Delta version 1 has no validation report"):
        lake_tables.fetch_report(cfg, name, 1, tmp_path / "none")
    with pytest.raises(LakeError, match="no MLflow run recorded Delta version 99"):
        lake_tables.fetch_report(cfg, name, 99, tmp_path / "none")


def test_report_shows_the_drift_of_the_version_and_its_warnings(tracked_table, spark):
    cfg, name, _ = tracked_table
    assert "no statistics kept for version 0" in lake_tables.drift_report(cfg, name, 0)
    rng = np.random.default_rng(1)

    def values(mean: float):
        return spark.createDataFrame([(float(value),) for value in rng.normal(mean, 1.0, 400)], "value double")

    now = datetime.now(timezone.utc)
    feature_stats.save(cfg, feature_stats.compute(values(0.0), name, ["value"]), 0, now)
    shifted = feature_stats.compute(values(2.0), name, ["value"], reference=feature_stats.load(cfg, name, 0))
    feature_stats.judge(shifted, cfg.monitoring)
    feature_stats.save(cfg, shifted, 2, now)

    report = lake_tables.drift_report(cfg, name, 2)
    assert "drift against v0: 1 of 1 features over the warning threshold (value)" in report
    assert "warning value: psi" in report and "ks" in report
    assert feature_stats.load(cfg, name)["value"].table_version == 2  # the newest version with statistics


def test_drift_between_two_versions_compares_the_shared_features_and_names_the_others(tracked_table):
    cfg, name, _ = tracked_table
    lines = lake_tables.drift_between(cfg, name, 2, 0)
    assert lines[0].startswith(f"{name} v2: drift against v0: 0 of 1 features over the warning threshold")
    assert lines[1].split()[:3] == ["value", "psi", "0.000"]  # the same rows in both versions
    assert lines[-1] == "  only in v2 (not compared): new_feature"
    with pytest.raises(LakeError, match=r"has no version 99 \(--version\); its versions are 0\.\.2"):
        lake_tables.drift_between(cfg, name, 99, None)
    with pytest.raises(LakeError, match=r"has no version -1 \(--against\)"):
        lake_tables.drift_between(cfg, name, 0, None)  # version 0 has none before it


def test_table_command_through_the_console_entry(tracked_table, capsys):
    from jobs import cli

    cfg, name, table = tracked_table
    restoring = table.version() + 1
    os.environ["TESSERA__LAKE__ROOT"] = cfg.lake.root
    try:
        assert cli.main(["table", "history", name]) == 0
        assert cli.main(["table", "rollback", name, "--version", "1"]) == 0
        assert cli.main(["table", "history", "no_such_table"]) == 1
    finally:
        del os.environ["TESSERA__LAKE__ROOT"]
    out = capsys.readouterr()
    assert f"{name}: version {restoring} restores version 1" in out.out
    assert "RESTORE" not in out.out.split("restores")[0]  # the history was printed before the rollback
    assert "no Delta table 'no_such_table'" in out.err


# ---- Redis: ACL user and TLS ---------------------------------------------------------------
def test_redis_username_reaches_the_server(local_services):
    # The real server of the profile: its password belongs to the "default" ACL user.
    good = RedisSettings.from_config(_cfg(REDIS__USERNAME="default"))
    assert good.username == "default" and redis_client(good).ping()
    wrong = RedisSettings.from_config(_cfg(REDIS__USERNAME="no-such-user"))
    with pytest.raises(redis.AuthenticationError):
        redis_client(wrong).ping()


def test_redis_tls_settings_reach_every_client(tmp_path):
    cfg = _cfg(REDIS__SSL="true", REDIS__SSL_CA_CERTS=str(tmp_path / "ca.pem"), REDIS__USERNAME="tessera")
    settings = RedisSettings.from_config(cfg)
    pool = redis_client(settings).connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    assert pool.connection_kwargs["username"] == "tessera"
    api_pool = async_redis_client(settings).connection_pool  # the API's client
    assert api_pool.connection_class is redis.asyncio.SSLConnection
    assert api_pool.connection_kwargs["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    connection = feast_repo.feature_store_config(cfg, directory=tmp_path)["online_store"]["connection_string"]
    assert connection.endswith(f",username=tessera,ssl=true,ssl_ca_certs={tmp_path / 'ca.pem'}")
    # Off by default: plain TCP, as the local redis-server speaks it.
    plain = RedisSettings.from_config(_cfg())
    assert redis_client(plain).connection_pool.connection_class is redis.Connection
    assert "ssl" not in feast_repo.feature_store_config(_cfg(), directory=tmp_path)["online_store"]["connection_string"]
