"""Delta Lake tables for the offline store, on a local path or ``s3a://bucket/prefix``.

DataFrames are written and read by delta-spark (``format("delta")``), so a table opens
the same way in a notebook: ``spark.read.format("delta").load(uri)`` or
``delta.tables.DeltaTable.forPath(spark, uri)``. On S3, Spark reaches the table through S3A
(``s3a://``; ``s3://`` is mapped to S3A too, see ``plumbing.spark.s3a_conf``).

Which engine does what (one way per operation):

=====================  ==========================================================================
delta-spark            ``write`` of a DataFrame (append, replace_range), ``read`` (time travel:
                       ``versionAsOf``), ``restore``
``deltalake`` (no JVM)  ``append_arrow``: rows already on the driver (a streaming micro-batch's
                       events and dead letters), appended from this process without a Spark
                       job; ``exists``, ``version``, ``schema``, ``history``: metadata for the
                       places where no JVM runs (serving, ``tessera table history``, Feast's
                       offline store, notebooks' light reads); they read the log only
=====================  ==========================================================================

``append_arrow`` uses ``deltalake``'s writer because a delta-spark append of a few thousand
driver-held rows cost 1-1.7 s (a Spark job, four files, the post-commit snapshot) and a
checkpoint every tenth commit took 16 s on a cold JVM, against 10 ms for ``deltalake``
(measured here, 2,000 rows, local disk). Both writers commit through the same protocol
(an atomic create of ``_delta_log/<version>.json``: a rename on local disks, S3's
conditional PUT on S3), so they may append to one table at once.

``history`` uses ``deltalake`` rather than ``DeltaTable.forPath(...).history()``: delta-spark's
runs a Spark job per call (measured), and every write looks its own commit up in the history.

Layout
    Every table is partitioned by ``event_date`` (``yyyy-MM-dd``), the **UTC date of the
    table's time column** (``event_ts`` by default). The table derives that column itself on
    every write, so it always agrees with the time column; a DataFrame may carry it or not.

Modes
    ``append``           adds the rows.
    ``replace_range``    ``replace_range=(start, end)``, dates, half-open ``[start, end)``: one
                         commit that removes every row of those dates and adds the new ones
                         (delta-spark's ``replaceWhere`` on ``event_date``), so re-running a
                         range leaves no duplicates. Rows outside the range fail the write
                         (Delta checks them while writing) and nothing is committed. An empty
                         DataFrame empties the range.

Schema evolution
    ``mergeSchema``: a column the table does not have yet is added in the same commit; older
    rows read it as null. A write that lacks a table column leaves it null in its rows.
    Changing a column's type is refused (``LakeSchemaError``).

Concurrency
    Delta's optimistic concurrency: a write reads the latest version, writes its files, then
    commits the next version (on S3 through the profile's log store: S3's conditional PUT).
    If another commit took that version, delta-spark checks the two for a conflict and
    retries on the newer version when there is none: concurrent appends both land. Two
    replaces of a common date conflict: the loser gets ``LakeConflictError`` and nothing of
    its write is in the table (its data files, never referenced by the log, are left for
    VACUUM). A failed write adds no version.

Commit metadata
    Each commit carries Delta's ``userMetadata``: a JSON object with the write id, the mode
    and the range (``WRITE_ID_KEY``, ``MODE_KEY``, ``RANGE_KEY``). ``history`` returns those
    keys in each commit's dict; ``DESCRIBE HISTORY`` shows them in the userMetadata column.

Empty writes
    ``append`` of no rows commits nothing and returns the current version, except when the
    table does not exist yet: then it is created empty, with the DataFrame's schema, so
    readers can rely on it. ``replace_range`` commits whenever it changes something (it
    empties the range); replacing an empty range by no rows changes nothing, and delta-spark
    commits nothing: the current version is returned.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import delta.exceptions as delta_errors
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, write_deltalake
from deltalake import DeltaTable as RsDeltaTable
from deltalake.exceptions import CommitFailedError, SchemaMismatchError, TableNotFoundError
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType, TimestampType

from plumbing.config import Config

# Not used here: notebooks/01 imports it from this module.
from plumbing.storage import filesystem_and_root  # noqa: F401
from transformations.times import as_utc, utc_midnight

WriteMode = Literal["append", "replace_range"]
DateLike = date | str
TimeLike = datetime | date | str

# Keys of our own entries in a commit's userMetadata (a JSON object), returned by history().
WRITE_ID_KEY = "tesseraWriteId"
MODE_KEY = "tesseraMode"
RANGE_KEY = "tesseraRange"
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
# A commit's timestamp is its writer's clock: the look-up of a write's own commit stops at
# commits older than the write by more than this.
COMMIT_CLOCK_SKEW_MS = 60_000

# delta-spark's optimistic-concurrency conflicts, as its Python client raises them.
_CONFLICTS = (delta_errors.ConcurrentAppendException, delta_errors.ConcurrentDeleteReadException,
              delta_errors.ConcurrentDeleteDeleteException, delta_errors.MetadataChangedException,
              delta_errors.ConcurrentWriteException, delta_errors.ProtocolChangedException,
              delta_errors.ConcurrentTransactionException,
              delta_errors.DeltaConcurrentModificationException)
# RESTORE takes its userMetadata from the session only: one restore at a time sets it.
_SESSION_METADATA_LOCK = threading.Lock()


class LakeError(RuntimeError):
    """A lake table operation failed; the message says which table and why."""


class LakeConflictError(LakeError):
    """A concurrent writer committed a conflicting change first; nothing of this write is in the table."""


class LakeSchemaError(LakeError):
    """The DataFrame does not fit the table's schema (e.g. a column changed type)."""


