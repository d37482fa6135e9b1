"""Delta lake tables (plumbing.lake) on real local disk and on the real S3 endpoint (moto).

Each test uses its own table: a tmp_path folder, or a unique prefix in bucket tessera-lake.
"""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql.types import StructType

from plumbing.lake import LakeConflictError, LakeSchemaError, LakeTable, filesystem_and_root

SCHEMA = "user_id string, event_ts timestamp, amount double"
WITH_DATE = "user_id string, event_ts timestamp, amount double, event_date string"


def at(day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=timezone.utc)


def events(spark, rows, schema=SCHEMA):
    return spark.createDataFrame(rows, schema)


def expected(spark, rows, schema=WITH_DATE):
    """Rows as the table returns them: with event_date, the UTC date of event_ts."""
    return spark.createDataFrame(rows, schema)


def data_files(table: LakeTable) -> list[str]:
    """Every Parquet file under the table root, whether the log references it or not."""
    filesystem, root = filesystem_and_root(table.uri, table.storage_options)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return sorted(info.path for info in filesystem.get_file_info(selector)
                  if info.path.endswith(".parquet"))


@pytest.fixture(params=["local", "s3"])
def table(request, tmp_path) -> Iterator[LakeTable]:
    if request.param == "local":
        yield LakeTable(str(tmp_path / "txn_features"))
        return
    cfg = request.getfixturevalue("s3_services")  # the real moto endpoint, bucket tessera-lake
    table = LakeTable.for_config(cfg, f"test_lake/{uuid.uuid4().hex[:12]}")
    yield table
    filesystem, root = filesystem_and_root(table.uri, table.storage_options)
    filesystem.delete_dir(root)


@pytest.fixture
def local_table(tmp_path) -> LakeTable:
    return LakeTable(str(tmp_path / "txn_features"))


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
    staged = [table.stage(events(spark, [(f"u{i}", at(2), float(i))])) for i in (1, 2)]

    versions = commit_at_once(staged)

    assert sorted(versions) == [1, 2]
    assert_df_equality(table.read(spark), expected(spark, [
        ("u0", at(1), 0.0, "2024-03-01"), ("u1", at(2), 1.0, "2024-03-02"),
        ("u2", at(2), 2.0, "2024-03-02"),
    ]), ignore_row_order=True, ignore_nullable=True)


def test_concurrent_replaces_of_one_range_one_wins_the_other_gets_a_clean_error(spark, table):
    table.write(events(spark, [("u0", at(1), 0.0)]))  # the replaced range is still empty
    staged = [table.stage(events(spark, [(f"u{i}", at(2), float(i))]), mode="replace_range",
                          replace_range=("2024-03-02", "2024-03-03")) for i in (1, 2)]

    outcomes = commit_at_once(staged)

    winner = next(i for i, outcome in enumerate(outcomes) if outcome == 1)
    loser = staged[1 - winner]
    assert isinstance(outcomes[1 - winner], LakeConflictError)
    assert table.version() == 1
    assert table.read(spark).filter("event_date = '2024-03-02'").count() == 1
    assert not [path for path in data_files(table) if loser.write_id in path]


def test_the_table_is_readable_by_plain_deltalake(spark, table):
    table.write(events(spark, [("u1", at(1), 1.5), ("u2", at(2), None)]))

    arrow = DeltaTable(table.uri, storage_options=table.storage_options).to_pyarrow_table()

    assert arrow.sort_by("user_id").to_pylist() == [
        {"user_id": "u1", "event_ts": at(1), "amount": 1.5, "event_date": "2024-03-01"},
        {"user_id": "u2", "event_ts": at(2), "amount": None, "event_date": "2024-03-02"},
    ]
    assert arrow.schema.field("event_ts").type == pa.timestamp("us", tz="UTC")


def commit_at_once(staged):
    """Commit staged writes from one thread each, released together; return versions or errors."""
    start = threading.Barrier(len(staged))
    outcomes: list = [None] * len(staged)

    def commit(i):
        start.wait()
        try:
            outcomes[i] = staged[i].commit()
        except LakeConflictError as error:
            outcomes[i] = error

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(staged))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


# ---------------------------------------------------------------------- local only
def test_each_file_records_its_row_count_and_min_max_null_statistics(spark, local_table):
    local_table.write(events(spark, [("u1", at(1, 8, 0), 4.0), ("u2", at(1, 9, 30), None),
                                     ("u3", at(1, 10, 0).replace(microsecond=1500), 2.0)]))

    files = pa.table(DeltaTable(local_table.uri).get_add_actions(flatten=True)).to_pylist()

    assert len(files) == 1
    stats = files[0]
    assert (stats["num_records"], stats["null_count.amount"]) == (3, 1)
    assert (stats["min.amount"], stats["max.amount"]) == (2.0, 4.0)
    assert (stats["min.user_id"], stats["max.user_id"]) == ("u1", "u3")
    # Delta keeps milliseconds: the max is rounded up so that it still bounds the data.
    assert stats["min.event_ts"] == at(1, 8, 0)
    assert stats["max.event_ts"] == at(1, 10, 0).replace(microsecond=2000)


def test_a_failed_write_adds_no_version_and_leaves_no_files(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0)]))
    files_before = data_files(local_table)
    outside_range = events(spark, [("u1", at(2), 2.0), ("u1", at(5), 5.0)])

    with pytest.raises(Exception, match="outside replace_range"):
        local_table.write(outside_range, mode="replace_range",
                          replace_range=("2024-03-02", "2024-03-03"))

    assert local_table.version() == 0
    assert data_files(local_table) == files_before


def test_an_aborted_stage_leaves_no_files(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0)]))
    files_before = data_files(local_table)

    local_table.stage(events(spark, [("u2", at(2), 2.0)])).abort()

    assert local_table.version() == 0 and data_files(local_table) == files_before


def test_an_empty_first_write_creates_an_empty_table_with_the_schema(spark, local_table):
    version = local_table.write(events(spark, []))

    assert version == 0
    assert local_table.schema() == StructType.fromDDL(WITH_DATE)
    assert local_table.read(spark).count() == 0


def test_an_empty_append_to_an_existing_table_commits_nothing(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0)]))

    assert local_table.write(events(spark, [])) == 0 and local_table.version() == 0


def test_changing_a_column_type_is_refused(spark, local_table):
    local_table.write(events(spark, [("u1", at(1), 1.0)]))

    with pytest.raises(LakeSchemaError, match="amount"):
        local_table.write(events(spark, [("u1", at(2), "1.0")],
                                 "user_id string, event_ts timestamp, amount string"))
