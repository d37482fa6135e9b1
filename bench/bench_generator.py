"""Throughput and peak memory of the event generator (history mode).

    python bench/bench_generator.py                         # 1M and 10M events, Parquet and JSON lines
    python bench/bench_generator.py --sizes 100000 --formats parquet jsonl

Each run is a separate child process (``python -m jobs.generate_events history``), so
its peak memory is its own: the RSS high-water mark the kernel reports for the child
(``os.wait4`` -> ``ru_maxrss``). Throughput is events / the generator's own elapsed time
(interpreter start-up excluded; the wall time with start-up is reported too). Output
goes to a temporary folder that is deleted afterwards.

Writes ``bench/results/generator.json`` and ``bench/results/generator.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def run_once(events: int, fmt: str, work_dir: Path, days: int) -> dict:
    out = work_dir / f"{fmt}-{events}"
    command = [sys.executable, "-m", "jobs.generate_events", "history", "--out", str(out), "--events", str(events),
               "--days", str(days), "--format", fmt, "--no-progress", "--overwrite"]
    log = work_dir / f"{fmt}-{events}.log"
    began = time.monotonic()
    with open(log, "w") as output:  # a file, not a pipe: nothing can block the child
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
        # wait4 gives this child's own resource usage, including its peak RSS (KiB on Linux).
        _, status, usage = os.wait4(child.pid, 0)
    wall_s = time.monotonic() - began
    text = log.read_text()
    elapsed = re.search(r"elapsed: ([0-9.]+) s", text)
    if os.waitstatus_to_exitcode(status) != 0 or elapsed is None:
        raise RuntimeError(f"generator failed for {events} events:\n{text[-3000:]}")
    generator_s = float(elapsed.group(1))
    size_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out)
    return {
        "events": events,
        "format": fmt,
        "days": days,
        "generator_s": generator_s,
        "wall_s": round(wall_s, 2),
        "events_per_s": round(events / generator_s),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "output_mb": round(size_bytes / 2**20, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def markdown(results: list[dict], machine: dict) -> str:
    lines = [
        "# Event generator benchmark",
        "",
        f"{machine['date']}, {machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}. "
        "`python bench/bench_generator.py`; each run in its own process, history mode, "
        "throughput over the generator's own elapsed time.",
        "",
        f"Load average when the benchmark started: {machine['load_average_1m']:.1f} "
        "(above the CPU count, other work shared the machine and slowed the wall times; CPU s is less affected).",
        "",
        "| events | format | days | events/s | generator s | CPU s | wall s (with start-up) | peak RSS MB "
        "| output MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['events']:,} | {r['format']} | {r['days']} | {r['events_per_s']:,} "
                     f"| {r['generator_s']:.1f} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} "
                     f"| {r['output_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--formats", nargs="+", choices=("parquet", "jsonl"), default=["parquet", "jsonl"])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--work-dir", help="where the output is written and deleted (default: a temp folder)")
    args = parser.parse_args(argv)

    machine = {"date": dt.date.today().isoformat(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "platform": platform.platform(terse=True),
               "load_average_1m": round(os.getloadavg()[0], 1)}
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="tessera-bench-"))
    results = []
    try:
        for fmt in args.formats:
            for events in args.sizes:
                result = run_once(events, fmt, work_dir, args.days)
                print(f"{events:>12,} {fmt:8s} {result['events_per_s']:>10,} ev/s  "
                      f"peak RSS {result['peak_rss_mb']:>7.0f} MB  ({result['generator_s']:.1f} s)", flush=True)
                results.append(result)
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "generator.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    table = markdown(results, machine)
    (RESULTS_DIR / "generator.md").write_text(table)
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
