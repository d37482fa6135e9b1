"""Reading the raw event history: Parquet files or a Delta table, local or on S3.

History lives under ``<events.history_uri>/<event_type>/`` (``schemas.EVENT_TYPES``), as
the event generator or an upstream ingestion writes it:

- a Delta table (a ``_delta_log`` folder there): read through :class:`plumbing.lake.LakeTable`,
  pruned to the requested dates;
- otherwise Parquet files, in any sub-folders (``date=YYYY-MM-DD/`` or none). Local
  folders are read by Spark's own Parquet reader. Spark here cannot open ``s3://`` (no
  hadoop-aws jar), so for S3 each Spark task opens one file through ``pyarrow.fs``
  inside ``mapInArrow``: still parallel, still on the executors.

Columns are read by the names of the declared schema; their stored types are kept as they
are (validation, ``transformations.cleaning.validate_typed_events``, decides what does
not fit). One more column, ``source_date``, is the ``date=`` folder a row was filed in
(null without such folders): the day a batch run owns a record by, whatever its
``event_time`` says - a malformed (null or far-future) time must still be caught once,
by the run of the day it was filed under.
"""
from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from plumbing.config import Config
from plumbing.lake import LakeTable, filesystem_and_root
from transformations.schemas import SCHEMAS

EVENT_TIME = "event_time"
SOURCE_DATE = "source_date"
_FILE_PATH = "_file_path"
_DATE_FOLDER = r"date=(\d{4}-\d{2}-\d{2})"


def history_uri(cfg: Config, event_type: str) -> str:
    return f"{cfg.events.history_uri.rstrip('/')}/{event_type}"


def read_history(spark: SparkSession, cfg: Config, event_type: str,
                 start: datetime | None = None, end: datetime | None = None) -> DataFrame:
    """The raw events of ``event_type`` with ``start <= event_time < end`` (either optional),
    plus every row filed under a ``date=`` folder of that range whatever its time, plus
    rows with a null time: the malformed ones validation must see.

    Columns: the declared schema's, then ``source_date``.
    """
    uri = history_uri(cfg, event_type)
    filesystem, root = filesystem_and_root(uri, cfg.storage_options(uri))
    columns = [*SCHEMAS[event_type].fieldNames(), SOURCE_DATE]
    if filesystem.get_file_info(f"{root}/_delta_log").type == pafs.FileType.Directory:
        table = LakeTable(uri, cfg.storage_options(uri), time_column=EVENT_TIME)
        return (table.read(spark, start=start, end=end)
                .withColumn(SOURCE_DATE, F.lit(None).cast("string")).select(*columns))

    first_day = start.date().isoformat() if start else None
    last_day = end.date().isoformat() if end else None
    files = [path for path in _parquet_files(filesystem, root)
             if _may_hold(_folder_date(path), first_day, last_day)]
    if not files:
        raise FileNotFoundError(f"no Parquet files or Delta table under {uri} for [{start}, {end}): generate "
                                f"history first (tessera generate history) or point events.history_uri elsewhere")
    if "://" in uri:
        df = _read_on_executors(spark, filesystem, files)
    else:
        # recursiveFileLookup: date=... folders are just folders here, source_date comes from the path.
        df = (spark.read.option("recursiveFileLookup", "true").parquet(*files)
              .withColumn(_FILE_PATH, F.col("_metadata.file_path")))
    df = df.withColumn(SOURCE_DATE, F.nullif(F.regexp_extract(F.col(_FILE_PATH), _DATE_FOLDER, 1), F.lit("")))
    in_range = F.col(EVENT_TIME).isNull()
    time_ok = F.lit(True)
    if start is not None:
        time_ok &= F.col(EVENT_TIME) >= F.lit(start)
    if end is not None:
        time_ok &= F.col(EVENT_TIME) < F.lit(end)
    in_range |= time_ok
    if first_day and last_day:
        in_range |= F.col(SOURCE_DATE).between(F.lit(first_day), F.lit(last_day))
    return df.where(in_range).select(*columns)


def _folder_date(path: str) -> str | None:
    match = re.search(_DATE_FOLDER, path)
    return match.group(1) if match else None


def _may_hold(folder_date: str | None, first_day: str | None, last_day: str | None) -> bool:
    """Skip files in date folders outside the range; files without one may hold anything."""
    if folder_date is None:
        return True
    return (first_day is None or folder_date >= first_day) and (last_day is None or folder_date <= last_day)


def _parquet_files(filesystem: pafs.FileSystem, root: str) -> list[str]:
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return sorted(info.path for info in filesystem.get_file_info(selector)
                  if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                  and not info.base_name.startswith((".", "_")))


def _read_on_executors(spark: SparkSession, filesystem: pafs.FileSystem, files: list[str]) -> DataFrame:
    with filesystem.open_input_file(files[0]) as first:
        arrow_schema = pq.read_schema(first)
    read_task = functools.partial(_read_task, filesystem=filesystem, files=files, arrow_schema=arrow_schema)
    # One task per file: row i tells its task to read files[i].
    output_schema = from_arrow_schema(arrow_schema.append(pa.field(_FILE_PATH, pa.string())))
    return spark.range(0, len(files), numPartitions=len(files)).mapInArrow(read_task, output_schema)


def _read_task(row_ids: Iterator[pa.RecordBatch], *, filesystem: pafs.FileSystem, files: list[str],
               arrow_schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for ids in row_ids:
        for index in ids.column("id").to_pylist():
            with filesystem.open_input_file(files[index]) as source:
                for batch in pq.ParquetFile(source).iter_batches(batch_size=64 * 1024):
                    batch = batch.cast(arrow_schema) if batch.schema != arrow_schema else batch
                    path = pa.array([files[index]] * batch.num_rows, pa.string())
                    yield pa.RecordBatch.from_arrays([*batch.columns, path],
                                                     names=[*arrow_schema.names, _FILE_PATH])
