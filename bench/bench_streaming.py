"""Streaming benchmark: the stream_features job at fixed input rates, end to end, and its
Redis writer beside Feast's on the rows the stream wrote.

The input comes from a Kafka broker of the run's own (``--source kafka``, the default:
the profiles' source) or from a landing folder (``--source files``).

    python bench/bench_streaming.py                    # 1k, 5k, 20k events/s, 120 s each, 1M users;
                                                       # then 5k events/s with 20k users
    python bench/bench_streaming.py --quick            # the same rates, 20 s each
    python bench/bench_streaming.py --rates 5000 --duration 90
    python bench/bench_streaming.py --rates 1000 --duration 5 --dense-users 0 --writer-rounds 0 --out /tmp/b

Populations: ``--users`` (1,000,000 by default, with 200,000 merchants: at 5k events/s a
user has ~430 events a day) for every rate, then one run at 5k events/s with
``--dense-users`` (20,000: ~21,600 events per user a day). The dense run is the stress
case of the job's design: a touched user's 24 h of activity and 7 d of transactions go to
Spark event by event, so its micro-batches grow as those histories fill.

For each run, on a fresh lake, landing folder and checkpoint, with a Redis server and (for
Kafka) a broker of its own (free ports, started by ``plumbing.services``) and the
profile's MLflow server:

1. start the job (``python -m jobs.stream_features``, its default processing-time trigger)
   and give it two small warm-up files, so the first micro-batches' start-up (Python
   workers, JIT) is not counted;
2. generate live events at the rate for the duration (``jobs.generate_events live``: real
   time, one window per second and event type - records on the topics, acknowledged at
   the end of their second, or a file - ``--users`` users);
3. wait until the job has processed every event (at most ``--drain-timeout`` seconds),
   then stop it (SIGTERM).

Figures, from the job's progress lines (one per micro-batch, timestamped as they arrive):

- sustained throughput: events processed / (end of the last micro-batch - start of the
  generator); equal to the rate when the job keeps up;
- capacity: events / busy time (sum of micro-batch durations);
- freshness: each micro-batch reports the lag from event time to the end of its Redis
  writes, p50 and p99 over its events; the figures here weight the micro-batches by
  their events: the weighted median of the per-batch p50s, and the weighted 99th
  percentile of the per-batch p99s (plus the worst micro-batch's p99). The generator
  sends a second of events at the end of that second (a file, or a window of Kafka
  records), so about 1 s of every lag is the input's own;
- steady-state freshness: the same p99 without the micro-batches that ended in the first
  ``--warm-up-s`` seconds of the input. The step from idle to the full rate meets a JVM
  whose JIT has not yet compiled the paths that rate makes hot: those first micro-batches
  are slower, and both figures are reported;
- where the time goes: mean seconds per micro-batch of each step (collect = the one Spark
  job reading and parsing the files; features = the catalog functions, one Spark job per
  table, side by side; redis; lake = bronze and dead-letter appends, beside the features).
  With Kafka, collect includes reading the micro-batch's records from the broker.

Writer throughput (after the last run, same Redis, same rows): the newest
``user_transaction_features`` row per user that the stream stored (``--writer-rows`` of
them), read back from Redis,
written into two empty projects by Feast's ``FeatureStore.write_to_online_store`` and by
the job's writer (``OnlineStoreWriter``), best of ``--writer-rounds``; the two projects'
hashes are then compared byte for byte.

Results: bench/results/streaming.json, streaming.md and streaming.png (lag over time), or
in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

import feature_repo
from plumbing import services
from plumbing.config import REPO_ROOT, Config, load_config
from plumbing.online_store import (
    FEAST_PROJECT,
    OnlineStoreReader,
    OnlineStoreWriter,
    RedisSettings,
    entity_key_prefix,
    redis_client,
    redis_key,
)
from transformations.catalog import USER_TRANSACTION_FEATURES

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RATES = (1_000, 5_000, 20_000)
DENSE_RATE = 5_000
WRITER_ROWS = 20_000  # stored rows the writer comparison writes
PROGRESS = re.compile(r"^stream-features batch=(\d+) (.*)$")
STEPS = ("collect", "features", "redis", "lake")
TABLE = USER_TRANSACTION_FEATURES
FEAST_BENCH_PROJECT, WRITER_BENCH_PROJECT = "bench_feast", "bench_writer"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weighted_percentile(values: list[float], weights: list[int], share: float) -> float | None:
    """The value at which the cumulative weight (values in ascending order) reaches ``share``."""
    pairs = sorted((value, weight) for value, weight in zip(values, weights, strict=True) if weight)
    total = sum(weight for _, weight in pairs)
    running = 0
    for value, weight in pairs:
        running += weight
        if running >= share * total:
            return value
    return None


class Job:
    """The streaming job as a process, its progress lines timestamped as they arrive."""

    def __init__(self, env: dict[str, str], checkpoint: Path, trigger_interval_s: float | None):
        command = [sys.executable, "-m", "jobs.stream_features", "--checkpoint", str(checkpoint)]
        if trigger_interval_s is not None:
            command += ["--trigger-interval-s", str(trigger_interval_s)]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.batches: list[tuple[float, dict[str, str]]] = []  # (arrival time, key=value pairs)
        self.tail: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            match = PROGRESS.match(line.strip())
            if match:
                values = dict(pair.split("=", 1) for pair in match.group(2).split())
                self.batches.append((time.time(), {"batch": match.group(1), **values}))
            self.tail = (self.tail + [line])[-40:]

    def accepted(self) -> int:
        return sum(int(values["accepted"]) for _, values in self.batches)

    def wait_for_accepted(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.accepted() < count and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("the job exited:\n" + "".join(self.tail))
            time.sleep(0.2)
        return self.accepted() >= count

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def generate(env: dict[str, str], landing: Path | None, rate: float, duration_s: float, users: int, seed: int,
             realtime: bool = True) -> int:
    """Run the live generator (into ``landing``, or with None to the profile's Kafka
    topics); return the events it wrote."""
    out = ["--out", str(landing)] if landing else []
    command = [sys.executable, "-m", "jobs.generate_events", "live", *out, "--rate", str(rate),
               "--duration", str(duration_s), "--users", str(users), "--seed", str(seed), "--no-progress"]
    if not realtime:
        command.append("--as-fast-as-possible")
    out = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return int(re.search(r"generated live: ([\d,]+) events", out).group(1).replace(",", ""))


# ------------------------------------------------------------------ the writers on the stream's rows
def stored_rows(cfg: Config, max_rows: int) -> pd.DataFrame:
    """``user_transaction_features`` rows the stream stored (one per user, at most
    ``max_rows``), read back."""
    client = redis_client(RedisSettings.from_config(cfg))
    prefix, suffix = entity_key_prefix(TABLE.entity_column), FEAST_PROJECT.encode()
    users = []
    for key in client.scan_iter(match=prefix + b"*" + suffix, count=10_000):
        entity_id = key[len(prefix) + 4:len(key) - len(suffix)]
        users.append(entity_id.decode())
        if len(users) == max_rows:
            break
    refs = [f"{TABLE.name}:{name}" for name in TABLE.feature_names]
    reader = OnlineStoreReader(cfg, tables=[TABLE])
    rows = []
    for start in range(0, len(users), 5_000):
        chunk = users[start:start + 5_000]
        for user, values in zip(chunk, reader.read(refs, [{TABLE.entity_column: user} for user in chunk]), strict=True):
            first = values[refs[0]]
            if first.status != "present":
                continue
            rows.append({TABLE.entity_column: user, TABLE.timestamp_column: first.event_time,
                         **{name: values[ref].value for name, ref in zip(TABLE.feature_names, refs, strict=True)}})
    frame = pd.DataFrame(rows)
    for feature in TABLE.features:  # nulls came back as None: give each column its type
        frame[feature.name] = frame[feature.name].astype("Int64" if feature.dtype == "bigint" else "float64")
    return frame


def _clear(client, project: str) -> None:
    for key in client.scan_iter(match=b"*" + project.encode(), count=10_000):
        client.delete(key)


def compare_writers(cfg: Config, rounds: int, max_rows: int) -> dict:
    """Feast's write_to_online_store beside the job's writer, same rows, same Redis."""
    client = redis_client(RedisSettings.from_config(cfg))
    rows = stored_rows(cfg, max_rows)
    if rows.empty:
        return {"rows": 0}
    with tempfile.TemporaryDirectory() as feast_dir:
        store = feature_repo.apply(cfg, project=FEAST_BENCH_PROJECT, directory=Path(feast_dir))
        writer = OnlineStoreWriter(cfg, project=WRITER_BENCH_PROJECT)
        write = {"feast": lambda: store.write_to_online_store(TABLE.name, rows),
                 "writer": lambda: writer.write(TABLE, rows)}
        seconds: dict[str, list[float]] = {"feast": [], "writer": []}
        for round_number in range(rounds):
            _clear(client, FEAST_BENCH_PROJECT)
            _clear(client, WRITER_BENCH_PROJECT)
            for name in ("feast", "writer") if round_number % 2 == 0 else ("writer", "feast"):
                started = time.perf_counter()
                write[name]()
                seconds[name].append(time.perf_counter() - started)
    different = 0
    users = rows[TABLE.entity_column].tolist()
    for start in range(0, len(users), 5_000):
        pipe = client.pipeline(transaction=False)
        for user in users[start:start + 5_000]:
            pipe.hgetall(redis_key(TABLE.entity_column, user, FEAST_BENCH_PROJECT))
            pipe.hgetall(redis_key(TABLE.entity_column, user, WRITER_BENCH_PROJECT))
        replies = pipe.execute()
        different += sum(a != b or not a for a, b in zip(replies[0::2], replies[1::2], strict=True))
    _clear(client, FEAST_BENCH_PROJECT)
    _clear(client, WRITER_BENCH_PROJECT)
    feast_rate = len(rows) / min(seconds["feast"])
    writer_rate = len(rows) / min(seconds["writer"])
    return {"table": TABLE.name, "features": len(TABLE.features), "rows": len(rows), "rounds": rounds,
            "feast_rows_per_s": round(feast_rate), "writer_rows_per_s": round(writer_rate),
            "ratio": round(writer_rate / feast_rate, 1), "hashes_different": different,
            "all_runs_seconds": {name: [round(value, 3) for value in values] for name, values in seconds.items()},
            "load_average_1m": round(os.getloadavg()[0], 1)}


# ------------------------------------------------------------------ one rate
def run_rate(profile: str, rate: int, duration_s: float, users: int, trigger_interval_s: float | None,
             drain_timeout_s: float, warm_up_s: float, writer_rounds: int = 0, writer_rows: int = WRITER_ROWS,
             source: str = "kafka") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as scratch:
        root = Path(scratch)
        overrides = {"TESSERA__DATA_DIR": str(root / "data"), "TESSERA__REDIS__PORT": str(_free_port()),
                     "TESSERA__LAKE__ROOT": str(root / "lake"), "TESSERA__EVENTS__LANDING_DIR": str(root / "landing"),
                     "TESSERA__EVENTS__SOURCE": source,
                     "TESSERA__SERVICES__KAFKA__PORT": str(_free_port()),
                     "TESSERA__SERVICES__KAFKA__CONTROLLER_PORT": str(_free_port())}
        cfg = load_config(profile, environ={**os.environ, **overrides})
        own_services = ["redis", "kafka"] if source == "kafka" else ["redis"]
        services.up(cfg, only=own_services)
        env = {**os.environ, **overrides}
        landing = root / "landing" if source == "files" else None
        load_at_start = round(os.getloadavg()[0], 1)
        job = Job(env, root / "checkpoint", trigger_interval_s)
        writers = None
        try:
            warm_up = 0
            for seed in (1, 3):  # the first micro-batches start Python workers and warm the JIT
                warm_up += generate(env, landing, rate=100, duration_s=1, users=users, seed=seed,
                                    realtime=False)
                if not job.wait_for_accepted(warm_up, timeout_s=300):
                    raise RuntimeError("the warm-up micro-batch did not finish:\n" + "".join(job.tail))
            warm_batches = len(job.batches)
            started = time.time()
            generated = generate(env, landing, rate=rate, duration_s=duration_s, users=users, seed=2)
            generator_s = time.time() - started
            drained = job.wait_for_accepted(warm_up + generated, timeout_s=drain_timeout_s)
            job.stop()
            if writer_rounds:
                writers = compare_writers(cfg, writer_rounds, writer_rows)
        finally:
            job.stop()
            services.down(cfg, only=own_services)

    timeline = job.batches[warm_batches:]
    batches = [values for _, values in timeline]
    processed = sum(int(values["accepted"]) for values in batches)
    finished = timeline[-1][0] if timeline else started
    with_lag = [values for values in batches if "lag_p50_s" in values]  # batches with accepted events
    events = [int(values["accepted"]) for values in with_lag]
    p50s = [float(values["lag_p50_s"]) for values in with_lag]
    p99s = [float(values["lag_p99_s"]) for values in with_lag]
    steady = [(float(values["lag_p99_s"]), int(values["accepted"]))
              for arrived, values in timeline if "lag_p50_s" in values and arrived - started >= warm_up_s]
    busy_s = sum(float(values["duration_s"]) for values in batches)
    return {
        "source": source, "rate": rate, "duration_s": duration_s, "users": users, "generated": generated,
        "generator_s": round(generator_s, 1), "processed": processed, "drained": drained,
        "backlog": generated - processed, "micro_batches": len(batches),
        "sustained_events_per_s": round(processed / (finished - started)) if processed else 0,
        "capacity_events_per_s": round(processed / busy_s) if busy_s else 0,
        "mean_batch_s": round(busy_s / len(batches), 2) if batches else None,
        "mean_step_s": {step: round(sum(float(values.get(f"{step}_s", 0)) for values in batches) / len(batches), 2)
                        for step in STEPS} if batches else {},
        "lag_p50_s": weighted_percentile(p50s, events, 0.50),
        "lag_p99_s": weighted_percentile(p99s, events, 0.99),
        "worst_batch_p99_s": max(p99s) if p99s else None,
        "warm_up_s": warm_up_s,
        "steady_lag_p99_s": weighted_percentile([p99 for p99, _ in steady], [n for _, n in steady], 0.99),
        "steady_worst_batch_p99_s": max((p99 for p99, _ in steady), default=None),
        "online_written": sum(int(values["online_written"]) for values in batches),
        "load_average_1m": load_at_start,
        "timeline": [{"t_s": round(arrived - started, 2), "accepted": int(values["accepted"]),
                      "lag_p50_s": float(values["lag_p50_s"]), "lag_p99_s": float(values["lag_p99_s"]),
                      "duration_s": float(values["duration_s"]),
                      "feature_input_events": int(values["feature_input_events"])}
                     for arrived, values in timeline if "lag_p50_s" in values],
        "writers": writers,
    }


# ------------------------------------------------------------------ the report
def _run_name(run: dict) -> str:
    return f"{run['rate']:,} ev/s, {run['users']:,} users"


def plot(results: list[dict], path: Path, warm_up_s: float) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    figure, (axes, cost) = plt.subplots(1, 2, figsize=(12, 4))
    for run in results:
        times = [point["t_s"] for point in run["timeline"]]
        line, = axes.plot(times, [point["lag_p99_s"] for point in run["timeline"]], label=f"{_run_name(run)} p99")
        axes.plot(times, [point["lag_p50_s"] for point in run["timeline"]], linestyle=":", color=line.get_color(),
                  label=f"{_run_name(run)} p50")
    axes.axhline(5, color="grey", linewidth=0.8, linestyle="--")
    axes.axvline(warm_up_s, color="grey", linewidth=0.8, linestyle=":")  # steady state from here
    axes.set_xlabel("seconds since the input started")
    axes.set_ylabel("lag, event time to Redis (s)")
    axes.set_yscale("log")
    axes.set_title("stream_features: freshness per micro-batch")
    axes.legend(fontsize=7)
    for run in results:
        cost.scatter([point["feature_input_events"] for point in run["timeline"]],
                     [point["duration_s"] for point in run["timeline"]], s=12, label=_run_name(run))
    cost.set_xlabel("rows computed over (events and precounted rows)")
    cost.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    cost.set_ylabel("micro-batch duration (s)")
    cost.set_title("what a micro-batch costs")
    cost.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_report(results: list[dict], args: argparse.Namespace) -> None:
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    results_dir = args.out
    results_dir.mkdir(parents=True, exist_ok=True)
    writers = next((run["writers"] for run in reversed(results) if run.get("writers")), None)
    (results_dir / "streaming.json").write_text(json.dumps(
        {"benchmark": "streaming", "when": when, "machine": machine, "source": args.source,
         "trigger_interval_s": args.trigger_interval_s or "job default", "runs": results, "writers": writers},
        indent=2) + "\n")
    has_plot = plot(results, results_dir / "streaming.png", args.warm_up_s)

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    rows = "\n".join(
        f"| {run['rate']:,} | {run['users']:,} | {run['duration_s']:.0f} | {run['generated']:,} | {run['processed']:,} "
        f"| {'yes' if run['drained'] else 'no, ' + format(run['backlog'], ',') + ' left'} "
        f"| **{run['sustained_events_per_s']:,}** | {run['capacity_events_per_s']:,} | {run['micro_batches']} "
        f"| {seconds(run['mean_batch_s'])} | {seconds(run['lag_p50_s'])} | **{seconds(run['lag_p99_s'])}** "
        f"| {seconds(run['worst_batch_p99_s'])} | **{seconds(run['steady_lag_p99_s'])}** "
        f"| {seconds(run['steady_worst_batch_p99_s'])} | {run['load_average_1m']} |"
        for run in results)
    def thirds(run: dict) -> str:
        """Mean rows computed over and seconds per micro-batch, first third against last third."""
        points = run["timeline"]
        third = max(len(points) // 3, 1)
        parts = [points[:third], points[-third:]]
        return " | ".join(f"{sum(p['feature_input_events'] for p in part) / len(part):,.0f} "
                          f"| {sum(p['duration_s'] for p in part) / len(part):.1f}" for part in parts)

    growth = "\n".join(f"| {run['rate']:,} | {run['users']:,} | {thirds(run)} |" for run in results if run["timeline"])
    steps = "\n".join(
        f"| {run['rate']:,} | {run['users']:,} | "
        + " | ".join(f"{run['mean_step_s'].get(step, 0):.2f}" for step in STEPS)
        + f" | {seconds(run['mean_batch_s'])} |" for run in results)
    text = (
        f"### Streaming: {'Kafka topics' if args.source == 'kafka' else 'landing files'} -> stream_features "
        "-> Redis\n\n"
        f"{when} on {machine}; `python bench/bench_streaming.py{' --quick' if args.quick else ''}`: "
        "trigger "
        + (f"every {args.trigger_interval_s} s" if args.trigger_interval_s else "the job's default (every 0.5 s)")
        + ", each run on a fresh lake, "
        "checkpoint and Redis, after two warm-up micro-batches. Freshness = event time to the end of the "
        "micro-batch's Redis writes (the generator sends each second of events at its end, as a file or "
        "as Kafka records, so ~1 s of it is the input's own); p50/p99 weight each micro-batch's own p50/p99 "
        "by its events. Steady state leaves "
        f"out the micro-batches that ended in the first {args.warm_up_s:.0f} s of the input: the step from idle "
        "to the full rate meets a JVM whose JIT has not compiled that rate's hot paths yet. Goal: p99 under "
        "5 s at 5,000 events/s. The machine is shared: load average at each start in the last column.\n\n"
        "| events/s in | users | s | generated | processed | drained | sustained ev/s | capacity ev/s "
        "| micro-batches | mean batch s | lag p50 s | lag p99 s | worst batch p99 s | steady lag p99 s "
        "| steady worst batch p99 s | load avg |\n"
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n\n"
        "Where a micro-batch's time goes (mean seconds; features, Redis and lake run side by side, so they "
        "overlap):\n\n"
        "| events/s in | users | collect (read + parse, 1 Spark job) | features (catalog functions, 1 job per "
        "table) | Redis write | lake appends | whole micro-batch |\n|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{steps}\n\n"
        "What a micro-batch costs grows with the history it computes over: the feature jobs run the batch "
        "functions over the new events and the history of the entities they touch (a merchant's as a few "
        "edge events and one precounted row; a user's activity and transactions event by event), and "
        "the users' history fills as the run goes on (mean per micro-batch):\n\n"
        "| events/s in | users | first third: rows computed over | s | last third: rows computed over | s |\n"
        "|---:|---:|---:|---:|---:|---:|\n"
        f"{growth}\n")
    if writers and writers.get("rows"):
        text += (
            "\nRedis writers on the rows the stream stored (newest `user_transaction_features` row per user, "
            f"{writers['features']} features), same Redis, same run, best of {writers['rounds']}:\n\n"
            "| writer | rows | rows/s |\n|---|---:|---:|\n"
            f"| Feast `write_to_online_store` | {writers['rows']:,} | {writers['feast_rows_per_s']:,} |\n"
            f"| stream_features' writer (`OnlineStoreWriter`) | {writers['rows']:,} | "
            f"{writers['writer_rows_per_s']:,} |\n\n"
            f"Ratio: **{writers['ratio']}x** Feast (goal: 10x). Hashes byte-identical: "
            f"{writers['rows'] - writers['hashes_different']:,} of {writers['rows']:,}.\n")
    if has_plot:
        text += "\n![lag over time, and micro-batch cost against the rows computed over](streaming.png)\n"
    (results_dir / "streaming.md").write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)), help="events/s, comma-separated")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of input per rate (default 120)")
    parser.add_argument("--warm-up-s", type=float, default=15.0,
                        help="micro-batches ending this early in the input are left out of the steady-state "
                             "freshness (default 15)")
    parser.add_argument("--quick", action="store_true", help="20 s per rate")
    parser.add_argument("--users", type=int, default=1_000_000,
                        help="users in the generated traffic of every rate (default 1000000)")
    parser.add_argument("--dense-users", type=int, default=20_000,
                        help=f"then one run at {DENSE_RATE:,} events/s with this many users (default 20000; 0: skip)")
    parser.add_argument("--writer-rows", type=int, default=WRITER_ROWS,
                        help=f"stored rows the writer comparison writes (default {WRITER_ROWS})")
    parser.add_argument("--trigger-interval-s", type=float, help="default: the job's own")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds to wait for the job to catch up after the input ends (default 120)")
    parser.add_argument("--writer-rounds", type=int, default=2,
                        help="rounds of the Feast/writer comparison after the last rate (default 2; 0: skip)")
    parser.add_argument("--profile", default="local")
    parser.add_argument("--source", choices=("kafka", "files"), default="kafka",
                        help="where the events come from: a Kafka broker of each run's own (default), or a "
                             "landing folder")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"folder of the report files (default {RESULTS.relative_to(REPO_ROOT)})")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.drain_timeout, args.writer_rounds = 20.0, 60.0, 1

    services.up(load_config(args.profile), only=["mlflow"])
    runs = [(int(rate), args.users) for rate in args.rates.split(",")]
    if args.dense_users:
        runs.append((DENSE_RATE, args.dense_users))
    results = []
    for number, (rate, users) in enumerate(runs):
        print(f"== {rate:,} events/s for {args.duration:.0f} s, {users:,} users", flush=True)
        writer_rounds = args.writer_rounds if number == len(runs) - 1 else 0
        results.append(run_rate(args.profile, rate, args.duration, users, args.trigger_interval_s,
                                args.drain_timeout, args.warm_up_s, writer_rounds, args.writer_rows, args.source))
        print(json.dumps({key: value for key, value in results[-1].items() if key != "timeline"}), flush=True)
    write_report(results, args)
    print((args.out / "streaming.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
