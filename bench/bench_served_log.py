"""Served-features logging under load: the API's latency with its sample log on and off, what
lands in ``served_features``, and what a kill loses.

    python bench/bench_served_log.py                 # 10 s per measurement, 3 rounds, sample 0.1
    python bench/bench_served_log.py --quick         # 3 s, one round
    python bench/bench_served_log.py --sample-fraction 1.0

Two API servers side by side (``bench_serving``'s: the same data, model and uvicorn setup),
identical but for ``serving.served_log.sample_fraction`` (0: off, and the one measured), each
with a lake of its own. wrk loads ``/v1/predict`` (one transaction a request) at
concurrency 8, the two servers in turn per round so the machine's noise hits both; the
best round of each counts (p50, p99, requests/s).

Then, on the logging server: the rows its metrics say were sampled, dropped and written,
and the rows the table holds once the server stopped (its last append is on shutdown).
Last, a kill: the logging server restarted, loaded, and killed with SIGKILL mid-load; the
rows sampled before the kill (its /metrics, read just before) against the rows the table
holds: the loss, at most what one ``flush_interval_s`` buffers.
Results: bench/results/served_log.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from deltalake import DeltaTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's bench package
from bench import bench_serving as serving  # noqa: E402
from plumbing import services  # noqa: E402
from plumbing.config import PROFILE_ENV, load_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PORTS = {"off": 8720, "on": 8721}
CONCURRENCY = 8


def metric(url: str, outcome: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    match = re.search(rf'^tessera_served_log_rows_total{{outcome="{outcome}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def table_rows(lake: Path) -> int:
    path = lake / "served_features"
    return DeltaTable(str(path)).to_pyarrow_dataset().count_rows() if (path / "_delta_log").exists() else 0


def start_api(name: str, fraction: float, lake: Path, work: Path):
    env = {**os.environ, PROFILE_ENV: "local", "TESSERA__LAKE__ROOT": str(lake),
           "TESSERA__SERVING__SERVED_LOG__SAMPLE_FRACTION": str(fraction)}
    log = work / f"api_{name}.log"
    process = serving.start([sys.executable, serving.__file__, "--serve-api", str(PORTS[name]), "--api-workers", "1"],
                            env, log)
    serving.wait_until_ready(f"http://127.0.0.1:{PORTS[name]}/readyz", process, log)
    return process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, one round")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample-fraction", type=float, default=0.1, help="of the logging server (default 0.1)")
    args = parser.parse_args(argv)
    seconds, rounds = (3, 1) if args.quick else (args.seconds, args.rounds)

    cfg = load_config("local")
    services.up(cfg, only=["redis", "mlflow"])
    serving.ensure_model(cfg)
    serving.write_online_rows(cfg)
    work = Path(tempfile.mkdtemp(prefix="bench_served_log_"))
    lakes = {name: work / f"lake_{name}" for name in PORTS}
    fraction = {"off": 0.0, "on": args.sample_fraction}
    flush_interval_s = cfg.serving.served_log.flush_interval_s
    rng = np.random.default_rng(5)
    script = serving.wrk_script(work / "predict.lua", [serving.api_predict_body(*serving.entity_sample(rng, 1), rng)
                                                       for _ in range(serving.BODIES_PER_TARGET)])
    servers = {name: start_api(name, fraction[name], lakes[name], work) for name in PORTS}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
    runs: dict[str, list[dict]] = {name: [] for name in PORTS}
    try:
        for name in PORTS:
            serving.run_wrk(urls[name] + "/v1/predict", script, CONCURRENCY, 2)  # warm-up
        for round_number in range(rounds):
            for name in (("off", "on") if round_number % 2 == 0 else ("on", "off")):
                run = serving.run_wrk(urls[name] + "/v1/predict", script, CONCURRENCY, seconds)
                runs[name].append(run)
                print(f"round {round_number + 1}, logging {name}: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
                      f"{run['requests_per_s']:,.0f} req/s", flush=True)
        counted = {outcome: metric(urls["on"], outcome) for outcome in ("sampled", "dropped", "written", "failed")}
        served = sum(run["requests"] for run in runs["on"])
    finally:
        for process in servers.values():
            serving.stop(process)  # TERM: the logging server appends what it still buffers
    landed = table_rows(lakes["on"])

    # The kill: restart, load in the background, SIGKILL mid-load.
    killed_lake = work / "lake_killed"
    victim = start_api("on", args.sample_fraction, killed_lake, work)
    load = threading.Thread(target=lambda: serving.run_wrk(urls["on"] + "/v1/predict", script, CONCURRENCY,
                                                           int(flush_interval_s * 3)))
    load.start()
    time.sleep(flush_interval_s * 1.5)
    sampled_before_kill = metric(urls["on"], "sampled")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    load.join()
    killed_landed = table_rows(killed_lake)

    best = {name: min(name_runs, key=lambda run: run["p99_ms"]) for name, name_runs in runs.items()}
    result = {
        "benchmark": "served_log", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average_1m": round(os.getloadavg()[0], 1),
        "sample_fraction": args.sample_fraction, "concurrency": CONCURRENCY, "seconds": seconds, "rounds": rounds,
        "off": best["off"], "on": best["on"],
        "p99_ratio_on_to_off": round(best["on"]["p99_ms"] / best["off"]["p99_ms"], 3),
        "p50_ratio_on_to_off": round(best["on"]["p50_ms"] / best["off"]["p50_ms"], 3),
        "logged_requests": served, "metrics": counted, "rows_in_table": landed,
        "kill": {"flush_interval_s": flush_interval_s, "sampled_before_kill": sampled_before_kill,
                 "rows_in_table": killed_landed, "lost_at_most": sampled_before_kill - killed_landed},
        "all_runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "served_log.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "served_log.md").write_text(
        "### Served-features log under load (wrk, /v1/predict, one transaction a request)\n\n"
        f"Two identical API servers but for the sample log (fraction {args.sample_fraction}), concurrency "
        f"{CONCURRENCY}, best of {rounds} interleaved rounds of {seconds} s; {result['when']}, load average "
        f"{result['load_average_1m']} on {result['machine']}.\n\n"
        "| logging | p50 ms | p99 ms | requests/s |\n|---|---:|---:|---:|\n"
        f"| off | {best['off']['p50_ms']} | {best['off']['p99_ms']} | {best['off']['requests_per_s']:,.0f} |\n"
        f"| on | {best['on']['p50_ms']} | {best['on']['p99_ms']} | {best['on']['requests_per_s']:,.0f} |\n\n"
        f"p99 on/off: **{result['p99_ratio_on_to_off']}x**. Rows: {counted['sampled']:,.0f} sampled, "
        f"{counted['dropped']:,.0f} dropped (full buffer), {counted['failed']:,.0f} failed; {landed:,} in "
        f"`served_features` after a clean stop. Killed with SIGKILL mid-load: {sampled_before_kill:,.0f} sampled "
        f"before the kill, {killed_landed:,} in the table (at most one {flush_interval_s:g} s buffer is lost).\n")
    print((RESULTS / "served_log.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
