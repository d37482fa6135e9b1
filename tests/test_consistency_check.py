"""The consistency check on a known state: bronze events and the Redis values the
catalog functions give for them (what the streaming job writes). It finds nothing to
report there, and reports a changed value and a missing entity, exiting 1."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import mlflow
import redis

from jobs import consistency_check
from plumbing.event_tables import bronze_table
from plumbing.online_store import encode_bigint, feature_field, redis_key, write_dataframe_online
from tests import test_stream_features as streaming
from transformations.catalog import FEATURE_TABLES, USER_TRANSACTION_FEATURES
from transformations.schemas import ACTIVITY, CHARGEBACKS, SCHEMAS, TRANSACTIONS

# The streaming tests' fixtures: a Redis of this module's own, and per test a lake of its own.
isolated_redis = streaming.isolated_redis
env = streaming.env
config = streaming.config
T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=30)


def _events(spark):
    def at(minutes: int) -> datetime:
        return T0 + timedelta(minutes=minutes)

    transactions = [(f"t{i}", f"u{i % 3}", f"m{i % 2}", 10.0 * i, "EUR", "DE", "d1", "web", at(i)) for i in range(9)]
    activity = [(f"e{i}", f"u{i % 3}", "login", i % 4 != 0, "s1", "d1", "DE", at(i)) for i in range(6)]
    chargebacks = [("c1", "t1", "u1", "m1", at(1), at(5))]
    return {event_type: spark.createDataFrame(rows, SCHEMAS[event_type])
            for event_type, rows in ((TRANSACTIONS, transactions), (ACTIVITY, activity), (CHARGEBACKS, chargebacks))}


def _consistent_state(spark, cfg) -> None:
    """Bronze holds the events; Redis the newest batch row of every entity."""
    events = _events(spark)
    for event_type, rows in events.items():
        bronze_table(cfg, event_type).write(rows)
    for table in FEATURE_TABLES.values():
        write_dataframe_online(table.build(**{event_type: events[event_type] for event_type in table.sources}),
                               table, cfg)


def test_online_equal_to_batch_has_no_mismatch(spark, env):
    cfg = config(env)
    _consistent_state(spark, cfg)

    checks, passed = consistency_check.run(cfg, list(FEATURE_TABLES.values()), datetime.now(timezone.utc),
                                           spark=spark)

    assert passed
    assert {check.table: (check.entities_checked, check.mismatched_entities) for check in checks} == {
        "user_transaction_features": (3, 0), "user_activity_features": (3, 0), "merchant_features": (2, 0)}


def test_a_changed_value_and_a_missing_entity_are_reported_and_fail_the_check(spark, env, monkeypatch, capsys):
    cfg = config(env)
    _consistent_state(spark, cfg)
    table = USER_TRANSACTION_FEATURES
    online = redis.Redis(port=cfg.redis.port, password=cfg.redis_password())
    # u1's txn_count_1h is 3 (t1, t4, t7); Redis now says 99. u2 disappears from Redis.
    online.hset(redis_key("user_id", "u1"), feature_field(table.name, "txn_count_1h"), encode_bigint(99))
    online.delete(redis_key("user_id", "u2"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert consistency_check.main(["--tables", table.name]) == 1

    report = capsys.readouterr().out
    assert "user_transaction_features: 3 entities checked, 2 mismatched (66.6667%); presence 1" in report
    run = mlflow.search_runs(experiment_names=[consistency_check.CONSISTENCY_EXPERIMENT],
                             order_by=["attributes.start_time DESC"], max_results=1, output_format="list")[0]
    assert run.info.status == "FAILED"
    assert run.data.metrics[f"{table.name}.txn_count_1h.mismatches"] == 1
    assert run.data.metrics[f"{table.name}.txn_count_1h.max_abs_diff"] == 96
    assert run.data.metrics[f"{table.name}.txn_amount_sum_24h.mismatches"] == 0


def test_comparisons_show_each_entity_and_feature_as_the_check_counts_them(spark, env):
    cfg = config(env)
    _consistent_state(spark, cfg)
    table, as_of = USER_TRANSACTION_FEATURES, datetime.now(timezone.utc)

    consistent = consistency_check.comparisons(spark, cfg, table, as_of)

    assert list(consistent.columns) == consistency_check.COMPARISON_COLUMNS
    assert len(consistent) == 3 * len(table.feature_names)  # u0, u1, u2: every feature
    assert consistent["matches"].all() and not consistent["skipped_newer"].any()
    assert (consistent["online_event_timestamp"] == consistent["batch_event_timestamp"]).all()
    u1 = consistent[consistent["entity"] == "u1"].set_index("feature")
    assert list(u1.index) == table.feature_names
    assert u1.loc["txn_count_1h", ["batch_value", "online_value"]].tolist() == [3.0, 3.0]
    assert u1.loc["txn_lifetime_spend", "online_value"] == 10.0 * (1 + 4 + 7)
    assert u1["batch_event_timestamp"].iloc[0] == T0 + timedelta(minutes=7)

    online = redis.Redis(port=cfg.redis.port, password=cfg.redis_password())
    online.hset(redis_key("user_id", "u1"), feature_field(table.name, "txn_count_1h"), encode_bigint(99))
    online.delete(redis_key("user_id", "u2"))
    changed = consistency_check.comparisons(spark, cfg, table, as_of)
    check = consistency_check.check_table(spark, cfg, table, as_of)

    wrong = changed[~changed["matches"]]
    assert wrong["entity"].nunique() == check.mismatched_entities == 2
    assert wrong[wrong["entity"] == "u1"][["feature", "batch_value", "online_value", "abs_diff"]].values.tolist() == [
        ["txn_count_1h", 3.0, 99.0, 96.0]]
    u2 = changed[changed["entity"] == "u2"]
    assert (~u2["matches"]).all() and (u2["online_status"] == "missing").all() and u2["online_value"].isna().all()
    assert changed.loc[changed["entity"] == "u0", "matches"].all()
