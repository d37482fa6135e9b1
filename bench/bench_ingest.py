"""`tessera ingest` on large exports: throughput and peak memory, 100 MB against 1 GB.

    python bench/bench_ingest.py                    # a 100 MB and a 1 GB CSV
    python bench/bench_ingest.py --sizes-mb 20      # a smoke run

Writes a CSV in the foreign shape of docs/examples/ingest_transactions.yaml (card numbers as
ids, quoted merchant names with commas, naive Berlin local times, a fraud flag) of about each
size under ``--work-dir`` (default /tmp/tessera-bench-ingest), then runs
``python -m jobs.ingest transactions <file> --mapping docs/examples/ingest_transactions.yaml``
in a process of its own on the local profile, with a history and a lake of its own under the
work dir (the profile's MLflow records the runs). Memory is the peak RSS of the ingest's
process tree, sampled every 0.2 s: the Python process and the Spark JVM it starts (the JVM is
the one that grows). Bounded memory means the peak stays flat while the file grows tenfold.
Throughput is rows read / the command's wall time (JVM start-up included).

Writes ``bench/results/ingest.json`` and ``bench/results/ingest.md``; the work dir is
deleted afterwards unless ``--keep``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
MAPPING = REPO_ROOT / "docs" / "examples" / "ingest_transactions.yaml"
HEADER = "txn_ref,card_number,merchant_name,amount_eur,category,booked_at,terminal,country_code,fraud"
BLOCK_ROWS = 200_000  # distinct row bodies; the file repeats them under new transaction refs
DAYS = 30


def _row_bodies(seed: int) -> list[str]:
    """Everything of a row but its ref: cards, merchants (some quoted, with commas), amounts,
    categories, local times over DAYS days (the spring DST change included), terminals,
    countries and a fraud flag (about 0.5 %)."""
    rng = random.Random(seed)
    start = dt.datetime(2026, 3, 15)
    merchants = [f'"Shop {i}, Berlin"' if i % 3 == 0 else f"Shop {i}" for i in range(5_000)]
    bodies = []
    for _ in range(BLOCK_ROWS):
        card = 4_000_000_000_000_000 + rng.randrange(200_000)
        local = start + dt.timedelta(seconds=rng.randrange(DAYS * 86_400))
        bodies.append(f"{card},{rng.choice(merchants)},{rng.lognormvariate(3, 1):.2f},"
                      f"{rng.choice(('food_net', 'bakery', 'retail_net', 'fuel', 'kiosk'))},"
                      f"{local:%d.%m.%Y %H:%M:%S},T-{rng.randrange(500)},{rng.choice(('DE', 'AT', 'FR', 'NL'))},"
                      f"{int(rng.random() < 0.005)}\n")
    return bodies


def write_export(path: Path, size_mb: float, bodies: list[str]) -> int:
    """Write about ``size_mb`` MB of rows; returns the row count."""
    target = size_mb * 2**20
    rows = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write(HEADER + "\n")
        written = len(HEADER) + 1
        while written < target:
            chunk = "".join(f"{rows + i},{body}" for i, body in enumerate(bodies))
            out.write(chunk)
            written += len(chunk.encode())
            rows += len(bodies)
    return rows


def run_ingest(path: Path, work: Path) -> dict:
    """Ingest ``path`` in a process of its own; sample the RSS of its process tree."""
    env = {**os.environ, "TESSERA__LAKE__ROOT": str(work / "lake"),
           "TESSERA__EVENTS__HISTORY_URI": str(work / "history")}
    log = work / f"{path.stem}.log"
    command = [sys.executable, "-m", "jobs.ingest", "transactions", str(path), "--mapping", str(MAPPING),
               "--profile", "local", "--max-reject-fraction", "1"]
    peak_total = peak_jvm = 0
    began = time.monotonic()
    with open(log, "w") as output:  # a file, not a pipe: nothing can block the child
        child = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        process = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                sizes = [p.memory_info().rss for p in tree]
            except psutil.Error:  # a process of the tree ended while sampled
                continue
            peak_total = max(peak_total, sum(sizes))
            peak_jvm = max(peak_jvm, max(sizes[1:], default=0))
            time.sleep(0.2)
    wall_s = time.monotonic() - began
    text = log.read_text()
    read = re.search(r"rows read\s+([0-9,]+)", text)
    landed = re.search(r"rows landed\s+([0-9,]+)", text)
    if child.returncode != 0 or read is None or landed is None:
        kept = Path(tempfile.gettempdir()) / f"bench-ingest-{path.parent.name}-failed.log"
        shutil.copy(log, kept)  # the work dir goes; the log stays, with the JVM's side of the story
        causes = [line for line in text.splitlines() if re.search(r"(Error|Exception)\b", line)][:10]
        raise RuntimeError(f"ingest failed ({child.returncode}) for {path} after {wall_s:.0f} s; log kept in "
                           f"{kept}; first errors:\n" + "\n".join(causes))
    rows_read = int(read.group(1).replace(",", ""))
    return {"rows_read": rows_read, "rows_landed": int(landed.group(1).replace(",", "")),
            "wall_s": round(wall_s, 1), "rows_per_s": round(rows_read / wall_s),
            "peak_rss_mb": round(peak_total / 2**20), "peak_jvm_rss_mb": round(peak_jvm / 2**20)}


def report(results: list[dict], meta: dict) -> str:
    lines = ["# Ingest benchmark", "",
             f"{meta['when']}, {meta['cpus']} cores, profile `local` (driver memory {meta['driver_memory']}); "
             f"`python bench/bench_ingest.py`: a CSV in the foreign shape of "
             f"`docs/examples/ingest_transactions.yaml` (quoted merchants, Berlin local times over {DAYS} days, a "
             f"fraud flag) ingested by `python -m jobs.ingest` in a process of its own. Peak RSS: the ingest's "
             f"process tree (Python and the Spark JVM), sampled every 0.2 s; rows/s over the command's wall time, "
             f"JVM start-up included. Load average {meta['load_before']} at the start.", "",
             "| file | rows | wall | rows/s | peak RSS (tree) | of which the JVM |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['file_mb']:,.0f} MB | {r['rows_read']:,} | {r['wall_s']:.0f} s | {r['rows_per_s']:,} | "
              f"{r['peak_rss_mb']:,} MB | {r['peak_jvm_rss_mb']:,} MB |" if "failed" not in r else
              f"| {r['file_mb']:,.0f} MB | {r['rows_read']:,} | failed: {r['failed']} | | | |" for r in results]
    if len(results) > 1 and not any("failed" in r for r in results):
        small, large = results[0], results[-1]
        lines += ["", f"{large['file_mb'] / small['file_mb']:.1f}x the file, "
                      f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x the peak RSS: the file streams through "
                      f"Spark (persisted MEMORY_AND_DISK, spilled past the heap), it is never held whole."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 1000])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/tessera-bench-ingest"))
    parser.add_argument("--keep", action="store_true", help="keep the exports, history and lake")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from plumbing import services
    from plumbing.config import load_config

    cfg = load_config("local")
    services.up(cfg)  # MLflow records the ingest runs; services already running are reused
    meta = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "driver_memory": cfg.spark.driver_memory, "load_before": f"{os.getloadavg()[0]:.1f}",
            "python": platform.python_version()}
    bodies = _row_bodies(args.seed)
    results = []
    try:
        for size in args.sizes_mb:
            work = args.work_dir / f"{size:g}mb"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            path = work / "cards.csv"
            began = time.monotonic()
            rows = write_export(path, size, bodies)
            print(f"wrote {path} ({path.stat().st_size / 2**20:,.0f} MB, {rows:,} rows) in "
                  f"{time.monotonic() - began:.0f} s; ingesting ...", flush=True)
            file_mb = round(path.stat().st_size / 2**20, 1)
            try:
                result = {"file_mb": file_mb, **run_ingest(path, work)}
            except RuntimeError as error:  # recorded: a size that does not go through is a result too
                print(error, file=sys.stderr, flush=True)
                result = {"file_mb": file_mb, "rows_read": rows, "failed": str(error).splitlines()[-1]}
            print(json.dumps(result), flush=True)
            results.append(result)
            _write_results(results, meta)  # after each size: a later failure keeps the earlier figures
            if not args.keep:
                shutil.rmtree(work)
    finally:
        if not args.keep:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    print(report(results, meta))
    return 0


def _write_results(results: list[dict], meta: dict) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "ingest.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (RESULTS_DIR / "ingest.md").write_text(report(results, meta))


if __name__ == "__main__":
    sys.exit(main())
