"""The one place a SparkSession is built. Jobs and tests call :func:`get_spark`."""
from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from plumbing.config import Config


def get_spark(cfg: Config, app_name: str) -> SparkSession:
    """Return the session for ``app_name`` configured from ``cfg.spark``.

    Defaults suit a 2-core machine: few shuffle partitions, UTC session time zone (all
    event times are instants; windows are cut in UTC), Arrow for pandas exchange, quiet
    logs, no UI unless asked. Under ``spark-submit`` the master given on the command line
    wins over the profile's.
    """
    # Python workers must run the interpreter that has this project's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(f"tessera-{app_name}")
        .config("spark.driver.memory", cfg.spark.driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
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
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.warehouse.dir", str(cfg.data_dir / "spark-warehouse"))
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={cfg.data_dir / 'derby'}")
        # Streaming state in RocksDB keeps large per-entity state off the JVM heap.
        .config("spark.sql.streaming.stateStore.providerClass",
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
    )
    if "SPARK_ENV_LOADED" not in os.environ:  # not under spark-submit: the profile decides
        builder = builder.master(cfg.spark.master)
    for key, value in cfg.spark.extra_conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark
