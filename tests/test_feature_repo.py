"""The Feast repository: generated from the profile, registered by `feast apply` from
the command line, point-in-time training sets over real Delta tables (local and on the
S3 endpoint), and online reads of what the project's writer wrote."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import yaml
from deltalake import write_deltalake

import feature_repo
from feature_repo.feature_services import FEATURE_SERVICE_TABLES, feature_refs
from plumbing import feast_repo
from plumbing.config import REPO_ROOT, load_config
from plumbing.online_store import OnlineStoreWriter, RedisSettings, redis_client
from transformations.catalog import FEATURE_TABLES

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def project_name() -> str:
    return f"t_repo_{uuid.uuid4().hex[:8]}"


def test_feature_store_yaml_comes_from_the_profile(local_cfg, tmp_path):
    path = feast_repo.write_feature_store_yaml(local_cfg, directory=tmp_path)
    settings = yaml.safe_load(path.read_text())
    assert settings["project"] == "tessera" and settings["provider"] == "local"
    assert settings["registry"]["path"] == str(tmp_path / "registry.db")
    assert settings["online_store"]["connection_string"] == (
        f"127.0.0.1:{local_cfg.redis.port},db=0,password={local_cfg.redis_password()}")
    assert settings["online_store"]["key_ttl_seconds"] == 30 * 24 * 3600  # merchants' 30 d, the longest
    assert settings["offline_store"]["type"] == "feature_repo.delta_offline_store.DeltaOfflineStore"
    assert settings["entity_key_serialization_version"] == 3
    assert path.stat().st_mode & 0o777 == 0o600  # it holds the password
    default = feast_repo.write_feature_store_yaml(local_cfg)  # the default place: gitignored
    assert default.parent == local_cfg.data_dir / "feast"
    assert subprocess.run(["git", "check-ignore", "-q", str(default)], cwd=REPO_ROOT).returncode == 0


@pytest.fixture(scope="module")
def local_store(local_services, tmp_path_factory):
    store = feature_repo.apply(local_services, project=project_name(), directory=tmp_path_factory.mktemp("feast"))
    yield store
    client = redis_client(RedisSettings.from_config(local_services))
    for key in client.scan_iter(match=b"*" + store.project.encode(), count=10_000):
        client.delete(key)


def test_apply_registers_the_catalog(local_store):
    views = {view.name: view for view in local_store.list_feature_views()}
    assert set(views) == set(FEATURE_TABLES)
    for name, table in FEATURE_TABLES.items():
        view = views[name]
        assert view.ttl == table.ttl
        assert [feature.name for feature in view.features] == table.feature_names
        assert [str(feature.dtype) for feature in view.features] == [
            {"bigint": "Int64", "double": "Float64"}[feature.dtype] for feature in table.features]
        assert view.entity_columns[0].name == table.entity_column
        assert view.stream_source.name == f"{name}_push"  # the streaming job's push source
    service = local_store.get_feature_service("fraud_model_v1")
    served = [f"{projection.name}:{feature.name}" for projection in service.feature_view_projections
              for feature in projection.features]
    assert served == feature_refs("fraud_model_v1")
    assert {ref.split(":")[0] for ref in served} == set(FEATURE_SERVICE_TABLES["fraud_model_v1"])
    assert {entity.name for entity in local_store.list_entities()} == {"user", "merchant"}


def test_feast_apply_works_from_the_command_line(local_services, tmp_path):
    env = {**os.environ, "TESSERA__DATA_DIR": str(tmp_path),  # registry and yaml under tmp_path
           local_services.redis.password_env: local_services.redis_password()}
    done = subprocess.run([sys.executable, "-m", "plumbing.feast_repo", "apply", "--profile", "local"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    from feast import FeatureStore

    registered = FeatureStore(repo_path=str(REPO_ROOT / "feature_repo"),
                              fs_yaml_file=tmp_path / "feast" / "feature_store.yaml")
    assert {view.name for view in registered.list_feature_views()} == set(FEATURE_TABLES)
    assert [service.name for service in registered.list_feature_services()] == ["fraud_model_v1"]


def feature_rows(table, rows: list[tuple[str, datetime, float]]) -> pd.DataFrame:
    """A feature table's rows with every feature set to ``value`` (bigints as ints)."""
    frame = pd.DataFrame(rows, columns=[table.entity_column, table.timestamp_column, "value"])
    frame[table.timestamp_column] = pd.to_datetime(frame[table.timestamp_column], utc=True)
    for feature in table.features:
        frame[feature.name] = frame["value"].astype("int64" if feature.dtype == "bigint" else "float64")
    frame["event_date"] = frame[table.timestamp_column].dt.strftime("%Y-%m-%d")
    return frame.drop(columns="value")


