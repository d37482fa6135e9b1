"""Delta lake tables (plumbing.lake, delta-spark) on real local disk and on the real S3
endpoint (moto, through s3a).

Each test uses its own table: a tmp_path folder, or a unique prefix in bucket tessera-lake.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timezone

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable as RsDeltaTable
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from plumbing.lake import MODE_KEY, RANGE_KEY, LakeConflictError, LakeError, LakeSchemaError, LakeTable, table_uri
from plumbing.storage import delete_tree

# Integration tier: Delta tables on disk and on the S3 endpoint, through the JVM.
pytestmark = pytest.mark.integration

SCHEMA = "user_id string, event_ts timestamp, amount double"
WITH_DATE = "user_id string, event_ts timestamp, amount double, event_date string"


def at(day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=timezone.utc)


def events(spark, rows, schema=SCHEMA):
    return spark.createDataFrame(rows, schema)


def expected(spark, rows, schema=WITH_DATE):
    """Rows as the table returns them: with event_date, the UTC date of event_ts."""
    return spark.createDataFrame(rows, schema)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def table(request, tmp_path) -> Iterator[LakeTable]:
    if request.param == "local":
        yield LakeTable(str(tmp_path / "txn_features"))
        return
    cfg = request.getfixturevalue("s3_services")  # the real moto endpoint, bucket tessera-lake
    table = LakeTable.for_config(cfg, f"test_lake/{uuid.uuid4().hex[:12]}")
    assert table.uri.startswith("s3a://")
    yield table
    delete_tree(table.uri, table.storage_options)


@pytest.fixture
def local_table(tmp_path) -> LakeTable:
    return LakeTable(str(tmp_path / "txn_features"))


def slow(column: str, seconds: float = 3.0):
    """The column, computed by a Python UDF that sleeps first: keeps a write's transaction open."""
    return F.udf(lambda value: (time.sleep(seconds), value)[1], "double")(F.col(column))


