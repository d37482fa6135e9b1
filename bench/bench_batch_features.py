"""Batch features: events/s and peak memory of Spark running the project's transformations,
beside pandas and DuckDB computing the same three feature tables - same data, same run.

    python bench/bench_batch_features.py                      # 1M and 10M events
    python bench/bench_batch_features.py --sizes 1000000      # chosen sizes
    python bench/bench_batch_features.py --quick              # 100k events, a smoke run

Per size:

1. History: ``python -m jobs.generate_events history`` (seeded, 7 days, 0.1 % malformed
   records so the cleaning has work to do) into ``.tessera/bench/batch_features/``,
   reused when it is already there with the same arguments.
2. Each engine in its own process, one after the other, doing the same work: read the raw
   Parquet history -> drop malformed rows (the rules of ``transformations.cleaning``) and
   replayed ids -> ``user_transaction_features``, ``user_activity_features``,
   ``merchant_features`` for the whole period -> each table written as Parquet on local disk.

   - spark: ``plumbing.raw_events.read_history``, ``cleaning.validate_typed_events`` /
     ``split_valid`` / ``drop_duplicate_events`` (persisted, as ``jobs/batch_features``
     does), each catalog table's build cut to the period (``compute_table``), written with
     ``DataFrameWriter.parquet``; the ``local`` profile's session (``local[*]``, 4 GB driver).
     The rest of the batch job (validation suites, Delta commit, MLflow, Redis) is left out
     for every engine.
   - pandas: ``bench/peers/pandas_features.py``; duckdb: ``bench/peers/duckdb_features.py``
     (``tests/test_bench_peers.py`` holds both equal to Spark).
3. Measured per engine: compute seconds, from the start of reading to the last file written
   (timed inside the process: interpreter and JVM start-up are outside, and show in the
   wall time); events/s = generated events / compute seconds; peak memory = the highest
   sum of RSS over the engine's process tree (Spark: Python driver + JVM + Python
   workers), polled with psutil; CPU seconds of that tree.
4. Agreement: every table's row count, and all rows of ``--sample-entities`` random
   entities per table compared with Spark's: integers exactly, doubles within
   ``FLOAT_RTOL`` / ``FLOAT_ATOL`` (sums added in another order; pandas' rolling std).

Writes bench/results/batch_features.json, .md and .png. Exit code 1 when an engine's
output disagrees with Spark's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Only the standard library at module level: this file is also each engine's worker
# process, whose memory is measured, so libraries are imported where they are used.
REPO_ROOT = Path(__file__).resolve().parent.parent
# bench/ is not an installed package: make `bench.peers` importable when run as a script.
sys.path.insert(0, str(REPO_ROOT))

from bench.peers import EVENT_ID_COLUMNS, EVENT_TYPES, TABLE_COLUMNS  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
BENCH_DATA = REPO_ROOT / ".tessera" / "bench" / "batch_features"
ENGINES = ("spark", "pandas", "duckdb")
PEERS = ("pandas", "duckdb")
START_DATE = dt.date(2026, 1, 1)
MALFORMED_FRACTION = 0.001
POLL_INTERVAL_S = 0.2
# Doubles agree to ~1e-15 relative (sums added in another order) except the sample std:
# pandas' rolling std and the transformations' std from running sums of squares both lose
# digits when the spread is tiny beside the mean (measured: up to 1e-7 relative, and a std
# of 1.3e-6 instead of 0 for two equal amounts).
FLOAT_RTOL = 1e-6
FLOAT_ATOL = 1e-5  # amounts are cents: a thousandth of a cent is rounding, not a different value
TIMING_FILE = "timing.json"
EVENT_TIMESTAMP = "event_timestamp"


# ------------------------------------------------------------------ the history
def ensure_history(events: int, days: int, seed: int) -> Path:
    """The generated history for these arguments, generated unless already there."""
    arguments = {"events": events, "days": days, "seed": seed, "start_date": START_DATE.isoformat(),
                 "malformed_fraction": MALFORMED_FRACTION}
    folder = BENCH_DATA / f"history-{events}-{days}d-seed{seed}"
    marker = folder / "generated.json"
    if marker.exists() and json.loads(marker.read_text()) == arguments:
        print(f"history: reusing {folder}", flush=True)
        return folder
    marker.unlink(missing_ok=True)  # a half-generated folder must never look complete
    command = [sys.executable, "-m", "jobs.generate_events", "history", "--events", str(events),
               "--days", str(days), "--seed", str(seed), "--start-date", START_DATE.isoformat(),
               "--malformed-fraction", str(MALFORMED_FRACTION), "--out", str(folder),
               "--partition-by-date", "--overwrite", "--no-progress"]
    print(f"history: generating {events:,} events into {folder}", flush=True)
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    marker.write_text(json.dumps(arguments))
    return folder


def history_rows(history_dir: Path) -> dict[str, int]:
    import pyarrow.dataset as ds

    return {event_type: ds.dataset(history_dir / event_type, format="parquet").count_rows()
            for event_type in EVENT_TYPES}


# ------------------------------------------------------------------ the engines (worker side)
def compute_with_spark(history_dir: Path, out_dir: Path, start: dt.datetime, end: dt.datetime,
                       now: dt.datetime) -> float:
    """The batch job's path; returns the compute seconds (the session is started before)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from plumbing.config import load_config
    from plumbing.raw_events import read_history
    from plumbing.spark import get_spark
    from transformations import cleaning
    from transformations.catalog import FEATURE_TABLES
    from transformations.schemas import EVENT_ENTITY_COLUMNS

    cfg = load_config("local", environ={**os.environ, "TESSERA__EVENTS__HISTORY_URI": str(history_dir)})
    spark = get_spark(cfg, "bench-batch-features")
    began = time.perf_counter()
    sources = {}
    for event_type in EVENT_TYPES:
        checked = cleaning.validate_typed_events(read_history(spark, cfg, event_type, start, end), event_type,
                                                 now=now)
        valid, _ = cleaning.split_valid(checked)
        sources[event_type] = (cleaning.drop_duplicate_events(valid, EVENT_ENTITY_COLUMNS[event_type],
                                                              EVENT_ID_COLUMNS[event_type])
                               .persist(StorageLevel.MEMORY_AND_DISK))
    for table in FEATURE_TABLES.values():
        # jobs.batch_features.compute_table, restated: importing that module loads Great
        # Expectations and MLflow (~320 MB RSS, ~15 s), which computes no feature.
        inputs = {event_type: sources[event_type] for event_type in table.sources}
        timestamp = F.col(table.timestamp_column)
        features = (table.build(**inputs)
                    .where((timestamp >= F.lit(start)) & (timestamp < F.lit(end)))
                    .select(*table.columns))
        features.write.mode("overwrite").parquet(str(out_dir / table.name))
    compute_s = time.perf_counter() - began
    spark.stop()
    return compute_s


