"""The whole pipeline on the embedded default, start to end, printing what it did.

    tessera demo [--events 300000] [--days 14] [--live-seconds 90] [--fresh]

1. start the local services (Redis, MLflow; and the S3 endpoint on the s3 profile);
2. generate the raw event history, unless it is already there (``--fresh`` regenerates);
3. batch features: compute, validate and publish the feature tables for the whole period
   (Delta + Redis), each tracked as an MLflow run;
4. apply the Feast registry of the profile;
5. train the fraud model on point-in-time features, register it, name the champion;
6. go live: generated events land as JSON lines, the streaming job turns them into
   online features, the HTTP API serves features and scores (three background processes,
   logs in ``<data_dir>/run/demo/``);
7. ask the API every few seconds while events arrive: the features and scores change;
8. stop the live processes and print a summary: table versions, MLflow runs, the model
   and its AUC beside the baseline, the stream's freshness and the API's latency.

A failing step stops the demo with the step's name and what to look at.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.fs as pafs

from plumbing import feature_stats, services
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.lake import LakeTable, table_uri
from plumbing.services import FeastUiService
from plumbing.storage import filesystem_and_root
from plumbing.tracking import FEATURE_TABLES_EXPERIMENT, configure_tracking, run_url, runs_url
from transformations.catalog import FEATURE_TABLES

MODEL_NAME = "tessera-fraud"
SKEW_MAX_PSI = 0.25  # tessera skew-check's default limit
SAMPLE_USERS = ("u000001", "u000002", "u000003")
SAMPLE_FEATURES = ["user_transaction_features:txn_count_1h", "user_transaction_features:txn_amount_sum_24h",
                   "user_activity_features:logins_1h"]


class StepFailed(Exception):
    """A step failed; the message says what to look at."""


def _step(number: int, text: str) -> None:
    print(f"\n== {number}. {text}", flush=True)


def _history_exists(cfg: Config, start: date) -> bool:
    """True when the history of this period is there (its first day's folder exists)."""
    uri = f"{cfg.events.history_uri}/transactions/date={start.isoformat()}"
    filesystem, root = filesystem_and_root(uri, cfg.storage_options(uri))
    return filesystem.get_file_info(root).type == pafs.FileType.Directory


# ------------------------------------------------------------------ background processes
@dataclass
class Background:
    """A process of the live part, in its own process group, its output in a log file."""

    name: str
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, command: list[str], log_dir: Path, env: dict[str, str]) -> Background:
        log = log_dir / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        print(f"  started {name} (pid {process.pid}), log {log}", flush=True)
        return cls(name, process, log)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the stream finishes its micro-batch), then SIGKILL after ``timeout_s``."""
        if not self.running():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------ talking to the API
@dataclass
class Api:
    base_url: str
    api_key: str
    latencies_ms: list[float] = field(default_factory=list)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"content-type": "application/json", "x-api-key": self.api_key})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        return answer

    def wait_ready(self, server: Background, timeout_s: float = 180.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not server.running():
                raise StepFailed(f"the API exited:\n{server.tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        raise StepFailed(f"the API was not ready within {timeout_s:.0f}s:\n{server.tail()}")


def _sample(api: Api, clock: str) -> None:
    """One round of sample requests: a few users' features and one score each."""
    answer = api.call("POST", "/v1/features", {"features": SAMPLE_FEATURES,
                                               "entities": [{"user_id": user} for user in SAMPLE_USERS]})
    transactions = [{"transaction_id": f"demo-{user}", "user_id": user, "merchant_id": "m00001", "amount": 250.0,
                     "currency": "EUR", "country": "DE", "channel": "web"} for user in SAMPLE_USERS]
    scores = api.call("POST", "/v1/predict", {"transactions": transactions})
    for user, result, prediction in zip(SAMPLE_USERS, answer["results"], scores["predictions"], strict=True):
        values = " ".join(f"{ref.split(':')[1]}={_shown(value, status)}"
                          for ref, value, status in zip(answer["features"], result["values"], result["statuses"],
                                                        strict=True))
        age = result["ages_seconds"].get("user_transaction_features")
        age_text = f"{age:7.1f}s" if age is not None else "      -"
        print(f"  {clock} {user} {values}  txn age {age_text}  score({prediction['transaction_id']} 250 EUR)="
              f"{prediction['score']:.4f}", flush=True)


def _score_many(api: Api, seed: int, count: int = 400) -> None:
    """Score ``count`` transactions of generated users at once: requests the skew check
    can compare with the training set (the sample rounds are too few)."""
    rng = random.Random(seed)
    transactions = [{"transaction_id": f"demo-many-{number}", "user_id": f"u{rng.randint(1, 1500):06d}",
                     "merchant_id": f"m{rng.randint(1, 200):05d}", "amount": round(rng.lognormvariate(3.5, 1.0), 2),
                     "currency": "EUR", "country": "DE", "channel": rng.choice(["web", "app", "pos"])}
                    for number in range(count)]
    for first in range(0, count, 100):
        api.call("POST", "/v1/predict", {"transactions": transactions[first:first + 100]})
    print(f"  scored {count} transactions of generated users (served_features keeps them)", flush=True)


