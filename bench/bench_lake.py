"""Lake throughput on a feature-table-shaped table: delta-spark writes and reads it, and the
``deltalake`` package (no JVM) reads the same table, same version, in the same run.

    .venv/bin/python bench/bench_lake.py                                   # 500k rows, 30 days, local disk
    .venv/bin/python bench/bench_lake.py --profile s3 --out /tmp/lake-s3   # moto S3 through s3a (starts it)

Prints, per step, seconds and rows/s: append (a fresh table), replace_range of every day
(re-run of the same data), full read (count + sum, so every row is decoded), and a one-day
read; the reads once by Spark (``LakeTable.read``) and once by ``deltalake``
(``DeltaTable.to_pyarrow_table``, the way serving, Feast and notebooks read); beside them the
former writer's figures (pyarrow Parquet on the executors + a ``deltalake`` commit, removed
when the lake moved to delta-spark), last measured at the same size (FORMER_BRIDGE).
Results: bench/results/lake.json and lake.md (the README's section), or in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.compute as pc
from deltalake import DeltaTable
from pyspark.sql import functions as F

from plumbing import services
from plumbing.config import load_config
from plumbing.lake import LakeTable
from plumbing.spark import get_spark
from plumbing.storage import delete_tree

FIRST_DAY = date(2024, 1, 1)
FIRST_DAY_EPOCH_S = 1_704_067_200  # FIRST_DAY 00:00 UTC
RESULTS = Path(__file__).resolve().parent / "results"
FEATURES = 10  # double columns beside user_id, event_ts, amount: a feature table's shape

# The former bridge (commit af2a704's bench_lake.py, same table shape as this one), run once
# on this machine on 2026-12-03 before it was removed: {(profile, rows, days): {step: s}}.
# No lake figures had been recorded before (git history, README), so these are that run's.
FORMER_BRIDGE: dict[tuple[str, int, int], dict[str, float]] = {
    ("local", 500_000, 30): {"append": 14.92, "replace_range": 4.55, "read_all": 4.31, "read_day": 1.09},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000, help="the size the former bridge was measured at")
    parser.add_argument("--quick", action="store_true", help="100k rows, for a smoke run")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--profile", default="local", choices=["local", "s3"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for lake.json and lake.md")
    args = parser.parse_args()
    if args.quick:
        args.rows = 100_000

    cfg = load_config(args.profile)
    if args.profile == "s3":
        services.up(cfg, only=["s3"])
    spark = get_spark(cfg, "bench-lake")
    table = LakeTable.for_config(cfg, f"bench/lake_{uuid.uuid4().hex[:8]}")
    seconds_per_row = args.days * 86_400 / args.rows
    events = (spark.range(args.rows)
              .select((F.col("id") % 10_000).cast("string").alias("user_id"),
                      F.timestamp_seconds(F.lit(FIRST_DAY_EPOCH_S) + (F.col("id") * seconds_per_row)
                                          .cast("long")).alias("event_ts"),
                      (F.rand(seed=7) * 100).alias("amount"),
                      *(F.rand(seed=i).alias(f"feature_{i}") for i in range(FEATURES)))
              .cache())
    events.count()  # generate once, outside the timings
    one_day = args.rows // args.days
    former = FORMER_BRIDGE.get((args.profile, args.rows, args.days), {})

    load = os.getloadavg()[0]
    print(f"{args.rows:,} rows x {3 + FEATURES} columns over {args.days} days -> {table.uri}  "
          f"(load average {load:.1f})")
    print(f"  {'step':36s} {'s':>7s} {'rows/s':>12s}   former bridge (last measured)")
    steps: list[dict] = []

    def timed(step: str, rows: int, action, former_seconds: float | None = None) -> None:
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
        beside = (f"   {former_seconds:7.2f} s  {rows / former_seconds:12,.0f} rows/s"
                  if former_seconds else "")
        print(f"  {step:36s} {seconds:7.2f} s  {rows / seconds:12,.0f} rows/s{beside}", flush=True)
        steps.append({"step": step, "rows": rows, "seconds": round(seconds, 3), "former_bridge_s": former_seconds})

    timed("append (delta-spark)", args.rows, lambda: table.write(events), former.get("append"))
    all_days = (FIRST_DAY, FIRST_DAY + timedelta(days=args.days))
    timed("replace_range, all days (delta-spark)", args.rows,
          lambda: table.write(events, mode="replace_range", replace_range=all_days), former.get("replace_range"))
    timed("read all, count+sum (Spark)", args.rows,
          lambda: table.read(spark).agg(F.count("*"), F.sum("amount")).collect(), former.get("read_all"))
    timed("read one day (Spark)", one_day,
          lambda: table.read(spark, start="2024-01-02", end="2024-01-03").count(), former.get("read_day"))
    version = table.version()
    timed("read all, count+sum (deltalake)", args.rows,
          lambda: _deltalake_sum(table, version, None))
    timed("read one day (deltalake)", one_day,
          lambda: _deltalake_sum(table, version, "2024-01-02"))

    delete_tree(table.uri, table.storage_options)  # a benchmark table is not worth keeping
    write_report(args.out, {"benchmark": "lake", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "profile": args.profile, "rows": args.rows, "days": args.days,
                            "columns": 3 + FEATURES, "load_average_1m": round(load, 1), "steps": steps})


def write_report(out: Path, result: dict) -> None:
    """lake.json and lake.md (the README's section) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "lake.json").write_text(json.dumps(result, indent=2) + "\n")
    by_step = {row["step"]: row for row in result["steps"]}
    lines = [
        "### Lake: delta-spark beside the former bridge and deltalake",
        "",
        f"{result['when']}, {os.cpu_count()} cores, profile `{result['profile']}`; `python bench/bench_lake.py`: "
        f"{result['rows']:,} rows x {result['columns']} columns over {result['days']} days, one Delta table "
        f"partitioned by date (load average {result['load_average_1m']}). The former bridge (pyarrow Parquet on the "
        "executors + a `deltalake` commit, removed when the lake moved to delta-spark) was last measured at this "
        "size on 2026-12-03; `deltalake` reads the same table and version in the same run.",
        "",
        "| step | s | rows/s | former bridge s | bridge s / this s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["steps"]:
        former, seconds = row["former_bridge_s"], row["seconds"]
        beside = f"{former:.2f} | {former / seconds:.2f}" if former else " | "
        lines.append(f"| {row['step']} | {seconds:.2f} | {row['rows'] / seconds:,.0f} | {beside} |")
    spark_all, rs_all = by_step["read all, count+sum (Spark)"], by_step["read all, count+sum (deltalake)"]
    lines += ["", f"`deltalake` read the whole table {spark_all['seconds'] / rs_all['seconds']:.1f}x faster than "
              "Spark (no JVM job, one process): the reason serving, Feast's offline store and the notebooks' light "
              "reads use it, while the jobs read through Spark, which scales out.", ""]
    (out / "lake.md").write_text("\n".join(lines))


def _deltalake_sum(table: LakeTable, version: int, day: str | None) -> tuple[int, float]:
    snapshot = DeltaTable(table.uri, version=version, storage_options=table.storage_options)
    rows = snapshot.to_pyarrow_table(filters=[(table.partition_column, "=", day)] if day else None)
    return rows.num_rows, pc.sum(rows.column("amount")).as_py()


if __name__ == "__main__":
    main()