def run_engine(engine: str, history_dir: Path, out_dir: Path, start: dt.datetime, end: dt.datetime) -> None:
    """Worker process: compute the three tables with ``engine``, leave the timing in ``out_dir``."""
    now = end  # the validator's clock: the period's end (no generated event is in its future)
    if engine == "spark":
        compute_s = compute_with_spark(history_dir, out_dir, start, end, now)
    else:
        # Imported here so each engine's process loads only its own library: it counts in its peak.
        if engine == "pandas":
            from bench.peers import pandas_features as peer
        else:
            from bench.peers import duckdb_features as peer
        began = time.perf_counter()
        peer.compute_feature_tables(history_dir, out_dir, start, end, now)
        compute_s = time.perf_counter() - began
    (out_dir / TIMING_FILE).write_text(json.dumps({"compute_s": compute_s}))


# ------------------------------------------------------------------ measuring (parent side)
def _tree(process) -> list:
    import psutil

    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


@dataclass(frozen=True)
class Limits:
    """When an engine is stopped and the stop recorded as its result."""

    time_s: float            # wall time
    memory_mb: float         # RSS of the engine's process tree
    min_available_mb: float  # memory left on the (shared) machine: stop before the kernel's OOM killer picks a victim

    def stop_reason(self, elapsed_s: float, rss_mb: float, available_mb: float) -> str | None:
        if elapsed_s > self.time_s:
            return f"stopped after {elapsed_s:,.0f} s (time limit {self.time_s:,.0f} s)"
        if rss_mb > self.memory_mb:
            return f"stopped at {rss_mb:,.0f} MB RSS (memory limit {self.memory_mb:,.0f} MB)"
        if available_mb < self.min_available_mb:
            return (f"stopped at {rss_mb:,.0f} MB RSS: the machine had {available_mb:,.0f} MB left "
                    f"(floor {self.min_available_mb:,.0f} MB)")
        return None