def _shown(value, status: str) -> str:
    if status != "present":
        return status
    return f"{value:.2f}" if isinstance(value, float) else str(value)


STREAM_LINE = re.compile(r"^stream-features batch=")


def _stream_freshness(log: Path) -> tuple[int, list[float], list[float]]:
    """Micro-batches with accepted events and their lag p50 / p99 (seconds), from the log."""
    p50s, p99s, batches = [], [], 0
    for line in log.read_text(errors="replace").splitlines():
        if not STREAM_LINE.match(line):
            continue
        values = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
        batches += 1
        if "lag_p50_s" in values:
            p50s.append(float(values["lag_p50_s"]))
            p99s.append(float(values["lag_p99_s"]))
    return batches, p50s, p99s


# ------------------------------------------------------------------ the demo
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera demo", description=__doc__.split("\n\n")[0])
    add_profile_option(parser)
    parser.add_argument("--events", type=int, default=300_000, help="raw events of history (default 300k)")
    parser.add_argument("--days", type=int, default=14, help="days of history (default 14)")
    parser.add_argument("--live-seconds", type=int, default=90, help="how long events arrive live (default 90)")
    parser.add_argument("--live-rate", type=int, default=200, help="live events per second (default 200)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fresh", action="store_true", help="regenerate the history even if present")
    args = parser.parse_args(argv)
    if min(args.events, args.days, args.live_rate) <= 0 or args.live_seconds < 0:
        parser.error("--events, --days and --live-rate must be positive, --live-seconds not negative")
    cfg = load_config_for_command(args.profile, "demo")
    started = time.monotonic()
    try:
        summary = _run(cfg, args)
    except StepFailed as failure:
        print(f"\ndemo failed: {failure}", file=sys.stderr)
        return 1
    summary.print(cfg, time.monotonic() - started)
    return 0


@dataclass
class Summary:
    versions: dict[str, int] = field(default_factory=dict)
    model: dict[str, str] = field(default_factory=dict)
    stream: tuple[int, list[float], list[float]] = (0, [], [])
    latencies_ms: list[float] = field(default_factory=list)
    api_docs: str = ""
    feature_runs: str = ""
    drift: list[str] = field(default_factory=list)
    skew: str = ""

    def print(self, cfg: Config, seconds: float) -> None:
        print("\n== summary")
        for name, version in self.versions.items():
            print(f"  offline  {name:28s} Delta version {version:<4d} {table_uri(cfg, name)}")
        print(f"  online   Redis {cfg.redis.host}:{cfg.redis.port} (Feast layout, project tessera)")
        print(f"  tracking MLflow {cfg.mlflow.tracking_uri} (experiments tessera/feature-tables, "
              f"tessera/fraud-model, tessera/stream-features); the feature-table runs: {self.feature_runs}")
        print(f"  catalog  Feast UI: `tessera feast ui` serves the feature views, features and services at "
              f"http://{FeastUiService.host}:{FeastUiService.DEFAULT_PORT}")
        if self.model:
            print(f"  model    {MODEL_NAME} version {self.model['version']} (champion): ROC AUC "
                  f"{self.model['roc_auc']} with features vs {self.model['baseline_roc_auc']} baseline; "
                  f"run {run_url(cfg, self.model['experiment_id'], self.model['run_id'])}")
        batches, p50s, p99s = self.stream
        if p50s:
            print(f"  stream   {batches} micro-batches; freshness (event time -> Redis) median p50 "
                  f"{statistics.median(p50s):.1f}s, worst p99 {max(p99s):.1f}s")
        for line in self.drift:
            print(f"  drift    {line}")
        if self.skew:
            print(f"  skew     {self.skew}")
        if self.latencies_ms:
            ordered = sorted(self.latencies_ms)
            print(f"  API      {len(ordered)} requests from this demo: median {statistics.median(ordered):.1f} ms, "
                  f"max {ordered[-1]:.1f} ms (bench/bench_serving.py measures it properly)")
        print(f"  API docs {self.api_docs} (start it again with `make serve`)")
        print(f"\ndemo finished in {seconds:.0f}s")


