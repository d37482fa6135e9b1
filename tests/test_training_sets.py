"""Point-in-time training sets: leakage traps on tiny hand-written Delta tables, the same
answers as Feast's get_historical_features, version pinning, the content hash and the
label maturity rule."""
from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

import feature_repo
from plumbing.config import load_config
from plumbing.training_sets import (
    FLAG_LABELS,
    FRAUD_FLAG_COLUMN,
    FRAUD_LABELS,
    REQUEST_RATIO,
    build_training_set,
    labelled_transactions,
    training_set_hash,
)
from transformations.catalog import FEATURE_TABLES
from transformations.schemas import CHARGEBACK_SCHEMA, TRANSACTION_SCHEMA

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
SECOND, MICROSECOND = timedelta(seconds=1), timedelta(microseconds=1)
TXN, ACTIVITY, MERCHANT = (FEATURE_TABLES[name] for name in
                           ("user_transaction_features", "user_activity_features", "merchant_features"))


def _cfg(root, **extra: str):
    return load_config("local", environ={**os.environ, "TESSERA__LAKE__ROOT": str(root / "lake"),
                                         "TESSERA__EVENTS__HISTORY_URI": str(root / "history"), **extra})


def feature_rows(table, rows: list[tuple[str, datetime, float | None]]) -> pd.DataFrame:
    """Rows of ``table`` with every feature set to the row's value; a None value leaves the
    nullable features null (and the others 0), as a user with no known amount has."""
    frame = pd.DataFrame(rows, columns=[table.entity_column, table.timestamp_column, "value"])
    frame[table.timestamp_column] = pd.to_datetime(frame[table.timestamp_column], utc=True)
    for feature in table.features:
        values = frame["value"] if feature.nullable else frame["value"].fillna(0)
        frame[feature.name] = values.astype("Int64" if feature.dtype == "bigint" else "float64")
    frame["event_date"] = frame[table.timestamp_column].dt.strftime("%Y-%m-%d")
    return frame.drop(columns="value")


def write_tables(cfg, txn_offset: float = 0) -> None:
    """The tiny lake: u1 has transaction rows at T0, T0+1h and T0+2h (the last one with its
    nullable features null), u2 one at T0, u4 one whose mean amount is 0."""
    tables = {
        TXN: feature_rows(TXN, [("u1", T0, 1 + txn_offset), ("u1", T0 + HOUR, 2 + txn_offset),
                                ("u1", T0 + 2 * HOUR, None), ("u2", T0, 5 + txn_offset), ("u4", T0, 0)]),
        ACTIVITY: feature_rows(ACTIVITY, [("u1", T0, 7), ("u2", T0, 8)]),
        MERCHANT: feature_rows(MERCHANT, [("m1", T0, 4)]),
    }
    for table, rows in tables.items():
        write_deltalake(f"{cfg.lake.root}/{table.name}", rows, partition_by=["event_date"], mode="overwrite")


# (case, user, merchant, time, amount) -> expected
# (txn_count_1h, txn_amount_std_1h, logins_1h, merchant_txn_count_30d, request-time ratio)
CASES = [
    ("before any row", "u1", "m1", T0 - SECOND, 10.0, (None, None, None, None, None)),
    ("a row 1 s later is not used", "u1", "m1", T0 + HOUR - SECOND, 10.0, (1, 1.0, 7, 4, 10.0)),
    ("a row at exactly the time is not used", "u1", "m1", T0 + HOUR, 10.0, (1, 1.0, 7, 4, 10.0)),
    ("a row 1 us before is used", "u1", "m1", T0 + HOUR + MICROSECOND, 10.0, (2, 2.0, 7, 4, 5.0)),
    ("the newest row's null wins over an older value", "u1", "m1", T0 + 2 * HOUR + SECOND, 10.0,
     (0, None, 7, 4, None)),
    ("exactly ttl old is still valid", "u1", "m1", T0 + 2 * HOUR + 7 * DAY, 10.0, (0, None, None, 4, None)),
    ("1 us past the ttl is null", "u1", "m1", T0 + 2 * HOUR + 7 * DAY + MICROSECOND, 10.0,
     (None, None, None, 4, None)),
    ("each table has its own ttl", "u2", "m1", T0 + 25 * HOUR, 10.0, (5, 5.0, None, 4, 2.0)),
    ("an entity without history", "u3", "m2", T0 + HOUR, 10.0, (None, None, None, None, None)),
    ("a zero mean gives no ratio", "u4", "m1", T0 + HOUR, 10.0, (0, 0.0, None, 4, None)),
]
CHECKED = ["txn_count_1h", "txn_amount_std_1h", "logins_1h", "merchant_txn_count_30d", REQUEST_RATIO]