def measure_engine(engine: str, events: int, history_dir: Path, out_dir: Path, period: tuple[dt.datetime, dt.datetime],
                   limits: Limits) -> dict:
    """Run one engine in its own process; wall time, peak RSS and CPU of its process tree."""
    import psutil

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--history", str(history_dir),
               "--out", str(out_dir), "--start", period[0].isoformat(), "--end", period[1].isoformat()]
    log_path = out_dir.parent / f"{engine}.log"
    load_average = os.getloadavg()[0]
    began = time.monotonic()
    with open(log_path, "w") as log:  # a file, not a pipe: the child can never block on output
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(child.pid)
    peak_rss = 0
    cpu_by_pid: dict[int, float] = {}  # last CPU seen per process: children may exit between polls
    stopped = None
    while child.poll() is None:
        rss = 0
        for process in _tree(root):
            try:
                rss += process.memory_info().rss
                times = process.cpu_times()
                cpu_by_pid[process.pid] = times.user + times.system
            except psutil.Error:  # exited since the listing
                pass
        peak_rss = max(peak_rss, rss)
        stopped = limits.stop_reason(time.monotonic() - began, rss / 2**20,
                                     psutil.virtual_memory().available / 2**20)
        if stopped:
            for process in reversed(_tree(root)):
                try:
                    process.kill()
                except psutil.Error:
                    pass
            child.wait()
            break
        time.sleep(POLL_INTERVAL_S)
    wall_s = time.monotonic() - began

    result = {"engine": engine, "wall_s": round(wall_s, 1), "peak_rss_mb": round(peak_rss / 2**20),
              "cpu_s": round(sum(cpu_by_pid.values()), 1), "load_average_1m": round(load_average, 1),
              "log": str(log_path)}
    timing = out_dir / TIMING_FILE
    if stopped or child.returncode != 0 or not timing.exists():
        reason = stopped or f"failed with exit code {child.returncode}"
        if child.returncode == -9 and not stopped:
            reason += " (SIGKILL: out of memory?)"
        return {**result, "status": reason, "compute_s": None, "events_per_s": None}
    compute_s = json.loads(timing.read_text())["compute_s"]
    return {**result, "status": "ok", "compute_s": round(compute_s, 1),
            "startup_s": round(wall_s - compute_s, 1), "events_per_s": round(events / compute_s)}


