"""Delta Lake tables for the offline store, on a local path or ``s3://bucket/prefix``,
without any JVM jar (see "Storage: Delta Lake without JVM downloads" in ARCHITECTURE.md).

Layout
    Every table is partitioned by ``event_date`` (``yyyy-MM-dd``), the **UTC date of the
    table's time column** (``event_ts`` by default). The table derives that column itself on
    every write, so it always agrees with the time column; a DataFrame may carry it or not.
    Files live under ``<table>/event_date=<date>/part-<write id>-<uuid>.parquet``.

Write (``LakeTable.write``, writer ``arrow``, the default)
    1. The driver reads the table's current snapshot (if any) and checks the DataFrame's
       schema against it (a known column must keep its type).
    2. Spark repartitions the rows by ``event_date`` and sorts each task's rows by it; in
       ``mapInArrow`` each executor task writes Parquet files through ``pyarrow.fs`` (local
       disk or S3) and yields one small record per file: path, size, partition value, row
       count and min/max/null-count statistics.
    3. The driver collects only those records and commits ONE Delta transaction with the
       ``deltalake`` package. Data never passes through the driver.

    A file becomes part of the table only through the log, so files of a failed write are
    never visible; they are also deleted (best effort) when the Spark job or the commit fails.
    ``write`` is ``stage(df).commit()``: a caller may stage the files, check them, then
    ``commit()`` or ``abort()`` (which deletes them).

Modes
    ``append``           adds the rows.
    ``replace_range``    ``replace_range=(start, end)``, dates, half-open ``[start, end)``:
                         removes every file of the dates in the range and adds the new rows in
                         the same commit, so re-running a range leaves no duplicates. Rows
                         outside the range fail the write. An empty DataFrame empties the range.

Schema evolution
    A column the table does not have yet is added first in a small schema-only commit (ALTER
    ADD COLUMNS), then the data is committed: files written before read it back as null. A
    write that lacks a table column leaves it null in its rows. Changing a column's type is
    refused (``LakeSchemaError``). All columns are nullable in the table.

Concurrency
    Commits use Delta's optimistic concurrency (put-if-absent of the next log entry, on S3
    through a conditional PUT). When another commit took the version first, ``deltalake``
    checks the two for a conflict and, if there is none, retries on the newer version (at most
    ``COMMIT_RETRIES`` times). Concurrent appends never conflict. Two replaces touching a
    common date do, even when the range held no data (each replace also records one Delta
    ``txn`` action per date it replaces). A conflict (also: a concurrent schema change, or two
    writers creating the table) raises ``LakeConflictError`` after deleting this write's
    files; the table stays as the winner left it.

Empty writes
    ``append`` of an empty DataFrame commits nothing and returns the current version, except
    when the table does not exist yet: then it is created empty, with the DataFrame's schema,
    so readers can rely on it. ``replace_range`` always commits (it empties the range).

Reads (``LakeTable.read``)
    The snapshot's file list (at ``version`` for time travel) comes from ``deltalake``, pruned
    to the dates of the requested time range; the rows are then filtered to the exact
    ``[start, end)`` on the time column. Local tables are read by Spark's own Parquet reader.
    Spark here cannot read ``s3://`` (no hadoop-aws jar), so for S3 tables each Spark task
    reads one data file through ``pyarrow.fs`` inside ``mapInArrow``: still parallel, still
    on the executors.

Writer ``native`` (``cfg.lake.writer``) uses Spark's ``format("delta")`` for clusters that
ship the delta-spark (and hadoop-aws) jars; this machine has none, so that branch is untested
here. Metadata calls (version, history, schema) use ``deltalake`` for both writers.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator, Literal
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.transaction import (
    AddAction,
    CommitProperties,
    Transaction,
    create_table_with_add_actions,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from plumbing.config import Config

WriteMode = Literal["append", "replace_range"]
DateLike = date | str
TimeLike = datetime | date | str

# Rows buffered per Parquet row group, and rows per file before a task starts a new file.
ROW_GROUP_ROWS = 256 * 1024
MAX_ROWS_PER_FILE = 4 * ROW_GROUP_ROWS
# Commit attempts on newer versions when concurrent commits do not conflict with ours.
COMMIT_RETRIES = 10
# Keys of our own entries in a commit's commitInfo (visible in history()).
WRITE_ID_KEY = "tesseraWriteId"
MODE_KEY = "tesseraMode"
RANGE_KEY = "tesseraRange"

# What each executor task yields per Parquet file it wrote: the Delta "add" action's fields.
_WRITTEN_FILE_SCHEMA = StructType([
    StructField("path", StringType()),
    StructField("size_bytes", LongType()),
    StructField("partition_value", StringType()),
    StructField("modification_time_ms", LongType()),
    StructField("stats", StringType()),
])
_WRITTEN_FILE_ARROW_SCHEMA = to_arrow_schema(_WRITTEN_FILE_SCHEMA)


class LakeError(RuntimeError):
    """A lake table operation failed; the message says which table and why."""


class LakeConflictError(LakeError):
    """A concurrent writer committed a conflicting change first; nothing of this write remains."""


class LakeSchemaError(LakeError):
    """The DataFrame does not fit the table's schema (e.g. a column changed type)."""


