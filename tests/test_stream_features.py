"""The streaming job against real Spark, a real Redis, a real Kafka broker and real files:
exact dead letters, late events, kill -9 and restart, a Redis outage, a broker outage,
and online = batch after the stream drains.

The job runs in the test's Spark session (``stream_features.run``), except the one that
is killed: a process of its own, killed with SIGKILL mid-batch.

The tests run on their own Redis server and Kafka broker (free ports, a temporary
folder, started by ``plumbing.services`` as ``tessera up`` does) so they can flush and
stop them without touching the shared ones; MLflow is the shared test server. Each test
has its own topics (a prefix of its own), landing folder, lake and checkpoint. Events
come from Kafka (the profiles' default) unless a test says ``source="files"``.
"""
from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs import consistency_check, stream_features
from jobs.generate_events import generate_live, live_destination
from jobs.stream_features import StreamSettings
from plumbing import services
from plumbing.config import REPO_ROOT, Config, load_config
from plumbing.event_tables import bronze_table, dead_letter_table
from plumbing.kafka import EventProducer, KafkaTopics, ensure_topics
from plumbing.online_store import OnlineStoreReader
from transformations.catalog import FEATURE_TABLES
from transformations.cleaning import MAX_RECORD_BYTES, REJECT_KINDS
from transformations.schemas import ACTIVITY, TRANSACTIONS

TIMEOUT_S = 240  # per wait: generous, for a loaded machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_environment(redis_home: Path, redis_port: int, work_dir: Path) -> dict[str, str]:
    """Config overrides: the isolated Redis (its data and password under ``redis_home``),
    and this test's own landing folder and lake under ``work_dir``; the file source."""
    return {
        "TESSERA__DATA_DIR": str(redis_home),
        "TESSERA__REDIS__PORT": str(redis_port),
        "TESSERA__LAKE__ROOT": str(work_dir / "lake"),
        "TESSERA__EVENTS__LANDING_DIR": str(work_dir / "landing"),
        "TESSERA__EVENTS__SOURCE": "files",
    }


def kafka_environment(kafka_ports: tuple[int, int], topic_prefix: str) -> dict[str, str]:
    """Config overrides: the isolated broker, topics of the test's own."""
    return {
        "TESSERA__EVENTS__SOURCE": "kafka",
        "TESSERA__SERVICES__KAFKA__PORT": str(kafka_ports[0]),
        "TESSERA__SERVICES__KAFKA__CONTROLLER_PORT": str(kafka_ports[1]),
        "TESSERA__EVENTS__KAFKA_TOPIC_PREFIX": topic_prefix,
    }


@pytest.fixture(scope="module")
def isolated_redis(tmp_path_factory, local_services):
    """(redis home, port) of a Redis of our own; local_services brings up the shared MLflow."""
    home, port = tmp_path_factory.mktemp("redis-home"), _free_port()
    cfg = load_config("local", environ=isolated_environment(home, port, home))
    services.up(cfg, only=["redis"])
    yield home, port
    services.down(cfg, only=["redis"])


@pytest.fixture(scope="module")
def isolated_kafka(isolated_redis):
    """(broker port, controller port) of a Kafka broker of our own, its data and run files
    beside the isolated Redis's."""
    home, redis_port = isolated_redis
    ports = (_free_port(), _free_port())
    cfg = load_config("local", environ={**isolated_environment(home, redis_port, home),
                                        **kafka_environment(ports, "")})
    began = time.monotonic()
    services.up(cfg, only=["kafka"])
    print(f"isolated Kafka broker up in {time.monotonic() - began:.1f}s")
    yield ports
    services.down(cfg, only=["kafka"])


# The source of this module's tests unless parametrized with ``source`` (modules that borrow
# the ``env`` fixture without streaming get the file source: no broker).
DEFAULT_SOURCE = "kafka"


def source_of(request) -> str:
    """The test's event source: its ``source`` parameter, else its module's DEFAULT_SOURCE."""
    callspec = getattr(request.node, "callspec", None)
    default = getattr(request.module, "DEFAULT_SOURCE", "files")
    return callspec.params.get("source", default) if callspec else default