# ------------------------------------------------------------------ agreement
def _read_rows(folder: Path, entity: str, entities: list[str] | None = None):
    """A table's rows (of ``entities`` only, if given), instants as UTC microseconds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(folder, filters=[(entity, "in", entities)] if entities is not None else None)
    instants = table.column(EVENT_TIMESTAMP).cast(pa.timestamp("us")).cast(pa.int64())
    table = table.set_column(table.schema.get_field_index(EVENT_TIMESTAMP), EVENT_TIMESTAMP, instants)
    return table.to_pandas()


def count_mismatches(reference, other, table_name: str) -> dict:
    """Rows missing or extra in ``other``, and differing values per column, against ``reference``."""
    import numpy as np

    entity, _, *features = TABLE_COLUMNS[table_name]
    merged = reference.merge(other, on=[entity, EVENT_TIMESTAMP], how="outer", suffixes=("_ref", "_other"),
                             indicator=True)
    both = merged[merged["_merge"] == "both"]
    differing = {}
    largest = (0.0, None)  # the largest relative difference beyond FLOAT_ATOL, and its feature
    for feature in features:
        expected, actual = both[f"{feature}_ref"].astype("float64"), both[f"{feature}_other"].astype("float64")
        same_nulls = expected.isna() == actual.isna()
        equal = (expected.isna() & actual.isna()) | np.isclose(actual, expected, rtol=FLOAT_RTOL, atol=FLOAT_ATOL)
        if (~equal).any():
            differing[feature] = int((~equal).sum())
        difference = (actual - expected).abs()
        relative = (difference / expected.abs())[same_nulls & (difference > FLOAT_ATOL)]
        if len(relative) and relative.max() > largest[0]:
            largest = (float(relative.max()), feature)
    missing = int((merged["_merge"] == "left_only").sum())
    extra = int((merged["_merge"] == "right_only").sum())
    return {"rows_compared": len(both), "missing_rows": missing, "extra_rows": extra,
            "differing_values": differing, "mismatches": missing + extra + sum(differing.values()),
            "largest_relative_difference": largest[0], "largest_relative_difference_in": largest[1]}


def compare_engines(out_root: Path, runs: dict[str, dict], sample_entities: int, seed: int) -> dict:
    """Per table: row counts of every engine that finished, and each peer's mismatches
    against Spark on all rows of the same random entities."""
    import numpy as np
    import pyarrow.dataset as ds

    finished = [engine for engine, run in runs.items() if run["status"] == "ok"]
    agreement = {}
    for table_name, columns in TABLE_COLUMNS.items():
        entity = columns[0]
        rows = {engine: ds.dataset(out_root / engine / table_name, format="parquet").count_rows()
                for engine in finished}
        report = {"rows": rows, "entity": entity}
        if "spark" in finished:
            all_entities = np.unique(_read_rows(out_root / "spark" / table_name, entity)[entity])
            sample = sorted(np.random.default_rng(seed).choice(all_entities, min(sample_entities, len(all_entities)),
                                                               replace=False).tolist())
            reference = _read_rows(out_root / "spark" / table_name, entity, sample)
            report["sampled_entities"] = len(sample)
            report["sampled_rows"] = len(reference)
            for peer in PEERS:
                if peer in finished:
                    report[peer] = count_mismatches(reference, _read_rows(out_root / peer / table_name, entity, sample),
                                                    table_name)
        agreement[table_name] = report
    return agreement


def mismatch_total(agreement: dict) -> int:
    return sum(report[peer]["mismatches"] + abs(report["rows"][peer] - report["rows"]["spark"])
               for report in agreement.values() for peer in PEERS if peer in report)


def ratios(runs: dict[str, dict]) -> dict:
    """Spark's figures over each peer's: speed > 1 means Spark is faster; CPU and memory > 1
    that Spark uses more. CPU seconds suffer least from a busy machine."""
    spark = runs.get("spark", {})
    out = {}
    for peer in PEERS:
        other = runs.get(peer, {})
        if spark.get("status") == "ok" and other.get("status") == "ok":
            out[peer] = {"events_per_s": round(spark["events_per_s"] / other["events_per_s"], 2),
                         "wall_with_startup": round(other["wall_s"] / spark["wall_s"], 2),
                         "cpu_s": round(spark["cpu_s"] / other["cpu_s"], 2),
                         "peak_rss": round(spark["peak_rss_mb"] / other["peak_rss_mb"], 2)}
    return out


# ------------------------------------------------------------------ reports
def _figure(value, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def _agreement_cell(comparison: dict | None) -> str:
    if comparison is None:
        return "-"
    largest = comparison["largest_relative_difference"]
    if not largest:
        return f"{comparison['mismatches']:,} (none beyond atol)"
    return f"{comparison['mismatches']:,} ({largest:.0e} {comparison['largest_relative_difference_in']})"


def _pandas_ceiling(results: list[dict], machine: dict) -> list[str]:
    """pandas' memory per event at the largest size it finished, and the events this
    machine's RAM would hold at that rate (a linear extrapolation)."""
    finished = [result for result in results if result["engines"].get("pandas", {}).get("status") == "ok"]
    if not finished:
        return []
    largest = max(finished, key=lambda result: result["events"])
    bytes_per_event = largest["engines"]["pandas"]["peak_rss_mb"] * 2**20 / largest["events"]
    ceiling = machine["memory_gb"] * 2**30 / bytes_per_event
    return ["", f"pandas peaked at {bytes_per_event:,.0f} bytes of RSS per event at {largest['events']:,} events: "
                f"at that rate this machine's {machine['memory_gb']} GB hold about {ceiling / 1e6:,.0f}M events "
                "(linear extrapolation), less whatever else runs."]


