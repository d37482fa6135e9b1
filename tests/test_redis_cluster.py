"""The online store on Redis Cluster: the ``cluster`` profile's three masters, started by
the project's own code (what `tessera --profile cluster up` does), the writer's rows
spread over them, read back by the reader, the API's asyncio reader (one round trip per
node) and Feast's SDK (``redis_type: redis_cluster``); an older row never replaces a
newer one; a slot map gone stale is followed."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import anyio
import numpy as np
import pandas as pd
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import feature_repo
from plumbing import feast_repo, services
from plumbing.config import load_config
from plumbing.online_store import PRESENT, OnlineStoreReader, OnlineStoreWriter, RedisSettings, redis_client, redis_key
from serving import online
from transformations.catalog import FEATURE_TABLES

pytestmark = pytest.mark.integration  # it starts the cluster profile's Redis

TXN = FEATURE_TABLES["user_transaction_features"]
ACTIVITY = FEATURE_TABLES["user_activity_features"]
NOW = datetime.now(timezone.utc).replace(microsecond=654321)


@pytest.fixture(scope="module")
def cfg():
    """The cluster profile's Redis Cluster, up for this module (a developer's running one
    is reused and left running; one this module started is stopped at its end)."""
    cluster_cfg = load_config("cluster")
    was_running = services.status(cluster_cfg, only=["redis"])[0].healthy
    print(services.up(cluster_cfg, only=["redis"]))
    yield cluster_cfg
    if not was_running:
        services.down(cluster_cfg, only=["redis"])


@pytest.fixture(scope="module")
def project(cfg):
    name = f"t_cluster_{uuid.uuid4().hex[:8]}"
    yield name
    client = redis_client(RedisSettings.from_config(cfg))
    for key in client.scan_iter(match=b"*" + name.encode(), count=10_000):
        client.delete(key)


def rows_of(table, users, rng, newest=NOW) -> pd.DataFrame:
    rows = pd.DataFrame({table.entity_column: users,
                         table.timestamp_column: pd.Timestamp(newest)
                         - pd.to_timedelta(rng.integers(0, 3600 * 10**6, len(users)), unit="us")})
    for feature in table.features:
        rows[feature.name] = (rng.integers(0, 10**6, len(users)) if feature.dtype == "bigint"
                              else rng.normal(50, 40, len(users)))
    return rows


def node_clients(cfg) -> list[redis.Redis]:
    return [redis.Redis(host=host, port=port, password=cfg.redis_password()) for host, port in cfg.redis.seed_nodes()]


def test_status_and_the_feast_yaml_name_the_cluster(cfg, tmp_path):
    status = services.status(cfg, only=["redis"])[0]
    assert status.healthy, status.line()
    assert "cluster of 3 masters 127.0.0.1:6393, 127.0.0.1:6394, 127.0.0.1:6395" in status.line()
    for client in node_clients(cfg):  # three masters, password required, slots spread
        info = client.cluster("info")
        assert (info["cluster_state"], info["cluster_size"], info["cluster_known_nodes"]) == ("ok", "3", "3")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        kwargs = client.connection_pool.connection_kwargs
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=kwargs["host"], port=kwargs["port"], socket_timeout=2, retry=Retry(NoBackoff(), 0)).ping()
    online_store = feast_repo.feature_store_config(cfg, directory=tmp_path)["online_store"]
    assert online_store["redis_type"] == "redis_cluster"
    assert online_store["connection_string"].startswith("127.0.0.1:6393,127.0.0.1:6394,127.0.0.1:6395,password=")
    assert "db=" not in online_store["connection_string"]


def test_writer_reader_api_and_feast_on_the_cluster(cfg, project, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    users = [f"user-{i}" for i in range(300)]
    tables = {TXN.name: rows_of(TXN, users, rng), ACTIVITY.name: rows_of(ACTIVITY, users, rng)}
    writer = OnlineStoreWriter(cfg, project=project, batch_size=128)  # several chunks in flight
    for name, rows in tables.items():
        assert writer.write(FEATURE_TABLES[name], rows).written == len(users)

    keys_per_node = [sum(1 for _ in client.scan_iter(match=b"*" + project.encode(), count=1000))
                     for client in node_clients(cfg)]
    assert sum(keys_per_node) == len(users) and min(keys_per_node) > 50, keys_per_node  # spread over 3

    refs = [f"{TXN.name}:txn_count_1h", f"{TXN.name}:txn_amount_sum_1h", f"{ACTIVITY.name}:logins_1h"]
    picked = users[::7]
    entity_rows = [{"user_id": user} for user in picked]
    expected = [[tables[ref.split(":")[0]].set_index("user_id").loc[user, ref.split(":")[1]] for ref in refs]
                for user in picked]

    reader = OnlineStoreReader(cfg, project=project)
    read = reader.read(refs, entity_rows)
    assert [[values[ref].value for ref in refs] for values in read] == expected
    assert {values[ref].status for values in read for ref in refs} == {PRESENT}

    round_trips = []
    node_round_trip = online._node_round_trip

    async def counted(node, numbers, commands, replies):
        round_trips.append(node.name)
        await node_round_trip(node, numbers, commands, replies)

    monkeypatch.setattr(online, "_node_round_trip", counted)

    async def api_read():
        client = online.async_redis_client(RedisSettings.from_config(cfg))
        try:
            rows = await online.read_rows(client, reader, reader.plan(refs), entity_rows,
                                          datetime.now(timezone.utc), 10.0)
            assert sorted(round_trips) == sorted({*round_trips}) and len(round_trips) == 3  # one per node
            # A stale slot map (every slot pointed at the wrong master): MOVED, refreshed, read again.
            slots = client.nodes_manager.slots_cache
            masters = sorted({nodes[0].name for nodes in slots.values()})
            by_name = {nodes[0].name: nodes[0] for nodes in slots.values()}
            for slot, nodes in slots.items():
                slots[slot] = [by_name[masters[(masters.index(nodes[0].name) + 1) % len(masters)]]]
            again = await online.read_rows(client, reader, reader.plan(refs), entity_rows,
                                           datetime.now(timezone.utc), 10.0)
            return rows, again
        finally:
            await client.aclose()

    api_rows, after_moved = anyio.run(api_read)
    plan = reader.plan(refs)  # it groups the references by view: its rows in the plan's order
    flattened = [[value for row in entity for value in row.values] for entity in api_rows]
    grouped = [ref for view in plan.views for ref in view.refs]
    assert [[values[grouped.index(ref)] for ref in refs] for values in flattened] == expected
    assert [[value for row in entity for value in row.values] for entity in after_moved] == flattened

    store = feature_repo.apply(cfg, project=project, directory=tmp_path / "feast")
    from_feast = store.get_online_features(features=refs, entity_rows=entity_rows).to_dict()
    names = [ref.split(":")[1] for ref in refs]
    assert [[from_feast[name][number] for name in names] for number in range(len(picked))] == expected


def test_an_older_row_never_replaces_a_newer_one(cfg, project):
    writer, reader = OnlineStoreWriter(cfg, project=project), OnlineStoreReader(cfg, project=project)
    users = [f"order-{i}" for i in range(60)]  # on every node
    base = rows_of(ACTIVITY, users, np.random.default_rng(2))

    def version(minutes_ago: int, logins: int) -> pd.DataFrame:
        return base.assign(**{ACTIVITY.timestamp_column: pd.Timestamp(NOW) - pd.Timedelta(minutes=minutes_ago),
                              "logins_1h": logins})

    def stored() -> set:
        ref = f"{ACTIVITY.name}:logins_1h"
        return {values[ref].value for values in reader.read([ref], [{"user_id": user} for user in users])}

    assert writer.write(ACTIVITY, version(10, 1)).written == len(users)
    older = writer.write(ACTIVITY, version(20, 2))
    assert (older.written, older.skipped_older) == (0, len(users)) and stored() == {1}
    assert writer.write(ACTIVITY, version(5, 3)).written == len(users) and stored() == {3}
    # Both versions in one batch, the older last: the newer stays.
    assert writer.write(ACTIVITY, pd.concat([version(1, 7), version(9, 8)])).written == len(users)
    assert stored() == {7}

    # A stale slot map in the writer (every slot pointed at the wrong master): the nodes
    # answer MOVED, the writer refreshes the map and writes through the redirection.
    client = redis_client(RedisSettings.from_config(cfg))
    slots = client.nodes_manager.slots_cache
    masters = sorted({nodes[0].name for nodes in slots.values()})
    by_name = {nodes[0].name: nodes[0] for nodes in slots.values()}
    for slot, nodes in list(slots.items()):
        slots[slot] = [by_name[masters[(masters.index(nodes[0].name) + 1) % len(masters)]]]
    moved = writer.write(ACTIVITY, pd.concat([version(0, 9), version(30, 10)]))
    assert (moved.written, moved.skipped_older) == (len(users), len(users)) and stored() == {9}
    key = redis_key("user_id", users[0], project)
    assert client.pexpiretime(key) > int((NOW + timedelta(minutes=1)).timestamp() * 1000)


def test_the_api_reader_says_redis_is_down_then_recovers_by_itself(cfg, project):
    """Every master stopped: a read fails at once with a redis.RedisError (the API's 503)
    and /readyz's ping too; once the cluster is back, the same client reads again."""
    reader = OnlineStoreReader(cfg, project=project)
    refs = [f"{ACTIVITY.name}:logins_1h"]
    entity_rows = [{"user_id": f"order-{i}"} for i in range(10)]

    async def read(client):
        return await online.read_rows(client, reader, reader.plan(refs), entity_rows, datetime.now(timezone.utc), 10.0)

    async def outage():
        client = online.async_redis_client(RedisSettings.from_config(cfg))
        try:
            assert len(await read(client)) == len(entity_rows)
            services.down(cfg, only=["redis"])
            with pytest.raises(redis.RedisError):
                await read(client)
            with pytest.raises(redis.RedisError):
                await client.ping()
            services.up(cfg, only=["redis"])
            rows = await read(client)
            assert {row[0].status for row in rows} == {PRESENT}  # written by the test before
        finally:
            await client.aclose()

    anyio.run(outage)