def at_once(*actions):
    """Run the actions from one thread each, released together; return results or lake errors."""
    start = threading.Barrier(len(actions))
    outcomes: list = [None] * len(actions)

    def run(i):
        start.wait()
        try:
            outcomes[i] = actions[i]()
        except LakeError as error:
            outcomes[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


# ---------------------------------------------------------------------- both profiles
def test_append_then_read_returns_the_rows_with_their_utc_date(spark, table):
    version = table.write(events(spark, [("u1", at(1), 10.0), ("u2", at(2, 23, 59), None)]))
    table.write(events(spark, [("u1", at(3, 0, 0), 5.0)]))

    assert version == 0 and table.version() == 1
    assert_df_equality(table.read(spark), expected(spark, [
        ("u1", at(1), 10.0, "2024-03-01"),
        ("u2", at(2, 23, 59), None, "2024-03-02"),
        ("u1", at(3, 0, 0), 5.0, "2024-03-03"),
    ]), ignore_row_order=True, ignore_nullable=True)


def test_replacing_a_range_twice_leaves_no_duplicates_and_other_dates_untouched(spark, table):
    table.write(events(spark, [("u1", at(1), 1.0), ("u1", at(2), 2.0), ("u1", at(3), 3.0)]))
    recomputed = events(spark, [("u1", at(2), 20.0), ("u2", at(2, 8), 21.0)])

    table.write(recomputed, mode="replace_range", replace_range=("2024-03-02", "2024-03-03"))
    table.write(recomputed, mode="replace_range", replace_range=("2024-03-02", "2024-03-03"))

    assert_df_equality(table.read(spark), expected(spark, [
        ("u1", at(1), 1.0, "2024-03-01"),
        ("u1", at(2), 20.0, "2024-03-02"),
        ("u2", at(2, 8), 21.0, "2024-03-02"),
        ("u1", at(3), 3.0, "2024-03-03"),
    ]), ignore_row_order=True, ignore_nullable=True)


def test_a_new_column_is_added_and_older_rows_read_it_as_null(spark, table):
    table.write(events(spark, [("u1", at(1), 1.0)]))
    table.write(events(spark, [("u2", at(2), 2.0, 7)], SCHEMA + ", txn_count_24h int"))

    assert_df_equality(table.read(spark), expected(spark, [
        ("u1", at(1), 1.0, "2024-03-01", None),
        ("u2", at(2), 2.0, "2024-03-02", 7),
    ], WITH_DATE + ", txn_count_24h int"), ignore_row_order=True, ignore_nullable=True)


def test_read_by_version_returns_that_snapshot(spark, table):
    first = table.write(events(spark, [("u1", at(1), 1.0)]))
    table.write(events(spark, [("u1", at(1), 9.0)]), mode="replace_range",
                replace_range=("2024-03-01", "2024-03-02"))

    assert_df_equality(table.read(spark, version=first),
                       expected(spark, [("u1", at(1), 1.0, "2024-03-01")]),
                       ignore_row_order=True, ignore_nullable=True)


def test_read_by_time_range_keeps_start_and_excludes_end(spark, table):
    table.write(events(spark, [("u1", at(1, 23, 59), 1.0), ("u1", at(2, 6), 2.0),
                               ("u1", at(3, 6), 3.0), ("u1", at(4), 4.0)]))

    in_range = table.read(spark, start=at(2, 6), end=at(3, 6))

    assert_df_equality(in_range, expected(spark, [("u1", at(2, 6), 2.0, "2024-03-02")]),
                       ignore_row_order=True, ignore_nullable=True)


def test_concurrent_appends_both_land(spark, table):
    table.write(events(spark, [("u0", at(1), 0.0)]))
    appends = [events(spark, [(f"u{i}", at(2), float(i))]).withColumn("amount", slow("amount", 1.0))
               for i in (1, 2)]

    versions = at_once(*(lambda df=df: table.write(df) for df in appends))

    assert sorted(versions) == [1, 2]
    assert_df_equality(table.read(spark), expected(spark, [
        ("u0", at(1), 0.0, "2024-03-01"), ("u1", at(2), 1.0, "2024-03-02"),
        ("u2", at(2), 2.0, "2024-03-02"),
    ]), ignore_row_order=True, ignore_nullable=True)


def test_concurrent_replaces_of_one_range_one_wins_the_other_gets_a_clean_error(spark, table):
    table.write(events(spark, [("u0", at(1), 0.0), ("u0", at(2), 0.0)]))
    # Each replace computes its rows slowly: both transactions are open before either commits.
    replaces = [events(spark, [(f"u{i}", at(2), float(i)), (f"u{i}", at(2, 13), float(i))])
                .withColumn("amount", slow("amount")) for i in (1, 2)]

    outcomes = at_once(*(lambda df=df: table.write(df, mode="replace_range",
                                                    replace_range=("2024-03-02", "2024-03-03"))
                         for df in replaces))

    winner = next(i for i, outcome in enumerate(outcomes) if outcome == 1)
    assert isinstance(outcomes[1 - winner], LakeConflictError)
    assert "conflicts with a concurrent commit" in str(outcomes[1 - winner])
    assert table.version() == 1
    # The winner's two rows, whole; nothing of the loser, nothing left of the replaced day.
    assert_df_equality(table.read(spark), expected(spark, [
        ("u0", at(1), 0.0, "2024-03-01"),
        (f"u{winner + 1}", at(2), float(winner + 1), "2024-03-02"),
        (f"u{winner + 1}", at(2, 13), float(winner + 1), "2024-03-02"),
    ]), ignore_row_order=True, ignore_nullable=True)


def test_the_table_is_readable_by_plain_deltalake(spark, table):
    table.write(events(spark, [("u1", at(1), 1.5), ("u2", at(2), None)]))

    arrow = RsDeltaTable(table.uri, storage_options=table.storage_options).to_pyarrow_table()

    assert arrow.sort_by("user_id").to_pylist() == [
        {"user_id": "u1", "event_ts": at(1), "amount": 1.5, "event_date": "2024-03-01"},
        {"user_id": "u2", "event_ts": at(2), "amount": None, "event_date": "2024-03-02"},
    ]
    assert arrow.schema.field("event_ts").type == pa.timestamp("us", tz="UTC")


def test_deltalake_and_spark_return_the_same_rows_for_every_version(spark, table):
    table.write(events(spark, [("u1", at(1, 8).replace(microsecond=123456), 1.5), ("u2", at(2), None)]))
    table.write(events(spark, [("u3", at(2, 9), 7.0, 3)], SCHEMA + ", n int"))
    table.write(events(spark, [("u4", at(2, 10), 8.0, 4)], SCHEMA + ", n int"), mode="replace_range",
                replace_range=("2024-03-02", "2024-03-03"))

    for version in range(table.version() + 1):
        by_spark = table.read(spark, version=version).toArrow()
        by_deltalake = RsDeltaTable(table.uri, version=version,
                                    storage_options=table.storage_options).to_pyarrow_table()
        assert by_deltalake.schema.names == by_spark.schema.names
        assert (by_deltalake.sort_by("user_id").to_pylist()
                == by_spark.cast(by_deltalake.schema).sort_by("user_id").to_pylist()), version
    assert table.schema() == table.read(spark).schema


def test_history_carries_each_commits_mode_and_range(spark, table):
    table.write(events(spark, [("u1", at(1), 1.0)]))
    table.write(events(spark, [("u1", at(1), 2.0)]), mode="replace_range",
                replace_range=(date(2024, 3, 1), date(2024, 3, 2)))

    newest, oldest = table.history()

    assert (newest["version"], newest[MODE_KEY], newest[RANGE_KEY]) == (1, "replace_range",
                                                                        ["2024-03-01", "2024-03-02"])
    assert (oldest["version"], oldest[MODE_KEY], oldest[RANGE_KEY]) == (0, "append", None)
    assert newest["operation"] == "WRITE"


def test_append_arrow_runs_no_spark_job_and_spark_reads_its_rows_and_utc_dates(spark, table):
    schema = from_arrow_schema(pa.schema([("user_id", pa.string()), ("event_ts", pa.timestamp("us", tz="UTC")),
                                          ("amount", pa.float64())]))
    # Instants at the edges of UTC days, one before the epoch: the date is the UTC one.
    times = [datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=timezone.utc), at(1, 0, 0),
             datetime(2024, 3, 1, 23, 59, 59, 999999, tzinfo=timezone.utc)]
    rows = pa.table({"user_id": ["u0", "u1", "u2"], "event_ts": pa.array(times, pa.timestamp("us", tz="UTC")),
                     "amount": [1.0, None, 3.0]})
    group = f"append-arrow-{uuid.uuid4().hex}"
    spark.sparkContext.setJobGroup(group, "test")
    try:
        assert table.append_arrow(rows, schema) == 0  # creates the table
        assert table.append_arrow(rows.slice(0, 1), schema) == 1
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert spark.sparkContext.statusTracker().getJobIdsForGroup(group) == []
    read = table.read(spark).select("user_id", "event_ts", "amount", "event_date")
    utc = [instant.replace(tzinfo=None) for instant in times]  # Spark returns UTC instants as naive datetimes
    assert sorted(tuple(row) for row in read.collect()) == [
        ("u0", utc[0], 1.0, "1969-12-31"), ("u0", utc[0], 1.0, "1969-12-31"),
        ("u1", utc[1], None, "2024-03-01"), ("u2", utc[2], 3.0, "2024-03-01")]