def table_uri(cfg: Config, name: str) -> str:
    """Where table ``name`` lives: ``<cfg.lake.root>/<name>`` (a local path or s3://...)."""
    return f"{cfg.lake.root.rstrip('/')}/{name}"


class LakeTable:
    """One Delta table of the offline store. Cheap to create: it holds no snapshot."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None, *,
                 time_column: str = "event_ts", partition_column: str = "event_date",
                 writer: Literal["arrow", "native"] = "arrow"):
        is_remote = "://" in uri
        self.uri = uri.rstrip("/") if is_remote else os.path.abspath(uri)
        self.storage_options = dict(storage_options or {})
        self.time_column = time_column
        self.partition_column = partition_column
        self.writer = writer

    @classmethod
    def for_config(cls, cfg: Config, name: str, *, time_column: str = "event_ts") -> LakeTable:
        return cls(table_uri(cfg, name), cfg.storage_options(), time_column=time_column,
                   writer=cfg.lake.writer)

    def __repr__(self) -> str:
        return f"LakeTable({self.uri!r})"

    # ------------------------------------------------------------------ metadata
    def exists(self) -> bool:
        return DeltaTable.is_deltatable(self.uri, storage_options=self.storage_options)

    def version(self) -> int:
        return self._delta_table().version()

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit infos, newest first: version, timestamp, operation, our write id/mode/range.

        deltalake numbers them back from the latest version: exact unless a commit lands
        during the call.
        """
        return self._delta_table().history(limit)

    def restore(self, version: int) -> int:
        """Make ``version``'s content (files and schema) current again in a NEW commit (Delta
        RESTORE) and return that commit's version. History is kept: every version, the
        restored-over ones included, stays readable by time travel."""
        table = self._delta_table()
        table.restore(version, commit_properties=CommitProperties(
            custom_metadata={MODE_KEY: "restore", RANGE_KEY: f"version {version}"}))
        return self.version()  # read again: the restore commit is the newest version

    def schema(self, version: int | None = None) -> StructType:
        """The Spark schema of the table (as ``read`` returns it), at ``version`` or the latest."""
        return _spark_schema(self._delta_table(version))

    def _delta_table(self, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.uri, version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            raise LakeError(f"no Delta table at {self.uri}") from None

    # ------------------------------------------------------------------ write
    def write(self, df: DataFrame, mode: WriteMode = "append",
              replace_range: tuple[DateLike, DateLike] | None = None) -> int:
        """Write ``df`` in one commit and return the table version that holds it."""
        if self.writer == "native":
            return self._write_native(df, mode, replace_range)
        return self.stage(df, mode, replace_range).commit()

    def stage(self, df: DataFrame, mode: WriteMode = "append",
              replace_range: tuple[DateLike, DateLike] | None = None) -> StagedWrite:
        """Write the data files of ``df`` (invisible until ``commit()``; ``abort()`` deletes them).

        Staging separately lets a job check what it is about to publish, or commit several
        writers at a chosen moment (as the tests do).
        """
        if self.writer != "arrow":
            raise LakeError("staged writes need lake.writer 'arrow'")
        date_range = _check_mode(mode, replace_range)
        snapshot = self._delta_table() if self.exists() else None
        df = self._with_partition_column(df)
        new_columns = _check_schema(df.schema, snapshot, self)

        write_id = uuid.uuid4().hex
        filesystem, root = filesystem_and_root(self.uri, self.storage_options)
        write_task = functools.partial(
            _write_task_files, filesystem=filesystem, root=root, write_id=write_id,
            partition_column=self.partition_column, date_range=date_range,
            file_schema=_file_arrow_schema(df.schema, self.partition_column))
        # One shuffle puts each date in one task; sorting lets a task write a date's rows as
        # consecutive files with one Parquet writer open at a time.
        by_date = df.repartition(self.partition_column).sortWithinPartitions(self.partition_column)
        try:
            written = by_date.mapInArrow(write_task, _WRITTEN_FILE_SCHEMA).collect()
        except BaseException:
            _delete_files_of_write(filesystem, root, write_id)  # tasks that finished left files
            raise
        files = [AddAction(path=row.path, size=row.size_bytes,
                           partition_values={self.partition_column: row.partition_value},
                           modification_time=row.modification_time_ms, data_change=True,
                           stats=row.stats)
                 for row in written]
        return StagedWrite(table=self, mode=mode, date_range=date_range, write_id=write_id,
                           files=files, df_schema=df.schema, new_columns=new_columns,
                           read_version=snapshot.version() if snapshot else None,
                           filesystem=filesystem, root=root)

    def append_arrow(self, rows: pa.Table, schema: StructType) -> int:
        """Append Arrow ``rows`` (the columns of ``schema``) in one commit, written from this
        process: the same files, statistics and commit as ``write``, without a Spark job.
        For small appends whose rows are already on the driver (a micro-batch): a Spark
        job would cost more than the write itself."""
        snapshot = self._delta_table() if self.exists() else None
        with_dates = StructType([*schema.fields, StructField(self.partition_column, StringType())])
        new_columns = _check_schema(with_dates, snapshot, self)
        # The UTC date of the instant, as _with_partition_column derives it.
        times = rows.column(self.time_column)
        micros = times.cast(pa.timestamp("us", tz=times.type.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False)
        dates = pa.array((micros // 86_400_000_000).astype("datetime64[D]")).cast(pa.string())
        rows = rows.append_column(self.partition_column, dates).sort_by(self.partition_column)
        write_id = uuid.uuid4().hex
        filesystem, root = filesystem_and_root(self.uri, self.storage_options)
        try:
            written = pa.Table.from_batches(list(_write_task_files(
                iter(rows.to_batches()), filesystem=filesystem, root=root, write_id=write_id,
                partition_column=self.partition_column, date_range=None,
                file_schema=_file_arrow_schema(with_dates, self.partition_column))),
                schema=_WRITTEN_FILE_ARROW_SCHEMA).to_pylist()
        except BaseException:
            _delete_files_of_write(filesystem, root, write_id)
            raise
        files = [AddAction(path=row["path"], size=row["size_bytes"],
                           partition_values={self.partition_column: row["partition_value"]},
                           modification_time=row["modification_time_ms"], data_change=True, stats=row["stats"])
                 for row in written]
        return StagedWrite(table=self, mode="append", date_range=None, write_id=write_id, files=files,
                           df_schema=with_dates, new_columns=new_columns,
                           read_version=snapshot.version() if snapshot else None,
                           filesystem=filesystem, root=root).commit()

    def _with_partition_column(self, df: DataFrame) -> DataFrame:
        fields = {f.name: f.dataType for f in df.schema.fields}
        if not isinstance(fields.get(self.time_column), TimestampType):
            raise LakeSchemaError(f"{self}: the DataFrame needs a timestamp column "
                                  f"{self.time_column!r} (got {fields.get(self.time_column)}); "
                                  f"its UTC date partitions the table")
        # Whole days since the epoch from the instant itself: independent of the session time zone.
        days = F.floor(F.unix_micros(F.col(self.time_column)) / 86_400_000_000).cast("int")
        return df.withColumn(self.partition_column, F.date_from_unix_date(days).cast("string"))

    def _write_native(self, df: DataFrame, mode: WriteMode,
                      replace_range: tuple[DateLike, DateLike] | None) -> int:
        """delta-spark's own writer (needs its jars on the cluster); same layout and modes."""
        date_range = _check_mode(mode, replace_range)
        writer = (self._with_partition_column(df).write.format("delta")
                  .partitionBy(self.partition_column).option("mergeSchema", "true"))
        if date_range is None:
            writer.mode("append").save(self.uri)
        else:
            start, end = date_range
            in_range = f"{self.partition_column} >= '{start}' AND {self.partition_column} < '{end}'"
            writer.mode("overwrite").option("replaceWhere", in_range).save(self.uri)
        return self.version()

    # ------------------------------------------------------------------ read
    def read(self, spark: SparkSession, version: int | None = None,
             start: TimeLike | None = None, end: TimeLike | None = None) -> DataFrame:
        """The table (at ``version``, else the latest) restricted to ``start <= time < end``.

        ``start``/``end`` are datetimes (naive ones are UTC), dates (midnight UTC) or ISO
        strings; either may be omitted. Only the files of the dates in range are read.
        """
        time_range = _TimeRange.of(start, end)
        if self.writer == "native":
            reader = spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            # The event_date condition lets delta-spark prune partitions.
            df = time_range.filter_dates(reader.load(self.uri), self.partition_column)
            return time_range.filter_times(df, self.time_column)

        snapshot = self._delta_table(version)
        if snapshot.metadata().partition_columns != [self.partition_column]:
            raise LakeError(f"{self}: expected partitioning by {self.partition_column!r}, "
                            f"found {snapshot.metadata().partition_columns}")
        schema = _spark_schema(snapshot)
        actions = pa.table(snapshot.get_add_actions(flatten=True))
        files = [(unquote(path), day) for path, day in zip(
                     actions.column("path").to_pylist(),
                     actions.column(f"partition.{self.partition_column}").to_pylist())
                 if time_range.may_hold(day)]
        if not files:
            df = spark.createDataFrame([], schema)
        elif "://" in self.uri:
            df = self._read_files_on_executors(spark, files, schema)
        else:
            # basePath makes Spark take event_date from the directory names; the explicit schema
            # keeps it a string and reads columns missing from older files as null. Spark puts
            # partition columns last: select restores the table's column order.
            paths = [f"{self.uri}/{path}" for path, _ in files]
            df = (spark.read.schema(schema).option("basePath", self.uri).parquet(*paths)
                  .select(*schema.fieldNames()))
        return time_range.filter_times(df, self.time_column)

    def _read_files_on_executors(self, spark: SparkSession, files: list[tuple[str, str]],
                                 schema: StructType) -> DataFrame:
        filesystem, root = filesystem_and_root(self.uri, self.storage_options)
        read_task = functools.partial(
            _read_task_files, files=files, filesystem=filesystem, root=root,
            partition_column=self.partition_column,
            arrow_schema=to_arrow_schema(schema, timezone="UTC"))
        # One task per data file: row i of the range tells its task to read files[i].
        return spark.range(0, len(files), numPartitions=len(files)).mapInArrow(read_task, schema)


@dataclass(frozen=True)
class _TimeRange:
    """``start <= time < end`` in UTC (either end open), and the dates that can hold it."""

    start: datetime | None
    end: datetime | None

    @classmethod
    def of(cls, start: TimeLike | None, end: TimeLike | None) -> _TimeRange:
        return cls(_as_utc_datetime(start) if start is not None else None,
                   _as_utc_datetime(end) if end is not None else None)

    @property
    def first_date(self) -> str | None:
        return self.start.date().isoformat() if self.start else None

    @property
    def last_date(self) -> str | None:
        # end is exclusive: an end at midnight does not need that day.
        return (self.end - timedelta(microseconds=1)).date().isoformat() if self.end else None

    def may_hold(self, day: str) -> bool:
        return ((self.first_date is None or day >= self.first_date)
                and (self.last_date is None or day <= self.last_date))

    def filter_dates(self, df: DataFrame, partition_column: str) -> DataFrame:
        if self.first_date:
            df = df.filter(F.col(partition_column) >= self.first_date)
        if self.last_date:
            df = df.filter(F.col(partition_column) <= self.last_date)
        return df

    def filter_times(self, df: DataFrame, time_column: str) -> DataFrame:
        if self.start:
            df = df.filter(F.col(time_column) >= F.lit(self.start))
        if self.end:
            df = df.filter(F.col(time_column) < F.lit(self.end))
        return df


@dataclass
class StagedWrite:
    """Data files written for one write, not yet in the table's log."""

    table: LakeTable
    mode: WriteMode
    date_range: tuple[str, str] | None
    write_id: str
    files: list[AddAction]
    df_schema: StructType
    new_columns: list[StructField]
    read_version: int | None  # the snapshot the write was checked against; None: no table yet
    filesystem: pafs.FileSystem
    root: str
    finished: bool = field(default=False, init=False)

    def commit(self) -> int:
        """Commit the files in one Delta transaction; return its version.

        On failure, files of this write are deleted unless the log shows the commit did land
        (a commit can succeed even when its caller sees an error, e.g. a timed-out request).
        """
        self._finish()
        if not self.files and self.mode == "append" and self.read_version is not None:
            return self.read_version  # nothing to add to an existing table
        try:
            if self.read_version is None:
                self._create_table()
            else:
                self._commit_to_table()
        except Exception as error:
            # If even this look-up fails, the files stay: deleting them could corrupt a table
            # whose commit did land. Unreferenced files are only wasted space (VACUUM removes them).
            version = self._committed_version()
            if version is not None:
                return version
            _delete_files(self.filesystem, self.root, [f.path for f in self.files])
            created_meanwhile = self.read_version is None and self.table.exists()
            if isinstance(error, CommitFailedError) or created_meanwhile:
                raise LakeConflictError(f"{self.table}: {self.mode} conflicts with a concurrent "
                                        f"commit; nothing was written. {error}") from error
            raise
        version = self._committed_version()
        if version is None:
            raise LakeError(f"{self.table}: commit of write {self.write_id} not found in the log")
        return version

    def abort(self) -> None:
        """Delete the staged files; the table is untouched."""
        self._finish()
        _delete_files(self.filesystem, self.root, [f.path for f in self.files])

    def _finish(self) -> None:
        if self.finished:
            raise LakeError(f"write {self.write_id} was already committed or aborted")
        self.finished = True

    def _commit_properties(self) -> CommitProperties:
        replaced_dates = _dates(self.date_range) if self.date_range else []
        return CommitProperties(
            custom_metadata={WRITE_ID_KEY: self.write_id, MODE_KEY: self.mode,
                             RANGE_KEY: list(self.date_range) if self.date_range else None},
            max_commit_retries=COMMIT_RETRIES,
            # One txn action per replaced date: two replaces sharing a date conflict even when
            # neither removes a file (an empty range), so they can never both add their rows.
            app_transactions=[Transaction(app_id=f"replace:{day}", version=time.time_ns())
                              for day in replaced_dates] or None)

    def _create_table(self) -> None:
        table = self.table
        create_table_with_add_actions(
            table.uri, Schema.from_arrow(_table_arrow_schema(self.df_schema)), self.files,
            mode="error", partition_by=[table.partition_column],
            storage_options=table.storage_options, commit_properties=self._commit_properties())

    def _commit_to_table(self) -> None:
        table = self.table
        # The snapshot the write was staged against: commits since then are checked for conflicts.
        snapshot = table._delta_table(self.read_version)
        if self.new_columns:
            delta_fields = Schema.from_arrow(_table_arrow_schema(StructType(self.new_columns))).fields
            snapshot.alter.add_columns(delta_fields)
            snapshot = table._delta_table()  # the data commit builds on the new schema
        if self.mode == "append":
            snapshot.create_write_transaction(
                self.files, mode="append", schema=snapshot.schema(),
                partition_by=[table.partition_column], commit_properties=self._commit_properties())
        else:
            start, end = self.date_range
            snapshot.create_write_transaction(
                self.files, mode="overwrite", schema=snapshot.schema(),
                partition_by=[table.partition_column],
                partition_filters=[(table.partition_column, ">=", start),
                                   (table.partition_column, "<", end)],
                commit_properties=self._commit_properties())

    def _committed_version(self) -> int | None:
        """The version whose commit carries this write's id, or None if none does.

        Reads the log's commit files (``_delta_log/<version>.json``) after the staged snapshot:
        ``DeltaTable.history()`` numbers commits by counting back from a latest version it reads
        separately, which is off while other writers commit.
        """
        version = 0 if self.read_version is None else self.read_version + 1
        while True:
            path = f"{self.root}/_delta_log/{version:020d}.json"
            if self.filesystem.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            with self.filesystem.open_input_stream(path) as commit_file:
                actions = [json.loads(line) for line in commit_file.read().decode().splitlines()]
            if any(action.get("commitInfo", {}).get(WRITE_ID_KEY) == self.write_id
                   for action in actions):
                return version
            version += 1


# ---------------------------------------------------------------------- helpers (driver)
def _check_mode(mode: str, replace_range: tuple[DateLike, DateLike] | None) -> tuple[str, str] | None:
    """Validate mode and range; return the range as ('yyyy-MM-dd', 'yyyy-MM-dd') or None."""
    if mode == "append":
        if replace_range is not None:
            raise ValueError("replace_range is only for mode='replace_range'")
        return None
    if mode != "replace_range":
        raise ValueError(f"mode must be 'append' or 'replace_range', not {mode!r}")
    if replace_range is None:
        raise ValueError("mode='replace_range' needs replace_range=(start_date, end_date)")
    start, end = (date.fromisoformat(d) if isinstance(d, str) else d for d in replace_range)
    if isinstance(start, datetime) or isinstance(end, datetime) or not start < end:
        raise ValueError(f"replace_range must be two dates, start < end (end excluded): "
                         f"{replace_range}")
    return start.isoformat(), end.isoformat()


def _dates(date_range: tuple[str, str]) -> list[str]:
    start, end = (date.fromisoformat(d) for d in date_range)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days)]


def _check_schema(df_schema: StructType, snapshot: DeltaTable | None,
                  table: LakeTable) -> list[StructField]:
    """Refuse changed column types; return the DataFrame's columns the table does not have yet."""
    if snapshot is None:
        return []
    table_types = {f.name.lower(): f.dataType for f in _spark_schema(snapshot).fields}
    new_columns = []
    for column in df_schema.fields:
        known_type = table_types.get(column.name.lower())
        if known_type is None:
            new_columns.append(column)
        elif known_type != column.dataType:
            raise LakeSchemaError(f"{table}: column {column.name!r} is {known_type.simpleString()} in "
                                  f"the table but {column.dataType.simpleString()} in the DataFrame")
    return new_columns


def _spark_schema(snapshot: DeltaTable) -> StructType:
    return from_arrow_schema(pa.schema(snapshot.schema().to_arrow()))


def _table_arrow_schema(schema: StructType) -> pa.Schema:
    """The Arrow schema of a Spark schema, every column nullable (Delta columns are)."""
    arrow = to_arrow_schema(schema, timezone="UTC")
    return pa.schema([f.with_nullable(True) for f in arrow])


def _file_arrow_schema(schema: StructType, partition_column: str) -> pa.Schema:
    """Schema of the Parquet files: the partition column lives in the path, not in the file."""
    return pa.schema([f for f in _table_arrow_schema(schema) if f.name != partition_column])


def _as_utc_datetime(value: TimeLike) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):  # a date: its midnight in UTC
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def filesystem_and_root(uri: str, storage_options: dict[str, str]) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem (picklable, so executors get it) and the table root path in it."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return pafs.LocalFileSystem(), parsed.path if parsed.scheme else uri
    if parsed.scheme not in ("s3", "s3a"):
        raise LakeError(f"unsupported lake URI {uri!r}: use a local path or s3://bucket/prefix")
    options = {key.upper(): value for key, value in storage_options.items()}
    endpoint = options.get("AWS_ENDPOINT_URL")
    endpoint_url = urlparse(endpoint) if endpoint else None
    filesystem = pafs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        session_token=options.get("AWS_SESSION_TOKEN"),
        region=options.get("AWS_REGION"),
        endpoint_override=endpoint_url.netloc if endpoint_url else None,
        scheme=endpoint_url.scheme if endpoint_url else "https")
    return filesystem, f"{parsed.netloc}{parsed.path}".rstrip("/")