def labelled_events(spark):
    rows = [(str(i), user, merchant, time, amount, 0) for i, (_, user, merchant, time, amount, _) in enumerate(CASES)]
    return spark.createDataFrame(
        rows, "transaction_id string, user_id string, merchant_id string, event_time timestamp, amount double, "
              "label int")


@pytest.fixture(scope="module")
def tiny_lake(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("tiny"))
    write_tables(cfg)
    return cfg


@pytest.fixture(scope="module")
def tiny_training_set(spark, tiny_lake) -> pd.DataFrame:
    df, _ = build_training_set(spark, tiny_lake, labelled_events(spark), "fraud_model_v1")
    return df.toPandas().assign(case=lambda frame: frame["transaction_id"].astype(int)).sort_values("case")


def _values(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return [tuple(None if pd.isna(value) else value for value in row)
            for row in frame[columns].itertuples(index=False)]


def test_features_are_taken_strictly_before_the_event_and_null_past_the_ttl(tiny_training_set):
    got = _values(tiny_training_set, CHECKED)
    for (name, *_, expected), row in zip(CASES, got, strict=True):
        assert row == expected, name


def test_the_training_set_keeps_the_events_and_adds_the_service_in_order(spark, tiny_lake, tiny_training_set):
    from feature_repo.feature_services import feature_refs

    service = [ref.split(":")[1] for ref in feature_refs("fraud_model_v1")]
    events = labelled_events(spark).columns
    assert list(tiny_training_set.columns[:-1]) == events + service  # the last one is the test's "case"
    assert len(tiny_training_set) == len(CASES)


def test_equals_feast_historical_features_value_for_value(local_services, tiny_lake, tiny_training_set, tmp_path):
    """Feast (the project's Delta offline store) uses a row AT the entity time and keeps a
    row while ``row time >= T - ttl`` with ``row time <= T``. Asking Feast as of ``T - 1 us``
    gives our strictly-before rule exactly; the ttl edge then moves by 1 us: a row
    ``ttl + 1 us`` old is expired for us and still valid for Feast. That one case is
    pinned below; every other value must be equal."""
    store = feature_repo.apply(tiny_lake, project=f"t_ts_{uuid.uuid4().hex[:8]}", directory=tmp_path / "feast")
    ours = tiny_training_set
    entity_df = pd.DataFrame({
        "case": ours["case"], "user_id": ours["user_id"], "merchant_id": ours["merchant_id"],
        "event_timestamp": pd.to_datetime(ours["event_time"]).dt.tz_localize("UTC") - pd.Timedelta(microseconds=1),
    })
    feast = (store.get_historical_features(entity_df=entity_df, features=store.get_feature_service("fraud_model_v1"))
             .to_df().sort_values("case").reset_index(drop=True))
    ours = ours.reset_index(drop=True)
    features = [c for c in feast.columns if c not in entity_df.columns]
    assert len(features) == sum(len(table.features) for table in (TXN, ACTIVITY, MERCHANT))

    edge = [i for i, case in enumerate(CASES) if case[0] == "1 us past the ttl is null"]
    assert feast.loc[edge, "txn_count_1h"].tolist() == [0] and pd.isna(ours.loc[edge, "txn_count_1h"]).all()
    for column in features:
        if column == REQUEST_RATIO:  # ours is the request-time ratio: amount / as-of mean
            expected = ours["amount"] / feast["txn_amount_mean_7d"].replace(0, float("nan"))
            pd.testing.assert_series_equal(ours[column], expected, check_names=False)
            continue
        assert _values(ours.drop(index=edge), [column]) == _values(feast.drop(index=edge), [column]), column


def test_versions_pin_what_is_read_and_default_to_the_latest(spark, tmp_path):
    cfg = _cfg(tmp_path)
    write_tables(cfg)                    # version 0 of every table
    write_tables(cfg, txn_offset=100)    # version 1: other values
    events = labelled_events(spark).where(F.col("transaction_id") == "1")  # "a row 1 s later is not used"
    features = ["user_transaction_features:txn_count_1h"]

    latest, latest_versions = build_training_set(spark, cfg, events, features)
    pinned, pinned_versions = build_training_set(spark, cfg, events, features, {"user_transaction_features": 0})
    assert latest_versions == {"user_transaction_features": 1} and latest.first()["txn_count_1h"] == 101
    assert pinned_versions == {"user_transaction_features": 0} and pinned.first()["txn_count_1h"] == 1


def test_bad_requests_are_refused_before_reading(spark, tiny_lake):
    events = labelled_events(spark)
    with pytest.raises(ValueError, match="unknown feature reference"):
        build_training_set(spark, tiny_lake, events, ["user_transaction_features:no_such_feature"])
    with pytest.raises(ValueError, match="lack column.*merchant_id"):
        build_training_set(spark, tiny_lake, events.drop("merchant_id"), [MERCHANT])
    with pytest.raises(ValueError, match="amount"):
        build_training_set(spark, tiny_lake, events.drop("amount"), [f"{TXN.name}:{REQUEST_RATIO}"])


def test_hash_ignores_row_order_but_sees_every_value_null_and_duplicate(spark):
    schema = "id string, x bigint, y double"
    base = spark.createDataFrame([("a", 1, 2.0), ("b", None, 3.0), ("c", 4, None)], schema)
    digest = training_set_hash(base)
    assert len(digest) == 32
    assert training_set_hash(base.orderBy(F.col("id").desc()).repartition(3)) == digest
    variants = {
        "value": [("a", 1, 2.0), ("b", None, 3.0), ("c", 5, None)],
        "null moved": [("a", 1, 2.0), ("b", 3, None), ("c", 4, None)],
        "duplicate row": [("a", 1, 2.0), ("a", 1, 2.0), ("b", None, 3.0), ("c", 4, None)],
        "missing row": [("a", 1, 2.0), ("b", None, 3.0)],
    }
    for name, rows in variants.items():
        assert training_set_hash(spark.createDataFrame(rows, schema)) != digest, name
    assert training_set_hash(base.withColumnRenamed("y", "z")) != digest  # the schema counts too


def _write_history(cfg, transactions: list[tuple], chargebacks: list[tuple]) -> None:
    for name, schema, rows in (("transactions", TRANSACTION_SCHEMA, transactions),
                               ("chargebacks", CHARGEBACK_SCHEMA, chargebacks)):
        folder = f"{cfg.events.history_uri}/{name}"
        os.makedirs(folder, exist_ok=True)
        records = [dict(zip(schema.fieldNames(), row, strict=True)) for row in rows]
        pq.write_table(pa.Table.from_pylist(records, schema=to_arrow_schema(schema, timezone="UTC")),
                       f"{folder}/part-0.parquet")


def test_labels_count_chargebacks_arriving_within_the_maturity(spark, tmp_path):
    cfg = _cfg(tmp_path)
    day1 = datetime(2026, 1, 1, 10, tzinfo=timezone.utc)

    def txn(tid, time):
        return (tid, "u1", "m1", 20.0, "EUR", "DE", "d1", "web", time)

    def chargeback(tid, time, arrival):
        return (f"c{tid}", tid, "u1", "m1", time, arrival)

    transactions = [txn("t1", day1), txn("t2", day1), txn("t3", day1), txn("t3", day1),  # t3 replayed
                    txn("t4", day1 + 2 * DAY), txn("late", day1 + 9 * DAY)]          # late: out of range
    chargebacks = [chargeback("t1", day1, day1 + 2 * DAY),          # within 3 days: fraud
                   chargeback("t2", day1, day1 + 3 * DAY),          # exactly 3 days: too late to count
                   chargeback("t4", day1 + 2 * DAY, day1 + 4 * DAY)]
    _write_history(cfg, transactions, chargebacks)

    start, end = datetime(2026, 1, 1), datetime(2026, 1, 4)
    labels = labelled_transactions(spark, cfg, start, end, maturity=3 * DAY)
    got = {row["transaction_id"]: row["label"] for row in labels.collect()}
    assert got == {"t1": 1, "t2": 0, "t3": 0, "t4": 1}
    # The history reaches midnight after its newest transaction, 2026-01-11: an end after
    # 2026-01-08 leaves the last transactions' labels unknown.
    labelled_transactions(spark, cfg, start, datetime(2026, 1, 8), maturity=3 * DAY)
    with pytest.raises(ValueError, match="labels are not mature"):
        labelled_transactions(spark, cfg, start, datetime(2026, 1, 9), maturity=3 * DAY)


def test_labels_from_an_ingested_fraud_flag_known_after_the_stated_delay(spark, tmp_path):
    """The flag source: a transaction is fraud when a landed flag of it says so (a replayed
    flag counts once, a transaction without one is not fraud); the flag is known ``maturity``
    after the transaction, so the history must reach ``end + maturity``; no flags at all is
    an error naming the fix."""
    cfg = _cfg(tmp_path)
    day1 = datetime(2026, 1, 1, 10, tzinfo=timezone.utc)
    transactions = [(tid, user, "m1", 20.0, "EUR", "DE", "d1", "web", day1 + offset * DAY)
                    for tid, user, offset in [("t1", "u1", 0), ("t2", "u1", 1), ("t3", "u2", 1), ("t4", "u2", 2),
                                              ("late", "u1", 9)]]
    _write_history(cfg, transactions, [])
    with pytest.raises(ValueError, match="no fraud flags under .*fraud_labels: ingest the transactions with a "
                                         "mapping that has fraud_flag:"):
        labelled_transactions(spark, cfg, datetime(2026, 1, 1), datetime(2026, 1, 4), 5 * DAY, source=FLAG_LABELS)
    folder = f"{cfg.events.history_uri}/{FRAUD_LABELS}/date=2026-01-01"
    os.makedirs(folder)
    flags = [("t1", "u1", True), ("t2", "u1", False), ("t2", "u1", True),  # t2 flagged by a later import too
             ("t3", "u1", True)]  # another user's t3: not u2's
    pq.write_table(pa.Table.from_pylist([{"transaction_id": t, "user_id": u, "event_time": day1, FRAUD_FLAG_COLUMN: f}
                                         for t, u, f in flags]), f"{folder}/ingest-x-000.parquet")
    labels = labelled_transactions(spark, cfg, datetime(2026, 1, 1), datetime(2026, 1, 4), 5 * DAY,
                                   source=FLAG_LABELS)
    assert {row["transaction_id"]: row["label"] for row in labels.collect()} == {"t1": 1, "t2": 1, "t3": 0, "t4": 0}
    # The history ends 2026-01-11: flags known 5 days after the transaction are all known for
    # transactions before 2026-01-06, not for those of 2026-01-06.
    with pytest.raises(ValueError, match="labels are not mature: .* need their flags, known 5 days"):
        labelled_transactions(spark, cfg, datetime(2026, 1, 1), datetime(2026, 1, 7), 5 * DAY, source=FLAG_LABELS)
