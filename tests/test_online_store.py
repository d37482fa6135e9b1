"""The online store against real Redis and Feast itself: Feast reads what the writer
wrote, both write byte-identical hashes, newer always wins (also under concurrent
writers and replays), statuses and key expiry follow the feature views' ttls."""
from __future__ import annotations

import math
import random
import threading
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import feature_repo
from feature_repo.feature_services import feature_refs
from plumbing.online_store import (
    EXPIRED,
    MISSING,
    PRESENT,
    OnlineStoreReader,
    OnlineStoreWriter,
    RedisSettings,
    decode_timestamp,
    decode_value,
    encode_bigint,
    encode_doubles,
    encode_timestamp,
    feature_field,
    redis_client,
    redis_key,
    write_dataframe_online,
)
from transformations.catalog import FEATURE_TABLES

TXN = FEATURE_TABLES["user_transaction_features"]
ACTIVITY = FEATURE_TABLES["user_activity_features"]
MERCHANT = FEATURE_TABLES["merchant_features"]
NOW = datetime.now(timezone.utc).replace(microsecond=123456)


def random_rows(table, entity_ids, rng, newest=NOW, spread_s=3600) -> pd.DataFrame:
    """One row per id, event times within ``spread_s`` before ``newest``, some nulls."""
    count = len(entity_ids)
    rows = pd.DataFrame({
        table.entity_column: list(entity_ids),
        table.timestamp_column: pd.Timestamp(newest)
        - pd.to_timedelta(rng.integers(0, spread_s * 10**6, count), unit="us"),
    })
    for feature in table.features:
        if feature.dtype == "bigint":
            rows[feature.name] = rng.integers(-3, 10**6, count)
        else:
            values = rng.normal(50, 40, count)
            if feature.nullable:
                values[rng.random(count) < 0.2] = np.nan
            rows[feature.name] = values
    return rows


def expected_value(value):
    return None if isinstance(value, float) and math.isnan(value) else value


@pytest.fixture(scope="module")
def cfg(local_services):
    return local_services


@pytest.fixture(scope="module")
def client(cfg):
    return redis_client(RedisSettings.from_config(cfg))


@pytest.fixture(scope="module")
def projects(client):
    """Fresh Feast projects for this run (a project ends every Redis key); their keys are
    deleted afterwards."""
    names = {role: f"t_{role}_{uuid.uuid4().hex[:8]}" for role in ("feast", "writer", "misc")}
    yield names
    for project in names.values():
        for key in client.scan_iter(match=b"*" + project.encode(), count=10_000):
            client.delete(key)


@pytest.fixture(scope="module")
def feast_store(cfg, projects, tmp_path_factory):
    return feature_repo.apply(cfg, project=projects["feast"], directory=tmp_path_factory.mktemp("feast"))