@pytest.fixture()
def env(request, isolated_redis, tmp_path) -> dict[str, str]:
    """The test's environment: its own topics on the isolated broker, or its own landing
    folder for a test parametrized with ``source="files"``."""
    home, port = isolated_redis
    environment = isolated_environment(home, port, tmp_path)
    source = source_of(request)
    if source == "kafka":
        environment.update(kafka_environment(request.getfixturevalue("isolated_kafka"), f"{tmp_path.name}."))
    cfg = load_config("local", environ=environment)
    if source == "kafka":
        ensure_topics(KafkaTopics.of(cfg))
    redis.Redis(port=port, password=cfg.redis_password()).flushall()
    return environment


def config(env: dict[str, str]) -> Config:
    return load_config("local", environ=env)


def checkpoint(env: dict[str, str]) -> Path:
    return Path(env["TESSERA__LAKE__ROOT"]).parent / "checkpoint"


def generate(cfg: Config, events: int, seed: int, minutes_ago: float, malformed_fraction: float = 0.0):
    """Live events with recent times (older ones would be past their online ttl), at once."""
    start = datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)
    return generate_live(live_destination(cfg), rate=200, events=events, seed=seed, users=150,
                         start_time=start, malformed_fraction=malformed_fraction, realtime=False,
                         progress=False)


def count_rows(spark, cfg: Config) -> tuple[int, int]:
    """(rows, distinct event ids) in the bronze tables of transactions and activity."""
    rows = distinct = 0
    for event_type, event_id in ((TRANSACTIONS, "transaction_id"), (ACTIVITY, "event_id")):
        counts = bronze_table(cfg, event_type).read(spark).agg(
            F.count(F.lit(1)).alias("rows"), F.count_distinct(event_id).alias("distinct")).first()
        rows, distinct = rows + counts["rows"], distinct + counts["distinct"]
    return rows, distinct


def dead_letters(spark, cfg: Config):
    """The dead-letter rows of transactions and activity (a table exists once it has one)."""
    tables = [dead_letter_table(cfg, event_type, "stream") for event_type in (TRANSACTIONS, ACTIVITY)]
    parts = [table.read(spark) for table in tables if table.exists()]
    return functools.reduce(DataFrame.unionByName, parts)


def assert_online_equals_batch(spark, cfg: Config) -> None:
    checks, passed = consistency_check.run(cfg, list(FEATURE_TABLES.values()), datetime.now(timezone.utc),
                                           spark=spark)
    assert passed, consistency_check.report(checks, datetime.now(timezone.utc))
    assert all(check.entities_checked > 0 for check in checks)


# ------------------------------------------------------------------ in-process runs
def test_malformed_records_go_to_dead_letters_exactly_and_online_equals_batch(spark, env, capsys):
    cfg = config(env)
    summary = generate(cfg, events=1000, seed=3, minutes_ago=10, malformed_fraction=0.05)
    settings = StreamSettings(checkpoint_location=checkpoint(env), available_now=True)

    assert stream_features.run(cfg, settings, spark=spark) == 0

    # Each progress line tells what the feature jobs computed over: every accepted event
    # goes into at least one table's job.
    progress = [dict(pair.split("=", 1) for pair in line.split()[1:])
                for line in capsys.readouterr().out.splitlines() if line.startswith("stream-features batch=")]
    assert sum(int(batch["accepted"]) for batch in progress) == 950
    assert all(int(batch["feature_input_events"]) >= int(batch["accepted"]) for batch in progress)

    dead = dead_letters(spark, cfg)
    by_kind = {row["kind"]: row["count"] for row in
               dead.groupBy(F.split("reject_reason", ":").getItem(0).alias("kind")).count().collect()}
    assert sum(by_kind.values()) == 50 == sum(summary.malformed.values())
    assert by_kind == dict(summary.malformed) and set(by_kind) <= set(REJECT_KINDS)
    assert dead.where(F.col("raw").isNull() | F.col("arrived_at").isNull() | F.col("batch_id").isNull()
                      | (F.col("source") != "stream")).count() == 0
    assert count_rows(spark, cfg) == (950, 950)  # every good record, once
    assert_online_equals_batch(spark, cfg)