def write_lake(cfg) -> None:
    """Tiny Delta tables. user_transaction_features is written twice: the first version's
    values (99) are overwritten, so only a reader of the Delta log gets it right."""
    txn, activity, merchant = (FEATURE_TABLES[name] for name in
                               ("user_transaction_features", "user_activity_features", "merchant_features"))
    tables = {
        txn: feature_rows(txn, [("u1", T0, 1), ("u1", T0 + HOUR, 2), ("u1", T0 + 2 * HOUR, 3), ("u2", T0, 5)]),
        activity: feature_rows(activity, [("u1", T0, 7), ("u2", T0, 8)]),
        merchant: feature_rows(merchant, [("m1", T0, 4)]),
    }
    options = cfg.storage_options() or None
    write_deltalake(f"{cfg.lake.root}/{txn.name}", tables[txn].assign(txn_count_1h=99),
                    partition_by=["event_date"], storage_options=options)
    for table, rows in tables.items():
        write_deltalake(f"{cfg.lake.root}/{table.name}", rows, partition_by=["event_date"], mode="overwrite",
                        storage_options=options)


@pytest.mark.integration  # the profile's services, by getfixturevalue
@pytest.mark.parametrize("profile", ["local", "s3"])
def test_historical_features_are_point_in_time(profile, request, tmp_path):
    base_cfg = request.getfixturevalue(f"{profile}_services")
    lake_root = str(tmp_path / "lake") if profile == "local" else f"s3://{base_cfg.s3.buckets[0]}/tests/{uuid.uuid4().hex[:8]}"
    cfg = load_config(profile, environ={**os.environ, "TESSERA__LAKE__ROOT": lake_root})
    write_lake(cfg)
    store = feature_repo.apply(cfg, project=project_name(), directory=tmp_path / "feast")

    # (user, merchant, time) -> expected (txn_count_1h, logins_1h, merchant_txn_count_30d)
    cases = [
        ("u1", "m1", T0 + HOUR / 2, (1, 7, 4)),                        # newest row at or before the time
        ("u1", "m1", T0 + HOUR - timedelta(seconds=1), (1, 7, 4)),     # a row 1 s later is not used
        ("u1", "m1", T0 + HOUR, (2, 7, 4)),                            # Feast: a row at exactly the time is used
        ("u1", "m1", T0 + 2 * HOUR + timedelta(days=8), (None, None, 4)),  # past the 7 d and 1 d ttls
        ("u2", "m1", T0 + timedelta(hours=23), (5, 8, 4)),
        ("u2", "m1", T0 + timedelta(hours=25), (5, None, 4)),          # activity's 1 d ttl only
        ("u3", "m1", T0 + HOUR, (None, None, 4)),                      # no row at all
    ]
    entity_df = pd.DataFrame({
        "case": range(len(cases)),
        "user_id": [case[0] for case in cases],
        "merchant_id": [case[1] for case in cases],
        "event_timestamp": pd.to_datetime([case[2] for case in cases], utc=True),
    })
    result = (store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("fraud_model_v1"))
              .to_df().sort_values("case"))
    got = [tuple(None if pd.isna(value) else int(value) for value in row)
           for row in result[["txn_count_1h", "logins_1h", "merchant_txn_count_30d"]].itertuples(index=False)]
    assert got == [case[3] for case in cases]


def test_feast_reads_the_writers_rows_through_the_feature_service(local_store, local_services):
    now = datetime.now(timezone.utc)
    writer = OnlineStoreWriter(local_services, project=local_store.project)
    for name, entity in (("user_transaction_features", "online-u"), ("user_activity_features", "online-u"),
                         ("merchant_features", "online-m")):
        table = FEATURE_TABLES[name]
        assert writer.write(table, feature_rows(table, [(entity, now - HOUR, 6)])).written == 1
    online = local_store.get_online_features(features=local_store.get_feature_service("fraud_model_v1"),
                                             entity_rows=[{"user_id": "online-u", "merchant_id": "online-m"}]).to_dict()
    for ref in feature_refs("fraud_model_v1"):
        assert online[ref.split(":")[1]] == [6], ref
