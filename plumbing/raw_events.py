"""Reading the raw event history: Parquet files or a Delta table, local or on S3.

History lives under ``<events.history_uri>/<event_type>/`` (``schemas.EVENT_TYPES``), as
the event generator or an upstream ingestion writes it:

- a Delta table (a ``_delta_log`` folder there): read through :class:`plumbing.lake.LakeTable`
  (delta-spark), pruned to the requested dates;
- otherwise Parquet files, in any sub-folders (``date=YYYY-MM-DD/`` or none), read by
  Spark's own Parquet reader, local or on S3 (``s3a://`` and ``s3://`` both go through
  S3A, see ``plumbing.spark.s3a_conf``). The driver lists the files through the same
  Hadoop filesystem and skips the date folders outside the range.

Columns are read by the names of the declared schema; their stored types are kept as they
are (validation, ``transformations.cleaning.validate_typed_events``, decides what does
not fit). One more column, ``source_date``, is the ``date=`` folder a row was filed in
(null without such folders): the day a batch run owns a record by, whatever its
``event_time`` says - a malformed (null or far-future) time must still be caught once,
by the run of the day it was filed under.
"""
from __future__ import annotations

import re
from datetime import datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from plumbing.config import Config
from plumbing.lake import LakeTable
from transformations.schemas import SCHEMAS

EVENT_TIME = "event_time"
SOURCE_DATE = "source_date"
_FILE_PATH = "_file_path"
_DATE_FOLDER = r"date=(\d{4}-\d{2}-\d{2})"


def history_uri(cfg: Config, event_type: str) -> str:
    return f"{cfg.events.history_uri.rstrip('/')}/{event_type}"



def has_history(spark: SparkSession, cfg: Config, event_type: str) -> bool:
    """Whether there is any history of ``event_type`` at all: a Delta table or a Parquet file."""
    uri = history_uri(cfg, event_type)
    return LakeTable(uri, cfg.storage_options(uri), time_column=EVENT_TIME).exists() or bool(_parquet_files(spark, uri))

def read_history(spark: SparkSession, cfg: Config, event_type: str,
                 start: datetime | None = None, end: datetime | None = None) -> DataFrame:
    """The raw events of ``event_type`` with ``start <= event_time < end`` (either optional),
    plus every row filed under a ``date=`` folder of that range whatever its time, plus
    rows with a null time: the malformed ones validation must see.

    Columns: the declared schema's, then ``source_date``.
    """
    uri = history_uri(cfg, event_type)
    columns = [*SCHEMAS[event_type].fieldNames(), SOURCE_DATE]
    table = LakeTable(uri, cfg.storage_options(uri), time_column=EVENT_TIME)
    if table.exists():
        return (table.read(spark, start=start, end=end)
                .withColumn(SOURCE_DATE, F.lit(None).cast("string")).select(*columns))

    first_day = start.date().isoformat() if start else None
    last_day = end.date().isoformat() if end else None
    files = [path for path in _parquet_files(spark, uri)
             if _may_hold(_folder_date(path), first_day, last_day)]
    if not files:
        raise FileNotFoundError(f"no Parquet files or Delta table under {uri} for [{start}, {end}): generate "
                                f"history first (tessera generate history) or point events.history_uri elsewhere")
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


def _parquet_files(spark: SparkSession, uri: str) -> list[str]:
    """The Parquet files under ``uri`` (recursively), listed on the driver by the Hadoop
    filesystem Spark reads them with (S3A on S3: one paged listing of the prefix)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None  # set on the driver, where this runs
    root = jvm.org.apache.hadoop.fs.Path(uri)
    filesystem = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    try:
        listing = filesystem.listFiles(root, True)
    except Exception as error:  # py4j wraps java.io.FileNotFoundException
        if "FileNotFoundException" in str(error):
            return []
        raise
    files = []
    while listing.hasNext():
        path = listing.next().getPath()
        name = path.getName()
        if name.endswith(".parquet") and not name.startswith((".", "_")):
            files.append(path.toString())
    return sorted(files)