def _line(**event) -> str:
    return json.dumps({"merchant_id": "m1", "amount": 10.0, "currency": "EUR", "country": "DE",
                       "device_id": "d1", "channel": "web", **event})


@pytest.mark.parametrize("source", ["files"])  # file by file: one micro-batch each
def test_late_events_within_the_lateness_count_later_ones_are_dead_letters(spark, env, source):
    cfg = config(env)
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)

    def at(seconds: int) -> str:
        return (t0 + timedelta(seconds=seconds)).isoformat()

    folder = Path(cfg.events.landing_dir) / TRANSACTIONS
    folder.mkdir(parents=True)
    files = {
        # First micro-batch: the newest event time becomes t0+40s, so the next watermark is t0-20s.
        "1.jsonl": [_line(transaction_id="a1", user_id="u1", event_time=at(0)),
                    _line(transaction_id="a2", user_id="u1", event_time=at(30)),
                    _line(transaction_id="b1", user_id="u2", event_time=at(40)),
                    _line(transaction_id="c1", user_id="u3", event_time=at(20))],
        "2.jsonl": [_line(transaction_id="a3", user_id="u1", event_time=at(10)),    # 30 s late: counts
                    _line(transaction_id="a4", user_id="u1", event_time=at(50)),
                    _line(transaction_id="b2", user_id="u2", event_time=at(-60)),   # behind the watermark
                    _line(transaction_id="c2", user_id="u3", event_time=at(5))],    # late, behind u3's row
    }
    for age, (name, lines) in zip((20, 10), files.items(), strict=True):
        (folder / name).write_text("\n".join(lines) + "\n")
        os.utime(folder / name, (time.time() - age,) * 2)  # the file source takes the oldest first
    settings = StreamSettings(checkpoint_location=checkpoint(env), available_now=True,
                              allowed_lateness=timedelta(seconds=60), max_files_per_trigger=1)

    assert stream_features.run(cfg, settings, spark=spark) == 0

    bronze_ids = {row.transaction_id for row in bronze_table(cfg, TRANSACTIONS).read(spark).collect()}
    assert bronze_ids == {"a1", "a2", "a3", "a4", "b1", "c1", "c2"}
    too_late = dead_letter_table(cfg, TRANSACTIONS, "stream").read(spark).collect()
    assert [(row.reject_reason, json.loads(row.raw)["transaction_id"]) for row in too_late] == [("too_late", "b2")]

    reader = OnlineStoreReader(cfg)
    refs = ["user_transaction_features:txn_count_1h", "user_transaction_features:txn_lifetime_count"]
    u1, u2, u3 = reader.read(refs, [{"user_id": user} for user in ("u1", "u2", "u3")])
    # u1's row at t0+50s counts the late a3; u2 never counted b2.
    assert [u1[ref].value for ref in refs] == [4, 4] and u1[refs[0]].event_time == t0 + timedelta(seconds=50)
    assert [u2[ref].value for ref in refs] == [1, 1]
    # c2 is behind u3's newest event (t0+20s): u3's row there is recomputed with it.
    assert [u3[ref].value for ref in refs] == [2, 2] and u3[refs[0]].event_time == t0 + timedelta(seconds=20)


# ------------------------------------------------------------------ faults
def wait_until(condition, what: str, running, output) -> None:
    """Poll ``condition()`` while ``running()``; fail with the job's ``output()`` otherwise."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert running(), f"the job ended while waiting for {what}:\n{output()[-4000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{output()[-4000:]}"
        time.sleep(0.2)


# The job, holding each micro-batch 30 s after its writes (Redis, bronze) and before Spark
# commits it, so the kill lands between the two. The hold is the test's own: it wraps the
# job's last step before the commit (its progress record) in this process only.
HELD_JOB = """
import sys
import time

from jobs import stream_features as job
from jobs.streaming import micro_batch

progress_record = micro_batch.BatchProgress


def held(*args, **kwargs):
    time.sleep(30)
    return progress_record(*args, **kwargs)