def table_uri(cfg: Config, name: str) -> str:
    """Where table ``name`` lives: ``<cfg.lake.root>/<name>`` (a local path or s3a://...)."""
    return f"{cfg.lake.root.rstrip('/')}/{name}"


class LakeTable:
    """One Delta table of the offline store. Cheap to create: it holds no snapshot."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None, *,
                 time_column: str = "event_ts", partition_column: str = "event_date"):
        is_remote = "://" in uri
        self.uri = uri.rstrip("/") if is_remote else os.path.abspath(uri)
        self.storage_options = dict(storage_options or {})
        self.time_column = time_column
        self.partition_column = partition_column

    @classmethod
    def for_config(cls, cfg: Config, name: str, *, time_column: str = "event_ts") -> LakeTable:
        return cls(table_uri(cfg, name), cfg.storage_options(), time_column=time_column)

    def __repr__(self) -> str:
        return f"LakeTable({self.uri!r})"

    # ------------------------------------------------------------------ metadata (deltalake)
    def exists(self) -> bool:
        return RsDeltaTable.is_deltatable(self.uri, storage_options=self.storage_options)

    def version(self) -> int:
        return self._log().version()

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit infos, newest first: version, timestamp (ms), operation, and our write id,
        mode and range (``WRITE_ID_KEY``, ``MODE_KEY``, ``RANGE_KEY``, None when absent)."""
        commits = self._log().history(limit)
        for commit in commits:
            commit.update(dict.fromkeys((WRITE_ID_KEY, MODE_KEY, RANGE_KEY)))
            commit.update(_parse_user_metadata(commit.get("userMetadata")))
        return commits

    def schema(self, version: int | None = None) -> StructType:
        """The Spark schema of the table (as ``read`` returns it), at ``version`` or the latest."""
        return from_arrow_schema(pa.schema(self._log(version).schema().to_arrow()))

    def read_arrow(self, filter: pc.Expression | None = None) -> pa.Table:
        """The latest version's rows matching ``filter``, read by ``deltalake`` (no Spark):
        for small tables read from processes without a JVM."""
        return self._log().to_pyarrow_dataset().to_table(filter=filter)

    def _log(self, version: int | None = None) -> RsDeltaTable:
        """The table's log at ``version`` (or the latest), read by ``deltalake``."""
        try:
            return RsDeltaTable(self.uri, version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            raise LakeError(f"no Delta table at {self.uri}") from None

    # ------------------------------------------------------------------ writes (delta-spark)
    def write(self, df: DataFrame, mode: WriteMode = "append",
              replace_range: tuple[DateLike, DateLike] | None = None) -> int:
        """Write ``df`` in one commit and return the table version that holds it."""
        date_range = _check_mode(mode, replace_range)
        if date_range is None and self.exists() and df.isEmpty():
            return self.version()  # an empty append commits nothing
        return self._write(self._with_partition_column(df), mode, date_range)

    def append_arrow(self, rows: pa.Table, schema: StructType) -> int:
        """Append Arrow ``rows`` (the columns of ``schema``) in one commit; return its version.

        For small appends whose rows are already on the driver (a streaming micro-batch):
        ``deltalake`` writes them from this process, no Spark job. A column the table does
        not have yet is added (as ``write``'s ``mergeSchema``).
        """
        if rows.num_rows == 0 and self.exists():
            return self.version()
        data = rows.select(schema.fieldNames()).cast(to_arrow_schema(schema, timezone="UTC"))
        data = data.append_column(self.partition_column, _utc_dates(data.column(self.time_column)))
        write_id, started_ms = uuid.uuid4().hex, int(time.time() * 1000)
        metadata = _user_metadata(write_id, "append", None)
        try:
            write_deltalake(self.uri, data, mode="append", partition_by=[self.partition_column],
                            schema_mode="merge", storage_options=self.storage_options,
                            commit_properties=CommitProperties(custom_metadata={"userMetadata": metadata}))
        except CommitFailedError as error:
            raise LakeConflictError(f"{self}: append conflicts with a concurrent commit; nothing of it "
                                    f"was committed. {_first_line(error)}") from error
        except SchemaMismatchError as error:
            raise LakeSchemaError(f"{self}: the rows change a column's type: {_first_line(error)}") from error
        return self._committed_version(write_id, started_ms)

    def restore(self, spark: SparkSession, version: int) -> int:
        """Make ``version``'s content (files and schema) current again in a NEW commit (Delta
        RESTORE) and return that commit's version. History is kept: every version, the
        restored-over ones included, stays readable by time travel."""
        from delta.tables import DeltaTable

        write_id = uuid.uuid4().hex
        metadata = _user_metadata(write_id, "restore", f"version {version}")
        with _SESSION_METADATA_LOCK:
            spark.conf.set(USER_METADATA_CONF, metadata)
            started_ms = int(time.time() * 1000)
            try:
                with self._errors("restore"):
                    DeltaTable.forPath(spark, self.uri).restoreToVersion(version)
            finally:
                spark.conf.unset(USER_METADATA_CONF)
        return self._committed_version(write_id, started_ms)

    def _with_partition_column(self, df: DataFrame) -> DataFrame:
        fields = {f.name: f.dataType for f in df.schema.fields}
        if not isinstance(fields.get(self.time_column), TimestampType):
            raise LakeSchemaError(f"{self}: the DataFrame needs a timestamp column "
                                  f"{self.time_column!r} (got {fields.get(self.time_column)}); "
                                  f"its UTC date partitions the table")
        # Whole days since the epoch from the instant itself: independent of the session time zone.
        days = F.floor(F.unix_micros(F.col(self.time_column)) / 86_400_000_000).cast("int")
        return df.withColumn(self.partition_column, F.date_from_unix_date(days).cast("string"))

    def _write(self, df: DataFrame, mode: WriteMode, date_range: tuple[str, str] | None) -> int:
        write_id = uuid.uuid4().hex
        started_ms = int(time.time() * 1000)
        writer = (df.write.format("delta").partitionBy(self.partition_column)
                  .option("mergeSchema", "true")
                  .option("userMetadata", _user_metadata(write_id, mode, list(date_range) if date_range else None)))
        with self._errors(mode, date_range):
            if date_range is None:
                writer.mode("append").save(self.uri)
            else:
                start, end = date_range
                in_range = f"{self.partition_column} >= '{start}' AND {self.partition_column} < '{end}'"
                writer.mode("overwrite").option("replaceWhere", in_range).save(self.uri)
        return self._committed_version(write_id, started_ms)

    def _errors(self, mode: str, date_range: tuple[str, str] | None = None) -> _DeltaErrors:
        return _DeltaErrors(self, mode, date_range)

    def _committed_version(self, write_id: str, started_ms: int) -> int:
        """The version of the commit carrying ``write_id``: usually the newest, unless other
        writers committed since. Read from the log's newest commits (deltalake: no Spark job).

        A write that changed nothing (a replace of an empty range by no rows) has no commit:
        delta-spark skips it. Then the search ends at the commits older than the write, and
        the version is the one the table already had.
        """
        limit = 1
        while True:
            commits = self._log().history(limit)
            for commit in commits:
                if _parse_user_metadata(commit.get("userMetadata")).get(WRITE_ID_KEY) == write_id:
                    return commit["version"]
            older = [c for c in commits if c.get("timestamp", 0) < started_ms - COMMIT_CLOCK_SKEW_MS]
            if older or len(commits) < limit:
                return commits[0]["version"]
            limit *= 8

    # ------------------------------------------------------------------ read (delta-spark)
    def read(self, spark: SparkSession, version: int | None = None,
             start: TimeLike | None = None, end: TimeLike | None = None) -> DataFrame:
        """The table (at ``version``, else the latest) restricted to ``start <= time < end``.

        ``start``/``end`` are datetimes (naive ones are UTC), dates (midnight UTC) or ISO
        strings; either may be omitted. Only the files of the dates in range are read
        (delta-spark prunes the ``event_date`` partitions).
        """
        time_range = _TimeRange.of(start, end)
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        with self._errors("read"):
            df = reader.load(self.uri)
        df = time_range.filter_dates(df, self.partition_column)
        return time_range.filter_times(df, self.time_column)


@dataclass
class _DeltaErrors:
    """Turns delta-spark's errors into the project's: conflicts, schema, range, missing table."""

    table: LakeTable
    mode: str
    date_range: tuple[str, str] | None

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> Literal[False]:  # never swallows: raises its own or lets go
        if error is None:
            return False
        if isinstance(error, _CONFLICTS):
            raise LakeConflictError(f"{self.table}: {self.mode} conflicts with a concurrent commit; "
                                    f"nothing of it was committed. {_first_line(error)}") from error
        if not isinstance(error, AnalysisException):
            return False
        message = str(error)
        if "DELTA_REPLACE_WHERE_MISMATCH" in message:
            start, end = self.date_range or ("?", "?")
            raise LakeError(f"{self.table}: a row is outside replace_range [{start}, {end}); nothing "
                            f"was committed. {_first_line(error)}") from error
        if "DELTA_FAILED_TO_MERGE_FIELDS" in message or "DELTA_MERGE_INCOMPATIBLE_DATATYPE" in message:
            raise LakeSchemaError(f"{self.table}: the DataFrame changes a column's type: "
                                  f"{_first_line(error)}") from error
        if "DELTA_MISSING_DELTA_TABLE" in message or "PATH_NOT_FOUND" in message or "not a Delta table" in message:
            raise LakeError(f"no Delta table at {self.table.uri}") from error
        return False


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _user_metadata(write_id: str, mode: str, described_range: Any) -> str:
    """A commit's userMetadata: our write id, mode and range as a JSON object."""
    return json.dumps({WRITE_ID_KEY: write_id, MODE_KEY: mode, RANGE_KEY: described_range})


def _parse_user_metadata(value: Any) -> dict[str, Any]:
    """Our keys from a commit's userMetadata (a JSON object); {} for anything else."""
    if not isinstance(value, str):
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return {key: parsed.get(key) for key in (WRITE_ID_KEY, MODE_KEY, RANGE_KEY)} if isinstance(parsed, dict) else {}


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


# ---------------------------------------------------------------------- helpers
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


def _utc_dates(times: pa.ChunkedArray) -> pa.ChunkedArray:
    """'yyyy-MM-dd' of each instant's UTC date: whole days since the epoch, as the Spark
    path derives it (``_with_partition_column``), independent of any time zone setting."""
    micros = pc.cast(pc.cast(times, pa.timestamp("us", tz="UTC")), pa.int64())
    days = pc.floor(pc.divide(pc.cast(micros, pa.float64()), 86_400_000_000.0))
    return pc.cast(pc.cast(pc.cast(days, pa.int32()), pa.date32()), pa.string())


def _as_utc_datetime(value: TimeLike) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value) if isinstance(value, datetime) else utc_midnight(value)