def _delete_files(filesystem: pafs.FileSystem, root: str, relative_paths: list[str]) -> None:
    """Best-effort delete: a leftover file is invisible (not in the log), only wasted space."""
    for path in relative_paths:
        try:
            filesystem.delete_file(f"{root}/{path}")
        except OSError:
            pass


def _delete_files_of_write(filesystem: pafs.FileSystem, root: str, write_id: str) -> None:
    """Delete the files a failed Spark job wrote (their names carry the write id)."""
    try:
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        listing = filesystem.get_file_info(selector)
    except OSError:
        return
    _delete_files(filesystem, root, [info.path[len(root) + 1:] for info in listing
                                     if info.type == pafs.FileType.File and write_id in info.base_name])


# ---------------------------------------------------------------------- executor tasks
def _write_task_files(batches: Iterator[pa.RecordBatch], *, filesystem: pafs.FileSystem, root: str,
                      write_id: str, partition_column: str, date_range: tuple[str, str] | None,
                      file_schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Runs in an executor task: write its rows (sorted by date) as Parquet files.

    Yields one record per file written (see _WRITTEN_FILE_SCHEMA).
    """
    current: _ParquetFile | None = None
    for batch in batches:
        dates = batch.column(partition_column)
        if dates.null_count:
            raise ValueError(f"{dates.null_count} rows have a null time: every row needs one")
        days = pc.unique(dates).to_pylist()
        for day in days:
            if date_range and not date_range[0] <= day < date_range[1]:
                raise ValueError(f"a row of {day} is outside replace_range "
                                 f"[{date_range[0]}, {date_range[1]})")
            rows = batch if len(days) == 1 else batch.filter(pc.equal(dates, day))
            rows = rows.drop_columns([partition_column])
            if current is not None and (current.day != day or current.full):
                yield current.close()
                current = None
            if current is None:
                current = _ParquetFile(filesystem, root, partition_column, day, write_id, file_schema)
            current.add(rows)
    if current is not None:
        yield current.close()


class _ParquetFile:
    """One Parquet data file being written by an executor task, with its Delta statistics."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, partition_column: str, day: str,
                 write_id: str, schema: pa.Schema):
        self.day = day
        self.path = f"{partition_column}={day}/part-{write_id}-{uuid.uuid4().hex}.parquet"
        self.schema = schema
        if isinstance(filesystem, pafs.LocalFileSystem):
            filesystem.create_dir(f"{root}/{partition_column}={day}", recursive=True)
        self.sink = filesystem.open_output_stream(f"{root}/{self.path}")
        self.writer = pq.ParquetWriter(self.sink, schema, compression="zstd")
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows = 0
        self.stats = _ColumnStats(schema)

    @property
    def full(self) -> bool:
        return self.rows + self.pending_rows >= MAX_ROWS_PER_FILE

    def add(self, rows: pa.RecordBatch) -> None:
        self.pending.append(rows)
        self.pending_rows += rows.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        # Spark's batches are small (10k rows): buffer them into one large row group.
        rows = pa.Table.from_batches(self.pending).cast(self.schema)
        self.writer.write_table(rows, row_group_size=rows.num_rows)
        self.stats.add(rows)
        self.rows += rows.num_rows
        self.pending, self.pending_rows = [], 0

    def close(self) -> pa.RecordBatch:
        self._flush()
        self.writer.close()
        size = self.sink.tell()
        self.sink.close()  # on S3 this completes the upload
        return pa.RecordBatch.from_pylist([{
            "path": self.path, "size_bytes": size, "partition_value": self.day,
            "modification_time_ms": int(time.time() * 1000),
            "stats": self.stats.to_json(self.rows)}], schema=_WRITTEN_FILE_ARROW_SCHEMA)


