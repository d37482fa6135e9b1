"""The one place a SparkSession is built. Jobs and tests call :func:`get_spark`.

The JVM parts come from ``.jars/`` (fetched once by ``make setup`` from the pinned
``jars/pom.xml``), so nothing resolves at job start and a job runs offline:

- delta-spark and the Kafka connector (24 MB) go through ``spark.jars``: the driver ships
  them to every executor, on this machine or on a cluster;
- hadoop-aws and the AWS SDK bundle (~660 MB), for profiles with data on S3, go on the
  driver's and executors' class path from the same folder instead: shipping them would
  copy 660 MB into every executor's work folder (measured here: the first s3a read took
  49 s that way, 30 s from the class path). A cluster's image ships them at the same
  path, or sets ``spark.jars.packages`` where it has internet (docs/production.md).
"""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from plumbing.config import REPO_ROOT, Config

JARS_DIR = REPO_ROOT / ".jars"


class SparkSetupError(RuntimeError):
    """A part Spark needs (a jar folder) is missing; the message says how to get it."""


def uses_s3(cfg: Config) -> bool:
    """Whether the profile keeps the lake or the raw history on S3 (s3a:// for Spark)."""
    return any(uri.startswith(("s3://", "s3a://")) for uri in (cfg.lake.root, cfg.events.history_uri))


def jar_paths(cfg: Config, group: str, subfolder: str = "") -> list[str]:
    """The jars of one group in ``.jars/``; a missing group stops with the command that fetches it."""
    folder = JARS_DIR / group
    found = sorted(str(path) for path in (folder / subfolder).glob("*.jar"))
    if not (folder / ".fetched").exists() or not found:
        raise SparkSetupError(
            f"the '{group}' jars are missing from {folder} (profile {cfg.profile} needs them): "
            f"run `make setup` or `bash scripts/fetch_jars.sh {group}` (once, from Maven Central)")
    return found


def s3a_conf(cfg: Config) -> dict[str, str]:
    """Hadoop s3a settings for the profile's endpoint (path-style, keys from the environment).

    ``s3://`` is served by the same S3A filesystem, so a table's URI means one thing to
    Spark, to ``deltalake`` and to Feast whichever scheme a profile spells it with.
    """
    options = cfg.storage_options(cfg.lake.root if cfg.lake.root.startswith(("s3://", "s3a://"))
                                  else cfg.events.history_uri)
    conf = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.endpoint.region": cfg.s3.region,
        "spark.hadoop.fs.s3a.path.style.access": str(bool(cfg.s3.endpoint_url)).lower(),
        # Several drivers append to one table (the batch job and the stream, to bronze):
        # commits go through S3's conditional PUT, so exactly one writer wins each version
        # (jars/logstore; Delta's default S3 store is safe for a single driver only).
        "spark.delta.logStore.s3a.impl": "dev.tessera.delta.S3ConditionalPutLogStore",
        "spark.delta.logStore.s3.impl": "dev.tessera.delta.S3ConditionalPutLogStore",
        "spark.hadoop.fs.s3a.create.conditional.enabled": "true",
    }
    if cfg.s3.endpoint_url:
        conf["spark.hadoop.fs.s3a.endpoint"] = cfg.s3.endpoint_url
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(cfg.s3.endpoint_url.startswith("https")).lower()
    if "AWS_ACCESS_KEY_ID" in options:
        conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = \
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        conf["spark.hadoop.fs.s3a.access.key"] = options["AWS_ACCESS_KEY_ID"]
        conf["spark.hadoop.fs.s3a.secret.key"] = options["AWS_SECRET_ACCESS_KEY"]
    return conf


def get_spark(cfg: Config, app_name: str, console_progress: bool = False) -> SparkSession:
    """Return the session for ``app_name`` configured from ``cfg.spark``.

    Defaults suit a 2-core machine: few shuffle partitions, UTC session time zone (all
    event times are instants; windows are cut in UTC), Arrow for pandas exchange, quiet
    logs, no UI unless asked. Under ``spark-submit`` the master given on the command line
    wins over the profile's. ``console_progress``: Spark's per-stage progress bar on
    stderr, for the long jobs run from a terminal (it applies when this call starts the
    session; a streaming job would print one per micro-batch).
    """
    # Python workers must run the interpreter that has this project's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark_jars = jar_paths(cfg, "spark")
    if uses_s3(cfg):  # the project's S3 log store extends delta-storage: same class loader
        spark_jars += jar_paths(cfg, "s3", subfolder="delta")
    builder = (
        SparkSession.builder.appName(f"tessera-{app_name}")
        .config("spark.jars", ",".join(spark_jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.driver.memory", cfg.spark.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
        # Delta rebuilds a table's file list in this many tasks after every new version
        # (default 50). Measured on a 200k-row table of 96 files: a replace took 45 s at 50 and
        # 14 s at 2, a full read 26 s and 5 s. Delta's own default stays the ceiling.
        .config("spark.databricks.delta.snapshotPartitions", str(min(cfg.spark.shuffle_partitions, 50)))
        .config("spark.default.parallelism", str(cfg.spark.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.adaptive.enabled", "true")
        # Cached DataFrames (the batch job's sources) stay uncompressed: measured on 10M
        # events, gathering the compression statistics cost a quarter of the sources' CPU.
        .config("spark.sql.inMemoryColumnarStorage.compressed", "false")
        # PySpark 4 records the Python call site of every column function for error
        # messages: ~5 extra JVM round trips per call. The streaming job builds each
        # table's plan every micro-batch (~800 calls), where this was ~30 % of the build.
        # Turn it back on through spark.extra_conf when debugging a transformation.
        .config("spark.python.sql.dataFrameDebugging.enabled", "false")
        # Generated classes are cached by their code, 100 by default. The streaming job's
        # micro-batch needs ~60 (classify, three feature tables), plus a few new ones each
        # time for its changing literals, so at 100 every micro-batch compiled ~45 classes
        # again (~0.3 s of CPU) and ran them before the JIT had warmed them.
        .config("spark.sql.codegen.cache.maxEntries", "1000")
        .config("spark.ui.enabled", str(cfg.spark.ui_enabled).lower())
        .config("spark.ui.showConsoleProgress", str(console_progress).lower())
        .config("spark.sql.warehouse.dir", str(cfg.data_dir / "spark-warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={cfg.data_dir / 'derby'}")
    )
    if uses_s3(cfg):
        class_path = ":".join(jar_paths(cfg, "s3"))
        builder = (builder.config("spark.driver.extraClassPath", class_path)
                   .config("spark.executor.extraClassPath", class_path))
        for key, value in s3a_conf(cfg).items():
            builder = builder.config(key, value)
    if "SPARK_ENV_LOADED" not in os.environ:  # not under spark-submit: the profile decides
        builder = builder.master(cfg.spark.master)
    for key, value in cfg.spark.extra_conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark
