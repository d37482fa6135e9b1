"""Training-set generation: the Spark point-in-time join (``plumbing.training_sets``)
beside Feast's ``get_historical_features``, on the same Delta tables, same run.

    python bench/bench_training_sets.py            # 100k and 1M labelled events
    python bench/bench_training_sets.py --quick    # 20k, a smoke run
    python bench/bench_training_sets.py --sizes 300000 --feast-timeout 600

Data (synthetic, shaped like the event generator's: one user per 60 transactions, as its
events / 200 with 30% transactions; users / 5 merchants with a few big ones; 14 days):
N labelled transactions; the three feature
tables of ``fraud_model_v1`` written as Delta tables (one row per transaction instant for
users and merchants, 2.3 N activity rows, random values, 10% nulls in nullable features).
Every labelled transaction has a feature row at its own instant, so "strictly before"
matters on every row.

Measured, per size, each engine alone in a subprocess of its own (peak resident memory,
children such as Spark's JVM included, polled):
- Spark: ``build_training_set`` + writing the result as Parquet (a training set one can
  use), through the project's session (``local[*]``, its configured driver memory); best
  of ``--spark-rounds`` (the first round also warms up the JVM). Feast runs once: its runs
  are the long ones.
- Feast, stopped past ``--feast-timeout`` or ``--feast-memory-gb`` resident (the machine is
  shared): ``get_historical_features(...).to_df()`` over the same tables, asked as of
  ``T - 1 us`` (Feast includes a row AT T; see tests/test_training_sets.py), with the
  ``file`` offline store (Feast's Dask store) and the project's ``DeltaOfflineStore``
  (Feast's DuckDB store reading Delta).
- Identity: every feature of every row, Spark against each Feast result that finished
  (the request-time ratio excepted: Feast returns the stored column).

Rows/s = labelled events / wall seconds of the timed step. Results:
bench/results/training_sets.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
from deltalake import write_deltalake

from plumbing.config import load_config
from plumbing.spark import get_spark
from plumbing.training_sets import REQUEST_RATIO, build_training_set
from transformations.catalog import FEATURE_TABLES

RESULTS = Path(__file__).resolve().parent / "results"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 14
SERVICE = "fraud_model_v1"
FEAST_STORES = {
    "file": {"type": "file"},
    "delta": {"type": "feature_repo.delta_offline_store.DeltaOfflineStore"},
}
MICROS_PER_DAY = 86_400_000_000
SPILL_LIMIT_GB = 20  # disk DuckDB may spill to: the disk is shared too


# ------------------------------------------------------------------ data
def _instants(rng: np.random.Generator, count: int, first_day: int = 0) -> np.ndarray:
    """``count`` random microsecond instants from day ``first_day`` to the period's end."""
    start = int(START.timestamp() * 1_000_000) + first_day * MICROS_PER_DAY
    return rng.integers(start, start + (DAYS - first_day) * MICROS_PER_DAY, count)