def _run(cfg: Config, args: argparse.Namespace) -> Summary:
    summary = Summary()
    # History ends at today's midnight (UTC), so the newest values are within their ttl
    # online; the period is fixed per day, and so is the generated data.
    end = datetime.now(timezone.utc).date()
    start = end - timedelta(days=args.days)
    profile_args = ["--profile", args.profile]

    _step(1, f"services of profile {cfg.profile}")
    for line in services.up(cfg):
        print(f"  {line}")

    _step(2, "raw event history")
    if args.fresh or not _history_exists(cfg, start):
        from jobs import generate_events

        if generate_events.main(["history", *profile_args, "--events", str(args.events), "--days", str(args.days),
                                 "--start-date", start.isoformat(), "--seed", str(args.seed),
                                 "--partition-by-date", "--overwrite"]):
            raise StepFailed("step 2 (history): the generator failed; see its message above")
    else:
        print(f"  already at {cfg.events.history_uri} (use --fresh to regenerate)")

    _step(3, "batch features: compute, validate, publish (Delta + Redis), track (MLflow)")
    from jobs import batch_features

    if batch_features.main([*profile_args, "--start", start.isoformat(), "--end", end.isoformat()]):
        raise StepFailed("step 3 (batch features): a validation failed or the job broke; the failed "
                         "expectations are named above and in the table's FAILED MLflow run")
    summary.versions = {name: LakeTable.for_config(cfg, name, time_column=table.timestamp_column).version()
                        for name, table in FEATURE_TABLES.items()}
    summary.feature_runs = runs_url(cfg, _experiment_id(cfg, FEATURE_TABLES_EXPERIMENT))
    summary.drift = [feature_stats.drift_line(name, list(feature_stats.load(cfg, name).values()))
                     for name in FEATURE_TABLES]

    _step(4, "Feast registry: apply the definitions of feature_repo/")
    from plumbing import feast_repo

    if feast_repo.main(["apply", *profile_args]):
        raise StepFailed("step 4 (feast apply): see Feast's message above")

    _step(5, "train the fraud model on point-in-time features, register it, name the champion")
    from jobs import train_model

    if train_model.main([*profile_args, "--model-name", MODEL_NAME]):
        raise StepFailed("step 5 (train): see the message above; the training set needs history "
                         "with mature labels (--days of at least 10)")
    summary.model = _champion(cfg)

    _step(6, f"live: {args.live_rate} events/s for {args.live_seconds}s -> stream -> Redis -> API")
    log_dir = cfg.run_dir / "demo"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TESSERA_PROFILE": args.profile, "PYTHONUNBUFFERED": "1"}
    env.setdefault(cfg.serving.api_key_env, secrets.token_urlsafe(24))  # this demo's own key if none is set
    # Every answer of the demo kept in served_features, so the skew check has enough to compare.
    env["TESSERA__SERVING__SERVED_LOG__SAMPLE_FRACTION"] = "1"
    live_started = datetime.now(timezone.utc)
    api = Api(f"http://{cfg.serving.host}:{cfg.serving.port}", env[cfg.serving.api_key_env])
    summary.api_docs = f"{api.base_url}/docs"
    live = [
        Background.start("stream", [sys.executable, "-m", "jobs.stream_features", *profile_args], log_dir, env),
        Background.start("api", [sys.executable, "-m", "serving", *profile_args], log_dir, env),
    ]
    try:
        ready = api.wait_ready(live[1])
        print(f"  API ready: {ready}; docs at {summary.api_docs}", flush=True)
        _sample(api, "before")
        live.append(Background.start(
            "generator", [sys.executable, "-m", "jobs.generate_events", "live", *profile_args,
                          "--rate", str(args.live_rate), "--duration", str(args.live_seconds), "--no-progress",
                          "--seed", str(int(time.time()))], log_dir, env))

        _step(7, "ask the API while events arrive (features and scores change)")
        deadline = time.monotonic() + args.live_seconds + 20  # the stream's last micro-batches
        while time.monotonic() < deadline:
            time.sleep(15)
            for process in live[:2]:
                if not process.running():
                    raise StepFailed(f"step 6 (live): the {process.name} process exited:\n{process.tail()}")
            _sample(api, datetime.now(timezone.utc).strftime("%H:%M:%S"))
        _score_many(api, args.seed)
    finally:
        for process in reversed(live):
            process.stop()
    summary.stream = _stream_freshness(live[0].log)
    summary.latencies_ms = api.latencies_ms
    if not summary.stream[1]:
        raise StepFailed(f"step 6 (live): the stream finished no micro-batch with events; its log "
                         f"{live[0].log} ends with:\n{live[0].tail()}")

    _step(8, "skew check: the served features against the champion's training set")
    from jobs import skew_check

    try:
        report = skew_check.run(cfg, live_started, datetime.now(timezone.utc), SKEW_MAX_PSI, MODEL_NAME)
    except skew_check.NothingToCompare as reason:
        summary.skew = f"nothing to compare: {reason}"
    else:
        for line in report.lines():
            print(f"  {line}")
        run_id = skew_check.record(cfg, report, live_started, datetime.now(timezone.utc), SKEW_MAX_PSI)
        summary.skew = f"{report.lines()[0]}; run {run_id}"
    return summary


def _experiment_id(cfg: Config, name: str) -> str:
    import mlflow

    configure_tracking(cfg)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        raise StepFailed(f"no MLflow experiment {name}: the batch job records its runs there")
    return experiment.experiment_id


def _champion(cfg: Config) -> dict[str, str]:
    import mlflow

    configure_tracking(cfg)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    run_id = version.run_id
    assert run_id is not None  # train_model registers every version from its run
    run = client.get_run(run_id)
    return {"version": version.version, "run_id": run_id, "experiment_id": run.info.experiment_id,
            "roc_auc": f"{run.data.metrics.get('roc_auc', float('nan')):.3f}",
            "baseline_roc_auc": f"{run.data.metrics.get('baseline_roc_auc', float('nan')):.3f}"}


if __name__ == "__main__":
    sys.exit(main())