def test_wire_format_is_feasts():
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType
    from google.protobuf.timestamp_pb2 import Timestamp

    for entity_id in ("user-1", "ü-€-漢", ""):
        feast_key = _redis_key("tessera", EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=entity_id)]),
                               entity_key_serialization_version=3)
        assert redis_key("user_id", entity_id, "tessera") == feast_key
    for table in FEATURE_TABLES.values():
        for feature in table.features:
            assert feature_field(table.name, feature.name) == _mmh3(f"{table.name}:{feature.name}")

    for number in (0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)):
        assert encode_bigint(number) == Value(int64_val=number).SerializeToString()
        assert decode_value(encode_bigint(number)) == number
    assert encode_bigint(None) == b"" and decode_value(b"") is None

    doubles = [0.0, -1.5, 1e300, 5e-324, float("inf"), float("nan"), None]
    feast_bytes = [v.SerializeToString() for v in python_values_to_proto_values(doubles, ValueType.DOUBLE)]
    assert encode_doubles(pa.chunked_array([doubles], pa.float64())) == feast_bytes
    assert [decode_value(b) for b in feast_bytes[:5]] == doubles[:5]

    for moment in (datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc), NOW,
                   datetime(2038, 1, 19, 3, 14, 8, 1, timezone.utc)):
        feast_ts = Timestamp()
        feast_ts.FromDatetime(moment)
        micros = (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
        assert encode_timestamp(micros) == feast_ts.SerializeToString()
        assert decode_timestamp(feast_ts.SerializeToString()) == moment


def test_feast_and_reader_read_back_what_the_writer_wrote(cfg, projects, feast_store):
    rng = np.random.default_rng(1)
    users, merchants = [f"user-{i}" for i in range(200)], [f"merchant-{i}" for i in range(40)]
    tables = {TXN.name: random_rows(TXN, users, rng), ACTIVITY.name: random_rows(ACTIVITY, users, rng),
              MERCHANT.name: random_rows(MERCHANT, merchants, rng)}
    writer = OnlineStoreWriter(cfg, project=projects["feast"])
    for name, rows in tables.items():
        assert writer.write(FEATURE_TABLES[name], rows).written == len(rows)

    picked = [{"user_id": user, "merchant_id": random.Random(2).choice(merchants)}
              for user in random.Random(3).sample(users, 40)]
    entity_rows = picked + [{"user_id": "user-unknown", "merchant_id": merchants[0]}]
    refs = feature_refs("fraud_model_v1")
    from_feast = feast_store.get_online_features(features=refs, entity_rows=entity_rows).to_dict()
    from_reader = OnlineStoreReader(cfg, project=projects["feast"]).read(refs, entity_rows)

    for row_number, entity_row in enumerate(picked):
        for ref in refs:
            view, feature = ref.split(":")
            table = FEATURE_TABLES[view]
            source = tables[view].set_index(table.entity_column).loc[entity_row[table.entity_column]]
            expected = expected_value(source[feature])
            assert from_feast[feature][row_number] == expected, (ref, entity_row)
            read = from_reader[row_number][ref]
            assert (read.value, read.status) == (expected, PRESENT), (ref, entity_row)
            assert read.event_time == source[table.timestamp_column].to_pydatetime()
    unknown = from_reader[-1]
    assert {unknown[ref].status for ref in refs if not ref.startswith("merchant")} == {MISSING}
    assert {unknown[ref].status for ref in refs if ref.startswith("merchant")} == {PRESENT}
    assert all(from_feast[feature][-1] is None for feature in TXN.feature_names)


def test_feast_and_writer_write_byte_identical_hashes(cfg, projects, feast_store, client):
    rng = np.random.default_rng(4)
    users = [f"same-{i}" for i in range(150)]
    txn = random_rows(TXN, users, rng)
    # Older duplicates in the same batch: both must keep the newest row.
    older = txn.head(10).assign(**{TXN.timestamp_column: txn[TXN.timestamp_column].head(10) - pd.Timedelta(minutes=5),
                                   "txn_count_1h": 999})
    txn = pd.concat([txn, older], ignore_index=True)
    activity = random_rows(ACTIVITY, users, rng)  # the second view in the same hashes
    writer = OnlineStoreWriter(cfg, project=projects["writer"])
    for table, rows in ((TXN, txn), (ACTIVITY, activity)):
        feast_store.write_to_online_store(table.name, rows)
        writer.write(table, rows)

    for user in users:
        feast_hash = client.hgetall(redis_key("user_id", user, projects["feast"]))
        writer_hash = client.hgetall(redis_key("user_id", user, projects["writer"]))
        assert len(feast_hash) == 2 + len(TXN.features) + len(ACTIVITY.features)
        assert list(writer_hash.items()) == list(feast_hash.items()), user  # same bytes, same order


def test_older_rows_never_overwrite_newer_ones(cfg, projects):
    writer, reader = OnlineStoreWriter(cfg, project=projects["misc"]), OnlineStoreReader(cfg, project=projects["misc"])
    base = random_rows(ACTIVITY, ["order-1"], np.random.default_rng(5)).iloc[0].to_dict()

    def row(user, minutes, logins):
        return {**base, "user_id": user, "event_timestamp": NOW - timedelta(minutes=minutes), "logins_1h": logins}

    def stored_logins(user):
        feature = "user_activity_features:logins_1h"
        return reader.read([feature], [{"user_id": user}])[0][feature].value

    assert writer.write(ACTIVITY, [row("order-1", 10, 1)]).written == 1
    result = writer.write(ACTIVITY, [row("order-1", 20, 2)])  # older
    assert (result.written, result.skipped_older) == (0, 1) and stored_logins("order-1") == 1
    assert writer.write(ACTIVITY, [row("order-1", 5, 3)]).written == 1 and stored_logins("order-1") == 3
    # Same event time, other values: replaces (the stream recomputed it with a late event).
    assert writer.write(ACTIVITY, [row("order-1", 5, 4)]).written == 1 and stored_logins("order-1") == 4
    # Within one batch, in either order, the newest row stays.
    writer.write(ACTIVITY, [row("order-2", 1, 7), row("order-2", 9, 8)])
    writer.write(ACTIVITY, [row("order-3", 9, 8), row("order-3", 1, 7)])
    assert stored_logins("order-2") == stored_logins("order-3") == 7


def test_a_replay_leaves_the_same_bytes(cfg, projects, client):
    writer = OnlineStoreWriter(cfg, project=projects["misc"], batch_size=64)  # several round trips
    rows = random_rows(TXN, [f"replay-{i}" for i in range(300)], np.random.default_rng(6))
    assert writer.write(TXN, rows).written == 300
    keys = [redis_key("user_id", user, projects["misc"]) for user in rows["user_id"]]

    def snapshot():
        return [(list(client.hgetall(key).items()), client.pexpiretime(key)) for key in keys]

    before = snapshot()
    replayed = writer.write(TXN, pa.RecordBatch.from_pandas(rows, preserve_index=False))  # Arrow, as in mapInArrow
    assert (replayed.written, replayed.skipped_older) == (300, 0)  # same instants: written again
    replayed = writer.write(TXN, rows.to_dict("records"))  # plain dicts
    assert (replayed.written, replayed.skipped_older) == (300, 0)
    assert snapshot() == before


def test_concurrent_writers_leave_the_newest_row(cfg, projects):
    users = [f"race-{i}" for i in range(40)]
    base = random_rows(ACTIVITY, users, np.random.default_rng(7))
    versions = [base.assign(event_timestamp=pd.Timestamp(NOW) - pd.Timedelta(seconds=60 - version), logins_1h=version)
                for version in range(12)]

    def write_all_versions(seed):
        writer = OnlineStoreWriter(cfg, project=projects["misc"], batch_size=10)
        order = list(range(len(versions)))
        random.Random(seed).shuffle(order)
        for version in order:
            writer.write(ACTIVITY, versions[version].sample(frac=1, random_state=seed))

    threads = [threading.Thread(target=write_all_versions, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = OnlineStoreReader(cfg, project=projects["misc"]).read(["user_activity_features:logins_1h"],
                                                                   [{"user_id": user} for user in users])
    assert {value["user_activity_features:logins_1h"].value for value in values} == {11}


def test_statuses_missing_expired_present(cfg, projects):
    writer, reader = OnlineStoreWriter(cfg, project=projects["misc"]), OnlineStoreReader(cfg, project=projects["misc"])
    event_time = NOW - timedelta(hours=1)
    rng = np.random.default_rng(8)
    writer.write(ACTIVITY, random_rows(ACTIVITY, ["status-1"], rng, newest=event_time, spread_s=1))
    writer.write(TXN, random_rows(TXN, ["status-1"], rng, newest=event_time, spread_s=1))
    stored_time = reader.read(["user_activity_features:logins_1h"], [{"user_id": "status-1"}])[0][
        "user_activity_features:logins_1h"].event_time
    refs = ["user_activity_features:logins_1h", "user_transaction_features:txn_count_1h"]

    def statuses(now, user="status-1"):
        return [reader.read(refs, [{"user_id": user}], now=now)[0][ref].status for ref in refs]

    assert statuses(NOW) == [PRESENT, PRESENT]
    assert statuses(stored_time + ACTIVITY.ttl) == [PRESENT, PRESENT]  # valid up to ttl, inclusive
    late = stored_time + ACTIVITY.ttl + timedelta(microseconds=1)
    assert statuses(late) == [EXPIRED, PRESENT]  # the other view of the key is still valid
    expired = reader.read(refs, [{"user_id": "status-1"}], now=late)[0][refs[0]]
    assert expired.value is None and expired.event_time == stored_time
    assert statuses(NOW, user="status-nobody") == [MISSING, MISSING]


def test_key_expiry_follows_the_longest_valid_view(cfg, projects, client):
    writer = OnlineStoreWriter(cfg, project=projects["misc"])
    key = redis_key("user_id", "ttl-1", projects["misc"])
    rng = np.random.default_rng(9)

    def expiry_ms(event_time, ttl):
        micros = (event_time - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
        return -(-(micros + ttl // timedelta(microseconds=1)) // 1000)

    activity = random_rows(ACTIVITY, ["ttl-1"], rng, newest=NOW - timedelta(hours=2), spread_s=1)
    writer.write(ACTIVITY, activity)
    activity_time = activity[ACTIVITY.timestamp_column].iloc[0].to_pydatetime()
    assert client.pexpiretime(key) == expiry_ms(activity_time, ACTIVITY.ttl)

    txn = random_rows(TXN, ["ttl-1"], rng, newest=NOW - timedelta(hours=3), spread_s=1)
    writer.write(TXN, txn)  # older row, longer ttl: the key lives on for it
    txn_time = txn[TXN.timestamp_column].iloc[0].to_pydatetime()
    assert client.pexpiretime(key) == expiry_ms(txn_time, TXN.ttl)

    writer.write(ACTIVITY, random_rows(ACTIVITY, ["ttl-1"], rng, newest=NOW, spread_s=1))
    assert client.pexpiretime(key) == expiry_ms(txn_time, TXN.ttl)  # never shortened

    stale = random_rows(ACTIVITY, ["ttl-stale"], rng, newest=NOW - ACTIVITY.ttl - timedelta(seconds=5), spread_s=1)
    assert writer.write(ACTIVITY, stale).skipped_expired == 1
    assert not client.exists(redis_key("user_id", "ttl-stale", projects["misc"]))


def test_the_writer_reloads_its_script_after_a_redis_restart(cfg, projects, client):
    client.script_flush()  # what a restart does to the script cache
    rows = random_rows(MERCHANT, ["restart-1"], np.random.default_rng(10))
    assert OnlineStoreWriter(cfg, project=projects["misc"]).write(MERCHANT, rows).written == 1


def test_write_dataframe_online_writes_the_newest_row_per_entity(spark, cfg, projects):
    rng = np.random.default_rng(11)
    users = [f"spark-{i}" for i in range(30)]
    history = pd.concat([random_rows(TXN, users, rng, newest=NOW - timedelta(hours=hours)) for hours in (0, 5, 9)],
                        ignore_index=True)
    df = spark.createDataFrame(history)
    result = write_dataframe_online(df, TXN, cfg, project=projects["misc"])
    assert (result.written, result.skipped_older, result.skipped_expired) == (30, 0, 0)

    newest = history.loc[history.groupby("user_id")[TXN.timestamp_column].idxmax()].set_index("user_id")
    read = OnlineStoreReader(cfg, project=projects["misc"]).read(
        [f"{TXN.name}:{name}" for name in TXN.feature_names], [{"user_id": user} for user in users])
    for user, values in zip(users, read, strict=True):
        for name in TXN.feature_names:
            assert values[f"{TXN.name}:{name}"].value == expected_value(newest.loc[user, name]), (user, name)