def _table_rows(rng: np.random.Generator, table, entities: np.ndarray, micros: np.ndarray) -> pa.Table:
    """One row per distinct (entity, instant) with random feature values."""
    keys = pd.DataFrame({table.entity_column: entities, "micros": micros}).drop_duplicates()
    count = len(keys)
    columns = {table.entity_column: pa.array(keys[table.entity_column].to_numpy()),
               table.timestamp_column: pa.array(keys["micros"].to_numpy(), pa.timestamp("us", "UTC"))}
    for feature in table.features:
        if feature.dtype == "bigint":
            values, kind = rng.integers(0, 1000, count), pa.int64()
        else:
            values, kind = rng.gamma(2.0, 40.0, count), pa.float64()
        mask = rng.random(count) < 0.1 if feature.nullable else None
        columns[feature.name] = pa.array(values, kind, mask=mask)
    days = (keys["micros"].to_numpy() // MICROS_PER_DAY).astype("datetime64[D]").astype(str)
    columns["event_date"] = pa.array(days)
    return pa.table(columns)


def make_data(root: Path, labelled: int, seed: int = 7) -> int:
    """Write the feature tables under ``root/lake`` and the labelled events to
    ``root/labels.parquet``; return the number of feature rows."""
    rng = np.random.default_rng(seed)
    n_users = max(50, labelled * 10 // 3 // 200)   # events = labelled / 0.3 transactions share
    n_merchants = max(20, n_users // 5)
    user_weights = rng.lognormal(0, 1, n_users)
    merchant_weights = 1.0 / np.arange(1, n_merchants + 1) ** 0.8  # a few big merchants

    def draw(weights: np.ndarray, count: int, prefix: str) -> np.ndarray:
        picks = rng.choice(len(weights), count, p=weights / weights.sum())
        return np.char.add(prefix, picks.astype(str))

    users, merchants = draw(user_weights, labelled, "u"), draw(merchant_weights, labelled, "m")
    times = _instants(rng, labelled, first_day=1)  # day 0 fills the windows
    warm_up = labelled // 10
    tables = {
        "user_transaction_features": (np.concatenate([users, draw(user_weights, warm_up, "u")]),
                                      np.concatenate([times, _instants(rng, warm_up)])),
        "user_activity_features": (draw(user_weights, labelled * 7 // 3, "u"), _instants(rng, labelled * 7 // 3)),
        "merchant_features": (np.concatenate([merchants, draw(merchant_weights, labelled // 200, "m")]),
                              np.concatenate([times, _instants(rng, labelled // 200)])),
    }
    feature_rows = 0
    for name, (entities, micros) in tables.items():
        rows = _table_rows(rng, FEATURE_TABLES[name], entities, micros)
        write_deltalake(str(root / "lake" / name), rows, partition_by=["event_date"])
        feature_rows += rows.num_rows
    labels = pd.DataFrame({
        "row_id": np.arange(labelled), "transaction_id": np.char.add("t", np.arange(labelled).astype(str)),
        "user_id": users, "merchant_id": merchants,
        "event_time": pd.to_datetime(times, unit="us", utc=True), "amount": rng.gamma(2.0, 40.0, labelled),
        "label": (rng.random(labelled) < 0.01).astype("int32")})
    labels.to_parquet(root / "labels.parquet", index=False, coerce_timestamps="us")  # Spark reads no nanoseconds
    return feature_rows


# ------------------------------------------------------------------ the engines (each in a subprocess)
def spark_worker(root: Path, rounds: int) -> None:
    """Time the best of ``rounds`` builds (the first one also warms up the JVM's code)."""
    work = root / "spark"
    cfg = load_config("local", environ={**os.environ, "TESSERA__LAKE__ROOT": str(root / "lake")})
    spark = get_spark(cfg, "bench-training-sets")
    labels = spark.read.parquet(str(root / "labels.parquet"))
    labels.count()  # read the input before timing, as Feast gets its entity frame in memory
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        training_set, _ = build_training_set(spark, cfg, labels, SERVICE)
        training_set.write.mode("overwrite").parquet(str(work / "result.parquet"))
        best = min(best, time.perf_counter() - started)
    (work / "seconds.json").write_text(json.dumps({"seconds": best, "rows": spark.read.parquet(
        str(work / "result.parquet")).count()}))
    spark.stop()


def feast_worker(store_type: str, root: Path, memory_gb: float) -> None:
    """Apply the repository with the given offline store, time get_historical_features."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from feature_repo import repo_objects

    cfg = load_config("local", environ={**os.environ, "TESSERA__LAKE__ROOT": str(root / "lake")})
    work = root / store_type
    config = RepoConfig(project=f"bench_{store_type}", provider="local", registry=str(work / "registry.db"),
                        online_store={"type": "sqlite", "path": str(work / "online.db")},
                        offline_store=FEAST_STORES[store_type], entity_key_serialization_version=3,
                        repo_path=str(work))
    if store_type == "delta":
        import ibis

        # DuckDB would grow to 80% of the machine's memory before spilling: cap it under the
        # bound so it spills to disk instead, its best chance to finish; cap the spill too
        # (at 1M rows it wrote 48 GB before the memory bound stopped it).
        ibis.get_backend().raw_sql(f"SET memory_limit = '{max(1.0, memory_gb - 1.5):g}GB'; "
                                   f"SET temp_directory = '{work / 'duckdb_spill'}'; "
                                   f"SET max_temp_directory_size = '{SPILL_LIMIT_GB}GB'")
    store = FeatureStore(config=config)
    store.apply(repo_objects(cfg))
    labels = pd.read_parquet(root / "labels.parquet")
    entity_df = pd.DataFrame({"row_id": labels["row_id"], "user_id": labels["user_id"],
                              "merchant_id": labels["merchant_id"],
                              "event_timestamp": labels["event_time"] - pd.Timedelta(microseconds=1)})
    started = time.perf_counter()
    result = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(SERVICE)).to_df()
    seconds = time.perf_counter() - started
    result.to_parquet(work / "result.parquet", index=False)
    (work / "seconds.json").write_text(json.dumps({"seconds": seconds, "rows": len(result)}))


def run_worker(engine: str, root: Path, args: argparse.Namespace) -> dict:
    """Run one engine alone in a subprocess, its resident memory (children included, e.g.
    Spark's JVM) polled. Feast runs are stopped past the time or memory bound (Spark's
    memory is bounded by its own configured heap). Returns the timing or why there is none."""
    (root / engine).mkdir()
    command = [sys.executable, __file__, "--worker", engine, str(root), "--feast-memory-gb",
               str(args.feast_memory_gb), "--spark-rounds", str(args.spark_rounds)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    bounded = engine in FEAST_STORES
    started, peak = time.monotonic(), 0
    outcome = None
    while process.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)]))
        except psutil.NoSuchProcess:
            pass  # a child ended between listing and reading: measure again next time
        if bounded and time.monotonic() - started > args.feast_timeout:
            outcome = f"stopped after {args.feast_timeout:.0f} s (time bound)"
        elif bounded and peak > args.feast_memory_gb * 2**30:
            outcome = (f"stopped at {peak / 2**30:.1f} GB resident after {time.monotonic() - started:.0f} s "
                       f"(memory bound {args.feast_memory_gb:g} GB)")
        if outcome:
            process.kill()
            break
        time.sleep(0.5)
    _, stderr = process.communicate()
    timing = root / engine / "seconds.json"
    if outcome is None and process.returncode == 0 and timing.exists():
        return {**json.loads(timing.read_text()), "peak_rss_gb": round(peak / 2**30, 2)}
    reason = outcome or f"failed (exit {process.returncode}): {stderr.strip().splitlines()[-1] if stderr else ''}"
    return {"seconds": None, "reason": reason, "peak_rss_gb": round(peak / 2**30, 2)}


# ------------------------------------------------------------------ identity
def compare(spark_out: Path, feast_result: Path) -> dict:
    """Rows missing from Feast's answer, and values that differ on the rows both have."""
    ours = pd.read_parquet(spark_out).drop(columns=[REQUEST_RATIO])
    feast = pd.read_parquet(feast_result)
    features = [c for c in ours.columns if c in feast.columns and c not in
                ("row_id", "user_id", "merchant_id", "event_timestamp")]
    both = ours.merge(feast, on="row_id", suffixes=("", "_feast"))
    different = 0
    for column in features:
        a, b = both[column].astype("float64"), both[f"{column}_feast"].astype("float64")
        different += int((~((a == b) | (a.isna() & b.isna()))).sum())
    return {"rows_compared": len(both), "rows_missing_in_feast": len(ours) - len(both),
            "features_compared": len(features), "values_different": different}


# ------------------------------------------------------------------ report
def _timing_cell(labelled: int, run: dict) -> str:
    return f"{labelled / run['seconds']:,.0f} ({run['seconds']:.1f} s, {run['peak_rss_gb']:g} GB)"


def write_report(result: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training_sets.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "### Point-in-time training sets (Spark vs Feast `get_historical_features`)", "",
        f"{result['when']}, load average {result['load_average_1m']} at the start on {result['machine']}; "
        f"synthetic tables shaped like the generator's, {DAYS} days, service `{SERVICE}` "
        f"({result['features']} features from 3 tables); Spark best of {result['spark_rounds']} rounds. "
        f"Feast runs once each, bounded at "
        f"{result['feast_timeout_s']:.0f} s and {result['feast_memory_gb']:g} GB resident.", "",
        "| labelled events | feature rows | Spark rows/s (s, peak GB) | Feast `file` rows/s (s, peak GB) | ratio | "
        "Feast Delta/DuckDB rows/s (s, peak GB) | ratio | identical values |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in result["sizes"]:
        spark = size["spark"]
        cells = [f"{size['labelled']:,}", f"{size['feature_rows']:,}", _timing_cell(size["labelled"], spark)]
        checks = []
        for store in FEAST_STORES:
            run = size["feast"][store]
            if run["seconds"] is None:
                cells += [f"did not finish: {run['reason']}", "-"]
                continue
            cells += [_timing_cell(size["labelled"], run), f"**{run['seconds'] / spark['seconds']:.1f}x**"]
            identity = run["identity"]
            missing = (f", {identity['rows_missing_in_feast']:,} rows missing in Feast's answer"
                       if identity["rows_missing_in_feast"] else "")
            checks.append(f"{store}: {identity['values_different']:,} of "
                          f"{identity['rows_compared'] * identity['features_compared']:,} differ{missing}")
        lines.append("| " + " | ".join(cells + ["; ".join(checks) or "-"]) + " |")
    lines += ["", "Ratio: Spark rows/s over Feast rows/s. Spark's time includes writing the training set as "
              "Parquet; Feast's ends with the pandas frame in memory. Both Feast stores join each entity row "
              "with every feature row of its entity in the time range and then keep the newest, so their work "
              "and memory grow with rows per entity (a big merchant's 30-day window holds tens of thousands); "
              "Spark sorts each entity's rows once. Feast's `file` (Dask) store merges with all of the "
              "entity's rows before filtering by time, and in feast 0.67 its ttl filter also drops an entity "
              "row whose entity has rows but none in `[T - ttl, T]` (a two-row example shows it)."]
    (RESULTS / "training_sets.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda text: [int(s) for s in text.split(",")], default=[100_000, 1_000_000],
                        help="labelled events per run, comma-separated (default 100000,1000000)")
    parser.add_argument("--quick", action="store_true", help="20k labelled events, Feast bounded at 120 s")
    parser.add_argument("--feast-timeout", type=float, default=900.0, help="seconds per Feast run (default 900)")
    parser.add_argument("--feast-memory-gb", type=float, default=6.0, help="resident memory per Feast run (default 6)")
    parser.add_argument("--spark-rounds", type=int, default=2, help="Spark builds per size, best counts (default 2)")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, root = args.worker[0], Path(args.worker[1])
        if engine == "spark":
            spark_worker(root, args.spark_rounds)
        else:
            feast_worker(engine, root, args.feast_memory_gb)
        return 0
    if args.quick:
        args.sizes, args.feast_timeout = [20_000], 120.0

    result = {"benchmark": "training_sets", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_average_1m": round(os.getloadavg()[0], 1),
              "features": sum(len(FEATURE_TABLES[name].features) for name in FEATURE_TABLES),
              "spark_rounds": args.spark_rounds, "feast_timeout_s": args.feast_timeout,
              "feast_memory_gb": args.feast_memory_gb, "sizes": []}
    for labelled in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-ts-") as tmp:
            root = Path(tmp)
            feature_rows = make_data(root, labelled)
            spark = run_worker("spark", root, args)
            if spark["seconds"] is None:
                raise SystemExit(f"the Spark run failed: {spark['reason']}")
            print(f"{labelled:,} labelled events: Spark {labelled / spark['seconds']:,.0f} rows/s "
                  f"({spark['seconds']:.1f} s)", flush=True)
            spark["rows_per_s"] = round(labelled / spark["seconds"])
            size = {"labelled": labelled, "feature_rows": feature_rows, "spark": spark, "feast": {}}
            for store in FEAST_STORES:
                run = run_worker(store, root, args)
                if run["seconds"] is not None:
                    run["identity"] = compare(root / "spark" / "result.parquet", root / store / "result.parquet")
                    run["rows_per_s"] = round(labelled / run["seconds"])
                    run["ratio"] = round(run["seconds"] / spark["seconds"], 2)
                size["feast"][store] = run
                print(f"  Feast {store}: {json.dumps(run)}", flush=True)
            result["sizes"].append(size)
    write_report(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