class _ColumnStats:
    """Delta file statistics: numRecords, and per flat column minValues/maxValues/nullCount."""

    def __init__(self, schema: pa.Schema):
        self.columns = [f.name for f in schema if not pa.types.is_nested(f.type)]
        self.with_min_max = {f.name for f in schema if _has_min_max(f.type)}
        self.null_count = dict.fromkeys(self.columns, 0)
        self.min: dict[str, Any] = {}
        self.max: dict[str, Any] = {}

    def add(self, rows: pa.Table) -> None:
        for name in self.columns:
            column = rows.column(name)
            self.null_count[name] += column.null_count
            if name not in self.with_min_max:
                continue
            low, high = (value.as_py() for value in pc.min_max(column).values())
            if low is not None:
                self.min[name] = low if name not in self.min else min(self.min[name], low)
                self.max[name] = high if name not in self.max else max(self.max[name], high)

    def to_json(self, num_records: int) -> str:
        # JSON has no NaN/Infinity: such a column gets no min/max (readers then never skip it).
        usable = [n for n in self.min if _is_finite(self.min[n]) and _is_finite(self.max[n])]
        return json.dumps({
            "numRecords": num_records,
            "minValues": {n: _stats_value(self.min[n], round_up=False) for n in usable},
            "maxValues": {n: _stats_value(self.max[n], round_up=True) for n in usable},
            "nullCount": self.null_count})


