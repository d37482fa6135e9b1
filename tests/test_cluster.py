"""The jobs on a Spark standalone cluster (a master and a worker of two cores started from the
pyspark install on loopback) give what they give on ``local[*]``: the batch job's feature tables and
a short stream's bronze rows and online values, on the ``s3`` profile (s3a, Kafka, Redis).

This is what "runs on a cluster" means for the project (docs/production.md): executors in
JVMs of their own, the jars shipped by the driver (``spark.jars``), the lake reached through
s3a from every executor.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from chispa import assert_df_equality

from jobs import batch_features, generate_events, stream_features
from jobs.generate_events import generate_live, live_destination
from jobs.stream_features import StreamSettings
from plumbing.config import REPO_ROOT, load_config
from plumbing.event_tables import bronze_table
from plumbing.kafka import KafkaTopics, ensure_topics
from plumbing.lake import LakeTable
from tests.conftest import TEST_JVM_OPTIONS
from tests.spark_cluster import standalone_cluster
from transformations.catalog import FEATURE_TABLES
from transformations.schemas import EVENT_ID_COLUMNS

START, END = date(2026, 2, 1), date(2026, 2, 3)
NOW = datetime(2026, 2, 3, tzinfo=timezone.utc)
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # One worker of two cores: the executor is still a JVM of its own, reached over the
    # network, with the shipped jars and s3a; a second worker would only add a JVM to start
    # and warm on a 2-core machine.
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=1, cores=2,
                            java_options=TEST_JVM_OPTIONS) as url:
        yield url


@pytest.fixture(scope="module")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


def _environ(run_id: str, engine: str, master: str | None) -> dict[str, str]:
    """The s3 profile with this run's own history, lake, topics and Redis database."""
    base = f"s3a://tessera-lake/test_cluster/{run_id}"
    environ = {**os.environ,
               "TESSERA__EVENTS__HISTORY_URI": f"{base}/history",
               "TESSERA__LAKE__ROOT": f"{base}/{engine}/lake",
               "TESSERA__EVENTS__KAFKA_TOPIC_PREFIX": f"cluster-{run_id}-",
               "TESSERA__REDIS__DB": "1" if engine == "cluster" else "2"}
    if master:
        environ["TESSERA__SPARK__MASTER"] = master
    return environ


# The batch job, then a short stream, in one driver application: a second application
# would start its own driver and executors again (about a minute on 2 cores) and prove
# nothing more about the cluster. A script file, not ``python -c``: under ``-c`` an import
# of the jobs ends the process with exit 0 ("Skipping doctests", from pyspark's modules).
ONE_DRIVER = """
import sys
from jobs import batch_features, stream_features
batch_args, stream_args = sys.argv[1].split(), sys.argv[2].split()
sys.exit(batch_features.main(batch_args) or stream_features.main(stream_args))
"""


def _jobs_on_the_cluster(environ: dict[str, str], folder: Path, batch_args: list[str],
                         stream_args: list[str]) -> None:
    script = folder / "one_driver.py"
    script.write_text(ONE_DRIVER)
    profile = ["--profile", "s3"]
    result = subprocess.run([sys.executable, str(script), " ".join(profile + batch_args),
                             " ".join(profile + stream_args)], env=environ, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"the jobs failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert "batch-features done" in result.stdout, result.stdout[-3000:]


@pytest.fixture(scope="module")
def runs(s3_services, spark, cluster, run_id, tmp_path_factory):
    """The batch job and a short stream, once on the cluster (a driver process of their own,
    as spark-submit runs one) and once on local[*] (in the tests' own session)."""
    environ = {"cluster": _environ(run_id, "cluster", cluster), "local": _environ(run_id, "local", None)}
    cfg = load_config("s3", environ=environ["local"])
    # Kafka and the redis databases of this run: the shared s3 services.
    assert generate_events.main(["history", "--out", cfg.events.history_uri, "--profile", "s3",
                                 "--events", "3000", "--days", "2", "--start-date", START.isoformat(),
                                 "--partition-by-date", "--overwrite", "--no-progress", "--seed", "11"]) == 0
    ensure_topics(KafkaTopics.of(cfg))
    # Live events of the last half hour: online values expire with their table's ttl.
    generate_live(live_destination(cfg), rate=500, events=1500, seed=5, users=100,
                  start_time=datetime.now(timezone.utc) - timedelta(minutes=30), malformed_fraction=0.02,
                  realtime=False, progress=False)
    configs = {engine: load_config("s3", environ=env) for engine, env in environ.items()}
    checkpoints = {engine: tmp_path_factory.mktemp(f"checkpoint-{engine}") for engine in configs}
    for engine_cfg in configs.values():
        redis.Redis(host=cfg.redis.host, port=cfg.redis.port, password=cfg.redis_password(),
                    db=engine_cfg.redis.db).flushdb()
    batch_args = ["--start", START.isoformat(), "--end", END.isoformat(), "--now", NOW.isoformat(), "--no-online"]
    _jobs_on_the_cluster(environ["cluster"], tmp_path_factory.mktemp("cluster-driver"), batch_args,
                         ["--available-now", "--checkpoint", str(checkpoints["cluster"])])
    local = configs["local"]
    assert all(result.published for result in
               batch_features.run(local, START, END, now=NOW, online=False, spark=spark))
    assert stream_features.run(local, StreamSettings(checkpoint_location=checkpoints["local"], available_now=True),
                               spark=spark) == 0
    return configs


# The first test pays for the fixture: two runs of each job on a loaded 2-core machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


@pytest.mark.parametrize("table", list(FEATURE_TABLES))
def test_batch_features_on_the_cluster_equal_local(spark, runs, table):
    feature_table = FEATURE_TABLES[table]
    on_cluster, local = (LakeTable.for_config(runs[engine], table, time_column=feature_table.timestamp_column)
                         .read(spark) for engine in ("cluster", "local"))
    assert local.count() > 0
    assert_df_equality(on_cluster, local, ignore_row_order=True, ignore_nullable=True)


def test_stream_bronze_on_the_cluster_equals_local(spark, runs):
    for event_type in ("transactions", "activity"):
        on_cluster, local = (bronze_table(runs[engine], event_type).read(spark) for engine in ("cluster", "local"))
        # The events themselves; provenance (arrival time, micro-batch ids) differs by run.
        columns = [EVENT_ID_COLUMNS[event_type], "event_time", "user_id"]
        assert local.count() > 0
        assert_df_equality(on_cluster.select(*columns), local.select(*columns), ignore_row_order=True,
                           ignore_nullable=True)


def test_stream_online_values_on_the_cluster_equal_local(runs):
    cfg = runs["local"]
    values = {}
    for engine in ("cluster", "local"):
        client = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, password=cfg.redis_password(),
                             db=int(runs[engine].redis.db))
        values[engine] = {key: client.hgetall(key) for key in client.scan_iter(count=1000)}
    assert len(values["local"]) > 50
    assert values["cluster"] == values["local"]