def test_append_arrow_and_a_spark_write_share_one_table(spark, table):
    # The stream appends with deltalake, the batch job replaces ranges with delta-spark.
    table.write(events(spark, [("u1", at(1), 1.0), ("u2", at(2), 2.0)]))
    rows = pa.table({"user_id": ["u3"], "event_ts": pa.array([at(2)], pa.timestamp("us", tz="UTC")),
                     "amount": [3.0]})
    assert table.append_arrow(rows, from_arrow_schema(rows.schema)) == 1
    assert table.write(events(spark, [("u4", at(2), 4.0)]), mode="replace_range",
                       replace_range=(date(2024, 3, 2), date(2024, 3, 3))) == 2
    assert sorted(row.user_id for row in table.read(spark).collect()) == ["u1", "u4"]
    assert [commit[MODE_KEY] for commit in table.history()] == ["replace_range", "append", "append"]


# ---------------------------------------------------------------------- local only
def test_each_file_records_its_row_count_and_min_max_null_statistics(spark, local_table):
    local_table.write(events(spark, [("u1", at(1, 8, 0), 4.0), ("u2", at(1, 9, 30), None),
                                     ("u3", at(1, 10, 0).replace(microsecond=1500), 2.0)]).coalesce(1))

    files = pa.table(RsDeltaTable(local_table.uri).get_add_actions(flatten=True)).to_pylist()

    assert len(files) == 1
    stats = files[0]
    assert (stats["num_records"], stats["null_count.amount"]) == (3, 1)
    assert (stats["min.amount"], stats["max.amount"]) == (2.0, 4.0)
    assert (stats["min.user_id"], stats["max.user_id"]) == ("u1", "u3")
    # Delta keeps milliseconds; a reader widens the max by 1 ms before it skips a file.
    assert stats["min.event_ts"] == at(1, 8, 0)
    assert stats["max.event_ts"] == at(1, 10, 0).replace(microsecond=1000)


