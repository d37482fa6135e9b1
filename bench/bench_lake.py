"""Lake write/read throughput: Spark executors write Parquet, the driver commits one Delta version.

    .venv/bin/python bench/bench_lake.py --rows 2000000 --days 30            # local disk
    .venv/bin/python bench/bench_lake.py --rows 2000000 --days 30 --profile s3  # moto S3 (starts it)

Prints, per step, seconds and rows/s: append (a fresh table), replace_range of every day
(re-run of the same data), full read (count + sum, so every row is decoded), and a one-day read.
"""
from __future__ import annotations

import argparse
import time
import uuid
from datetime import date, timedelta

from pyspark.sql import functions as F

from plumbing import services
from plumbing.config import load_config
from plumbing.lake import LakeTable, filesystem_and_root
from plumbing.spark import get_spark

FIRST_DAY = date(2024, 1, 1)
FIRST_DAY_EPOCH_S = 1_704_067_200  # FIRST_DAY 00:00 UTC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100k rows, for a smoke run")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--profile", default="local", choices=["local", "s3"])
    args = parser.parse_args()
    if args.quick:
        args.rows = 100_000

    cfg = load_config(args.profile)
    if args.profile == "s3":
        services.up(cfg, only=["s3"])
    spark = get_spark(load_config("local"), "bench-lake")
    table = LakeTable.for_config(cfg, f"bench/lake_{uuid.uuid4().hex[:8]}")
    seconds_per_row = args.days * 86_400 / args.rows
    events = (spark.range(args.rows)
              .select((F.col("id") % 10_000).cast("string").alias("user_id"),
                      F.timestamp_seconds(F.lit(FIRST_DAY_EPOCH_S) + (F.col("id") * seconds_per_row)
                                          .cast("long")).alias("event_ts"),
                      (F.rand(seed=7) * 100).alias("amount"))
              .cache())
    events.count()  # generate once, outside the timings

    print(f"{args.rows:,} rows over {args.days} days -> {table.uri}")
    timed("append", args.rows, lambda: table.write(events))
    all_days = (FIRST_DAY, FIRST_DAY + timedelta(days=args.days))
    timed("replace_range (all days)", args.rows,
          lambda: table.write(events, mode="replace_range", replace_range=all_days))
    timed("read all (count+sum)", args.rows,
          lambda: table.read(spark).agg(F.count("*"), F.sum("amount")).collect())
    timed("read one day", args.rows // args.days,
          lambda: table.read(spark, start="2024-01-02", end="2024-01-03").count())

    filesystem, root = filesystem_and_root(table.uri, table.storage_options)
    filesystem.delete_dir(root)  # a benchmark table is not worth keeping


def timed(step: str, rows: int, action) -> None:
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    print(f"  {step:28s} {seconds:7.2f} s  {rows / seconds:12,.0f} rows/s")


if __name__ == "__main__":
    main()