def markdown(results: list[dict], machine: dict, settings: dict) -> str:
    lines = [
        "# Batch features: Spark beside pandas and DuckDB",
        "",
        f"{machine['date']}, {machine['cpus']} CPUs, {machine['memory_gb']} GB RAM, Python {machine['python']}; "
        f"pyspark {machine['versions']['pyspark']}, pandas {machine['versions']['pandas']}, "
        f"duckdb {machine['versions']['duckdb']}. `python bench/bench_batch_features.py`. "
        "The machine is shared and noisy (load average at each start below): read the ratios, "
        "measured in the same run on the same data.",
        "",
        "| events | engine | events/s | compute s | wall s (with start-up) | peak RSS MB (process tree) | CPU s "
        "| load avg | status |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        for engine, run in result["engines"].items():
            lines.append(f"| {result['events']:,} | {engine} | {_figure(run['events_per_s'])} "
                         f"| {_figure(run['compute_s'])} | {run['wall_s']:,} | {run['peak_rss_mb']:,} "
                         f"| {run['cpu_s']:,} | {run['load_average_1m']} | {run['status']} |")
    lines += ["", "Ratios, Spark against each peer (events/s: above 1 Spark is faster; wall: the peer's wall time "
              "over Spark's, start-up included; CPU s and peak RSS: above 1 Spark uses more; CPU s suffers "
              "least from the other work on the machine):", "",
              "| events | Spark/pandas events/s | Spark/DuckDB events/s | pandas/Spark wall | DuckDB/Spark wall "
              "| Spark/pandas CPU s | Spark/DuckDB CPU s | Spark/pandas peak RSS | Spark/DuckDB peak RSS |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        r = result["ratios"]
        cells = [_figure(r.get(peer, {}).get(key), "{:.2f}")
                 for key in ("events_per_s", "wall_with_startup", "cpu_s", "peak_rss") for peer in PEERS]
        lines.append(f"| {result['events']:,} | " + " | ".join(cells) + " |")
    lines += ["", f"Agreement with Spark: row counts of every table, and all rows of {settings['sample_entities']} "
              f"random entities per table (integers exactly, doubles within {settings['float_rtol']:g} relative or "
              f"{settings['float_atol']:g} absolute (atol); the largest relative difference beyond atol is shown "
              "with its feature):", "",
              "| events | table | rows spark / pandas / duckdb | sampled rows | mismatches pandas (largest rel. diff) "
              "| mismatches duckdb (largest rel. diff) |",
              "|---:|---|---|---:|---|---|"]
    for result in results:
        for table_name, report in result["agreement"].items():
            counts = " / ".join(_figure(report["rows"].get(engine)) for engine in ENGINES)
            cells = [_agreement_cell(report.get(peer)) for peer in PEERS]
            lines.append(f"| {result['events']:,} | {table_name} | {counts} | {_figure(report.get('sampled_rows'))} "
                         f"| {cells[0]} | {cells[1]} |")
    lines += ["", "![events/s per engine](batch_features.png)", "", *WHAT_THIS_MEASURES,
              *_pandas_ceiling(results, machine)]
    return "\n".join(lines) + "\n"


WHAT_THIS_MEASURES = [
    "**What this measures.** One batch computation of the three feature tables over the whole generated",
    "period (7 days; transactions, activity and the chargebacks that arrived in it), identical for every",
    "engine: read the raw Parquet history, drop malformed rows and replayed ids, compute",
    "`user_transaction_features`, `user_activity_features` and `merchant_features` with exact sliding windows",
    "(t - W, t] per (entity, instant), write each table as Parquet on local disk. Spark runs the project's",
    "own transformations as `jobs/batch_features` calls them, in `local[*]` on this machine; pandas and",
    "DuckDB are single-machine re-implementations of the same semantics (`bench/peers/`, held equal to",
    "Spark by `tests/test_bench_peers.py` and by the sample comparison above). events/s counts generated",
    "transaction + activity events over compute time (read to last file written; JVM and interpreter",
    "start-up excluded, it shows in the wall time). Peak RSS is the largest sum over each engine's process",
    "tree (Spark: driver + JVM + Python workers), polled every 0.2 s, so shared pages count once per",
    "process. Not measured here: validation, the Delta commit, MLflow and Redis (the rest of the job).",
    "",
    "**Past one machine.** pandas holds every event and every window in one process's memory and uses one",
    "core: its ceiling is this machine's RAM (below). DuckDB uses every core",
    "and spills to disk, but stays on one machine. The Spark job is the same code on a cluster: set",
    "`spark.master` in a profile (`conf/production.example.yaml`: a standalone master, executor memory",
    "and cores in `spark.extra_conf`; `TESSERA__SPARK__MASTER=spark://host:7077` overrides any profile,",
    "and `tests/test_cluster.py` runs the jobs on a standalone master and two workers started from the",
    "pyspark install), put the history and the lake on S3 (`events.history_uri`, `lake.root` =",
    "`s3a://...`: executors read and write the files through S3A, delta-spark commits), and raise",
    "`spark.shuffle_partitions` with the data. Windows are partitioned by entity, so the work spreads",
    "over executors by user and merchant; one entity's rows stay in one task, though, so a single very",
    "busy entity is not spread (Spark re-aggregates a sliding frame for every row, which is why the",
    "transformations take long-window counts and sums as differences of running totals).",
]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for engine in ENGINES:
        points = [(result["events"], result["engines"][engine]["events_per_s"]) for result in results
                  if engine in result["engines"] and result["engines"][engine]["events_per_s"]]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=engine)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("generated events (7 days)")
    axes.set_ylabel("events/s (read -> 3 feature tables -> Parquet)")
    axes.set_title("Batch feature computation, same data, same run")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_reports(results: list[dict], machine: dict, settings: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "batch_features.json").write_text(
        json.dumps({"machine": machine, "settings": settings, "results": results}, indent=2) + "\n")
    (RESULTS_DIR / "batch_features.md").write_text(markdown(results, machine, settings))
    plot(results, RESULTS_DIR / "batch_features.png")


def print_size(result: dict) -> None:
    print(f"\n{result['events']:,} events (input rows {result['input_rows']}):")
    print(f"  {'engine':8s} {'events/s':>12s} {'compute s':>10s} {'wall s':>8s} {'peak RSS MB':>12s} "
          f"{'CPU s':>8s}  status")
    for engine, run in result["engines"].items():
        print(f"  {engine:8s} {_figure(run['events_per_s']):>12s} {_figure(run['compute_s']):>10s} "
              f"{run['wall_s']:>8,} {run['peak_rss_mb']:>12,} {run['cpu_s']:>8,}  {run['status']}")
    for peer, ratio in result["ratios"].items():
        print(f"  Spark/{peer}: events/s x{ratio['events_per_s']}, CPU s x{ratio['cpu_s']}, "
              f"peak RSS x{ratio['peak_rss']} ({peer}/Spark wall with start-up x{ratio['wall_with_startup']})")
    for table_name, report in result["agreement"].items():
        mismatches = ", ".join(f"{peer} {_agreement_cell(report[peer])}" for peer in PEERS if peer in report)
        print(f"  {table_name}: rows {report['rows']}; mismatches on {report.get('sampled_rows', 0):,} sampled rows: "
              f"{mismatches or '-'}")
        for peer in PEERS:
            if peer in report and report[peer]["mismatches"]:
                print(f"    {peer}: {report[peer]}")
    print(f"  mismatches in total: {result['mismatches']}", flush=True)


def machine_facts() -> dict:
    import duckdb
    import pandas
    import psutil
    import pyspark

    return {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30), "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "versions": {"pyspark": pyspark.__version__, "pandas": pandas.__version__, "duckdb": duckdb.__version__}}


# ------------------------------------------------------------------ the command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="generated events per run (default: 1M and 10M)")
    parser.add_argument("--quick", action="store_true", help="100k events only, a smoke run")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--days", type=int, default=7, help="length of the generated period (default 7)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sample-entities", type=int, default=200, help="entities per table compared (default 200)")
    parser.add_argument("--time-limit-s", type=float, default=3600.0,
                        help="an engine still running after this is stopped and recorded so (default 3600)")
    parser.add_argument("--memory-limit-mb", type=float, default=14_000.0,
                        help="an engine whose process tree passes this RSS is stopped and recorded so (default 14000)")
    parser.add_argument("--min-available-mb", type=float, default=1_000.0,
                        help="an engine is stopped and recorded so when the machine has less memory left "
                             "(other work shares it; default 1000)")
    # Worker mode: the parent runs each engine as `--worker ENGINE ...` in a process of its own.
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--history", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=dt.datetime.fromisoformat, help=argparse.SUPPRESS)
    parser.add_argument("--end", type=dt.datetime.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_engine(args.worker, args.history, args.out, args.start, args.end)
        return 0

    sizes = [100_000] if args.quick else args.sizes
    start = dt.datetime.combine(START_DATE, dt.time(), tzinfo=dt.timezone.utc)
    period = (start, start + dt.timedelta(days=args.days))
    machine = machine_facts()
    settings = {"days": args.days, "seed": args.seed, "malformed_fraction": MALFORMED_FRACTION,
                "sample_entities": args.sample_entities, "time_limit_s": args.time_limit_s,
                "memory_limit_mb": args.memory_limit_mb,
                "min_available_mb": args.min_available_mb, "float_rtol": FLOAT_RTOL, "float_atol": FLOAT_ATOL}
    limits = Limits(args.time_limit_s, args.memory_limit_mb, args.min_available_mb)
    results = []
    for events in sizes:
        history_dir = ensure_history(events, args.days, args.seed)
        out_root = BENCH_DATA / f"out-{events}"
        runs = {}
        for engine in args.engines:
            print(f"{events:,} events: {engine} ...", flush=True)
            runs[engine] = measure_engine(engine, events, history_dir, out_root / engine, period,
                                          limits)
        agreement = compare_engines(out_root, runs, args.sample_entities, args.seed)
        result = {"events": events, "input_rows": history_rows(history_dir), "engines": runs,
                  "ratios": ratios(runs), "agreement": agreement, "mismatches": mismatch_total(agreement)}
        results.append(result)
        print_size(result)
        write_reports(results, machine, settings)  # after every size: a later failure keeps these
    print(f"\nwrote {RESULTS_DIR / 'batch_features.md'}, .json and .png")
    return 1 if any(result["mismatches"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