def test_a_failed_write_adds_no_version_and_changes_no_row(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0), ("u1", at(2), 2.0)]))
    outside_range = events(spark, [("u1", at(2), 20.0), ("u1", at(5), 5.0)])

    with pytest.raises(LakeError, match="outside replace_range"):
        local_table.write(outside_range, mode="replace_range",
                          replace_range=("2024-03-02", "2024-03-03"))

    assert local_table.version() == 0
    assert_df_equality(local_table.read(spark), expected(spark, [
        ("u1", at(1), 1.0, "2024-03-01"), ("u1", at(2), 2.0, "2024-03-02")]),
        ignore_row_order=True, ignore_nullable=True)


def test_an_empty_first_write_creates_an_empty_table_with_the_schema(spark, local_table):
    version = local_table.write(events(spark, []))

    assert version == 0
    assert local_table.schema() == StructType.fromDDL(WITH_DATE)
    assert local_table.read(spark).count() == 0


def test_an_empty_append_to_an_existing_table_commits_nothing(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0)]))

    assert local_table.write(events(spark, [])) == 0 and local_table.version() == 0


def test_replacing_an_empty_range_by_no_rows_returns_the_current_version(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0)]))
    local_table.write(events(spark, []), mode="replace_range", replace_range=("2024-03-05", "2024-03-06"))
    version = local_table.version()

    assert local_table.write(events(spark, []), mode="replace_range",
                             replace_range=("2024-03-05", "2024-03-06")) == version
    assert local_table.read(spark).count() == 1


def test_changing_a_column_type_is_refused(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0)]))

    with pytest.raises(LakeSchemaError, match="amount"):
        local_table.write(events(spark, [("u1", at(2), "1.0")],
                                 "user_id string, event_ts timestamp, amount string"))
    assert local_table.version() == 0


def test_restore_makes_an_old_version_current_in_a_new_commit(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0)]))
    local_table.write(events(spark, [("u2", at(2), 2.0, 5)], SCHEMA + ", n int"))

    assert local_table.restore(spark, 0) == 2

    assert local_table.schema() == StructType.fromDDL(WITH_DATE)
    assert [row.user_id for row in local_table.read(spark).collect()] == ["u1"]
    assert local_table.history(1)[0]["operation"] == "RESTORE"
    assert local_table.history(1)[0][MODE_KEY] == "restore"
    assert local_table.read(spark, version=1).count() == 2


# ---------------------------------------------------------------------- what the project writes
def test_every_table_the_batch_job_writes_opens_as_a_notebook_user_would_open_it(batch_job_lake, spark):
    """The batch job on a small generated history (with malformed rows: dead letters; the
    session's ``batch_job_lake``, tests/conftest.py), then each table it wrote, opened with
    delta-spark's own two entry points and nothing of ours."""
    from delta.tables import DeltaTable

    from plumbing.event_tables import bronze_table, dead_letter_table
    from plumbing.feature_stats import statistics_table
    from transformations.catalog import FEATURE_TABLES
    from transformations.schemas import EVENT_TYPES

    cfg, results = batch_job_lake
    assert all(result.published for result in results)

    written = [*(table_uri(cfg, name) for name in FEATURE_TABLES),
               *(bronze_table(cfg, event_type).uri for event_type in EVENT_TYPES),
               *(dead_letter_table(cfg, event_type, "batch").uri for event_type in EVENT_TYPES),
               statistics_table(cfg).uri]
    assert sorted(os.listdir(cfg.lake.root)) == sorted(os.path.basename(uri) for uri in written)
    for uri in written:
        rows = spark.read.format("delta").load(uri).count()
        table = DeltaTable.forPath(spark, uri)
        assert table.toDF().count() == rows, uri
        assert rows > 0 or uri.endswith("dead_letter_chargebacks"), uri  # chargebacks are never malformed
        assert table.history().first()["operation"] == "WRITE", uri
        assert table.detail().first()["partitionColumns"] == ["event_date"], uri