def _is_finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _stats_value(value: Any, round_up: bool) -> Any:
    """A min or max in Delta's JSON form; timestamps keep milliseconds, rounded outward."""
    if isinstance(value, datetime):
        if round_up and value.microsecond % 1000:
            value += timedelta(microseconds=1000 - value.microsecond % 1000)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, date):
        return value.isoformat()
    return value


def _has_min_max(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
            or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_date(arrow_type)
            or (pa.types.is_timestamp(arrow_type) and arrow_type.tz is not None))


def _read_task_files(row_ids: Iterator[pa.RecordBatch], *, files: list[tuple[str, str]],
                     filesystem: pafs.FileSystem, root: str, partition_column: str,
                     arrow_schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Runs in an executor task: read the data files whose indexes arrive as ``id`` rows."""
    for ids in row_ids:
        for file_index in ids.column("id").to_pylist():
            path, day = files[file_index]
            with filesystem.open_input_file(f"{root}/{path}") as source:
                for batch in pq.ParquetFile(source).iter_batches(batch_size=64 * 1024):
                    yield _conform(batch, arrow_schema, partition_column, day)


def _conform(batch: pa.RecordBatch, schema: pa.Schema, partition_column: str,
             day: str) -> pa.RecordBatch:
    """Shape a file's batch like the table: partition value added, missing (older) columns null."""
    columns = []
    for target in schema:
        if target.name == partition_column:
            columns.append(pa.array([day] * batch.num_rows, target.type))
        elif target.name in batch.schema.names:
            columns.append(batch.column(target.name).cast(target.type))
        else:
            columns.append(pa.nulls(batch.num_rows, target.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