micro_batch.BatchProgress = held  # where the foreachBatch function looks it up
sys.exit(job.main(sys.argv[1:]))
"""


@pytest.mark.e2e
@pytest.mark.parametrize("source", ["kafka", "files"])
def test_kill_9_mid_batch_then_restart_loses_and_double_counts_nothing(spark, env, tmp_path, source):
    cfg = config(env)
    # 5 files a type, or ~300 transaction and ~700 activity records: several micro-batches.
    summary = generate(cfg, events=1000, seed=5, minutes_ago=10, malformed_fraction=0.01)
    log = tmp_path / "job.log"
    limit = ["--max-records-per-trigger", "150"] if source == "kafka" else ["--max-files-per-trigger", "2"]
    script = tmp_path / "held_job.py"
    script.write_text(HELD_JOB)
    command = [sys.executable, str(script), "--checkpoint", str(checkpoint(env)), "--trigger-interval-s", "0", *limit]
    with open(log, "wb") as out:  # its own process group: the job, its JVM and Spark's Python workers
        job = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, **env, "TESSERA__SPARK__DRIVER_MEMORY": "1g"})
    online = redis.Redis(port=cfg.redis.port, password=cfg.redis_password())
    try:
        # Mid-batch: the first micro-batch has written Redis and appended its events to bronze,
        # and is not committed yet: the restart re-runs it, and must neither lose nor repeat it.
        wait_until(lambda: online.dbsize() > 0 and all(bronze_table(cfg, event_type).exists()
                                                       for event_type in (TRANSACTIONS, ACTIVITY)),
                   "the first micro-batch's writes", lambda: job.poll() is None, log.read_text)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # kill -9 the whole job at once
        job.wait(timeout=30)
    assert not list((checkpoint(env) / "commits").glob("[0-9]*")), "micro-batch 0 finished before the kill"

    # The restart (in the test's warm Spark session) re-runs micro-batch 0 (the same files,
    # or the same offsets, from the checkpoint), then the rest.
    assert stream_features.run(cfg, StreamSettings(checkpoint(env), available_now=True), spark=spark) == 0

    good = summary.events - sum(summary.malformed.values())
    assert count_rows(spark, cfg) == (good, good)
    assert dead_letters(spark, cfg).count() == sum(summary.malformed.values()) == 10
    assert_online_equals_batch(spark, cfg)


def accepted_in(log_text: str) -> int:
    """The accepted events of the micro-batches logged so far."""
    return sum(int(match) for match in re.findall(r"^stream-features batch=\d+ .*?accepted=(\d+)",
                                                  log_text, flags=re.MULTILINE))


class StreamInThread:
    """The streaming job in a thread of the test's process, in the warm Spark session, with
    its printed output collected; leaving the block stops it and checks it exited 0."""

    def __init__(self, cfg: Config, checkpoint_location: Path, spark, capsys):
        settings = StreamSettings(checkpoint_location, trigger_interval=timedelta(seconds=0.5))
        self._stop, self._exit_codes, self._printed, self._capsys = threading.Event(), [], [], capsys
        self._thread = threading.Thread(target=lambda: self._exit_codes.append(
            stream_features.run(cfg, settings, spark=spark, stop=self._stop)))

    def output(self) -> str:
        self._printed.append("".join(self._capsys.readouterr()))
        return "".join(self._printed)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wait_for_accepted(self, events: int, what: str) -> None:
        wait_until(lambda: accepted_in(self.output()) == events, what, self.is_alive, self.output)

    def __enter__(self) -> StreamInThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        if exc_info[0] is None:
            assert self._exit_codes == [0], self.output()[-4000:]


def test_redis_outage_the_job_retries_and_catches_up(spark, env, capsys):
    cfg = config(env)
    with StreamInThread(cfg, checkpoint(env), spark, capsys) as job:
        before = generate(cfg, events=400, seed=7, minutes_ago=10)
        job.wait_for_accepted(before.events, "the first events")

        services.down(cfg, only=["redis"])
        during = generate(cfg, events=400, seed=8, minutes_ago=9)
        wait_until(lambda: "restarting from the checkpoint" in job.output(), "a failed micro-batch", job.is_alive,
                   job.output)
        services.up(cfg, only=["redis"])

        job.wait_for_accepted(before.events + during.events, "catching up")
    assert count_rows(spark, cfg) == (800, 800)
    assert_online_equals_batch(spark, cfg)


def test_broker_outage_the_job_waits_and_catches_up(spark, env, capsys):
    cfg = config(env)
    with StreamInThread(cfg, checkpoint(env), spark, capsys) as job:
        before = generate(cfg, events=400, seed=9, minutes_ago=10)
        job.wait_for_accepted(before.events, "the first events")

        services.down(cfg, only=["kafka"])  # the whole broker: SIGTERM, then it is gone
        time.sleep(15)  # the job polls a broker that is not there
        assert job.is_alive(), job.output()[-4000:]
        services.up(cfg, only=["kafka"])  # the same data folder: topics and records kept

        after = generate(cfg, events=400, seed=10, minutes_ago=9)
        job.wait_for_accepted(before.events + after.events, "catching up")
    assert "giving up" not in job.output()
    assert count_rows(spark, cfg) == (800, 800)
    assert_online_equals_batch(spark, cfg)


def test_malformed_records_on_a_topic_are_exact_dead_letters_and_the_job_lives_on(spark, env, capsys):
    cfg = config(env)
    now = datetime.now(timezone.utc) - timedelta(minutes=5)

    def transaction(number: int, **changes) -> dict:
        return {"transaction_id": f"k{number}", "user_id": f"u{number % 3}", "merchant_id": "m1", "amount": 10.0,
                "currency": "EUR", "country": "DE", "device_id": "d1", "channel": "web",
                "event_time": (now + timedelta(seconds=number)).isoformat(), **changes}

    good = [json.dumps(transaction(n)).encode() for n in range(5)]
    missing = transaction(5)
    del missing["user_id"]
    bad = {  # value -> the reason the dead-letter table must give
        b"not json at all": "broken_json",
        None: "broken_json",  # a record without value (a tombstone; librdkafka sends b"" as one too)
        json.dumps(transaction(6, amount="12,50")).encode(): "wrong_type:amount",
        json.dumps(transaction(7, event_time="03/12/2026 10:00:00")).encode(): "wrong_type:event_time",
        json.dumps(missing).encode(): "missing_field:user_id",
        json.dumps(transaction(8, device_id="d" * (2 * MAX_RECORD_BYTES))).encode(): "oversize",
        json.dumps(transaction(9, amount=-1.0)).encode(): "negative_amount",
    }
    producer = EventProducer(KafkaTopics.of(cfg))
    producer.send(TRANSACTIONS, [*good[:3], *bad, *good[3:]])
    producer.flush(30)

    settings = StreamSettings(checkpoint(env), trigger_interval=timedelta(seconds=0.5))
    stop, exit_codes, printed = threading.Event(), [], []
    job = threading.Thread(target=lambda: exit_codes.append(stream_features.run(cfg, settings, spark=spark, stop=stop)))

    def output() -> str:
        printed.append("".join(capsys.readouterr()))
        return "".join(printed)

    job.start()
    try:
        wait_until(lambda: accepted_in(output()) == len(good), "the good records", job.is_alive, output)
        # Alive: records sent after the bad ones are still taken in.
        producer.send(TRANSACTIONS, [json.dumps(transaction(n)).encode() for n in (10, 11)])
        producer.flush(30)
        wait_until(lambda: accepted_in(output()) == len(good) + 2, "records after the bad ones", job.is_alive,
                   output)
    finally:
        stop.set()
        job.join(timeout=120)
    assert exit_codes == [0], output()[-4000:]

    dead = dead_letter_table(cfg, TRANSACTIONS, "stream").read(spark).collect()
    assert sorted((row.raw or "<null>", row.reject_reason) for row in dead) == sorted(
        ("<null>" if value is None else value.decode(), reason) for value, reason in bad.items())
    assert all(row.source == "stream" and row.batch_id is not None for row in dead)
    bronze_ids = {row.transaction_id for row in bronze_table(cfg, TRANSACTIONS).read(spark).collect()}
    assert bronze_ids == {f"k{n}" for n in (0, 1, 2, 3, 4, 10, 11)}
