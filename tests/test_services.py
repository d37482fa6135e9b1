"""The local services, really started: idempotent `up`, `down` leaves no process,
Redis requires its password, the S3 endpoint takes a put/get, MLflow answers."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from plumbing import services
from plumbing.config import REPO_ROOT, load_config
from plumbing.s3 import s3_client
from plumbing.services import ServiceError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def isolated_cfg(tmp_path):
    """The s3 profile on its own ports and folder, so the shared test services are untouched."""
    s3_port = _free_port()
    environ = {
        "TESSERA__DATA_DIR": str(tmp_path / "data"),
        "TESSERA__REDIS__PORT": str(_free_port()),
        "TESSERA__MLFLOW__PORT": str(_free_port()),
        "TESSERA__SERVICES__S3__PORT": str(s3_port),
        "TESSERA__SERVICES__KAFKA__PORT": str(_free_port()),
        "TESSERA__SERVICES__KAFKA__CONTROLLER_PORT": str(_free_port()),
        "TESSERA__S3__ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "TESSERA__S3__BUCKETS": "[iso-bucket]",
        "TESSERA__MLFLOW__ARTIFACTS_URI": str(tmp_path / "data" / "artifacts"),
    }
    cfg = load_config("s3", environ=environ)
    yield cfg
    services.down(cfg)


def _pids(cfg) -> dict[str, int]:
    return {st.name: st.pid for st in services.status(cfg) if st.pid}


def test_up_twice_is_harmless_and_down_leaves_no_process(isolated_cfg):
    services.up(isolated_cfg)
    first = _pids(isolated_cfg)
    assert set(first) == {"redis", "s3", "mlflow", "kafka"}
    second_lines = services.up(isolated_cfg)
    assert all("already running" in line for line in second_lines)
    assert _pids(isolated_cfg) == first  # nothing restarted
    assert all(st.healthy for st in services.status(isolated_cfg))

    services.down(isolated_cfg)
    for name, pid in first.items():
        assert not services._alive(pid), f"{name} (pid {pid}) still alive after down"
        assert not services._group_alive(pid), f"a child of {name} (group {pid}) survived down"
    assert not any(st.healthy for st in services.status(isolated_cfg))
    assert services.down(isolated_cfg) == ["kafka: not running", "mlflow: not running", "s3: not running",
                                           "redis: not running"]


def test_port_taken_by_another_process_is_a_clear_error(isolated_cfg):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", isolated_cfg.redis.port))
        squatter.listen()
        with pytest.raises(ServiceError, match=rf"port {isolated_cfg.redis.port} .* taken.*TESSERA__REDIS__PORT"):
            services.up(isolated_cfg, only=["redis"])


def test_redis_requires_the_password(local_services):
    cfg = local_services
    anonymous = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    wrong = redis.Redis(host=cfg.redis.host, port=cfg.redis.port, password="wrong", socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    assert redis.Redis(host=cfg.redis.host, port=cfg.redis.port, password=cfg.redis_password()).ping()


def test_redis_listens_on_loopback_only(local_services):
    conf = (local_services.run_dir / "redis.conf").read_text()
    assert f"bind {local_services.redis.host}\n" in conf and local_services.redis.host.startswith("127.")


def test_redis_keeps_data_across_a_restart(isolated_cfg):
    services.up(isolated_cfg, only=["redis"])
    client = redis.Redis(port=isolated_cfg.redis.port, password=isolated_cfg.redis_password())
    client.set("tessera:restart-check", "kept")
    services.down(isolated_cfg, only=["redis"])  # SIGTERM: redis flushes its append-only file
    services.up(isolated_cfg, only=["redis"])
    assert client.get("tessera:restart-check") == b"kept"


def test_kafka_keeps_topics_and_records_across_a_restart(isolated_cfg):
    from confluent_kafka import Consumer, TopicPartition

    from plumbing.kafka import EventProducer, KafkaTopics

    services.up(isolated_cfg, only=["kafka"])
    topics = KafkaTopics.of(isolated_cfg)
    assert topics.bootstrap_servers == f"127.0.0.1:{isolated_cfg.services.kafka.port}"
    meta = (isolated_cfg.data_dir / "kafka" / "meta.properties").read_text()
    producer = EventProducer(topics)
    producer.send("transactions", [b'{"kept": 1}', b'{"kept": 2}'], [b"u1", b"u1"])
    producer.flush(30)
    services.down(isolated_cfg, only=["kafka"])  # SIGTERM: a controlled shutdown
    assert not services._port_open("127.0.0.1", isolated_cfg.services.kafka.port)

    services.up(isolated_cfg, only=["kafka"])  # the same data folder, not formatted again
    assert (isolated_cfg.data_dir / "kafka" / "meta.properties").read_text() == meta
    consumer = Consumer({"bootstrap.servers": topics.bootstrap_servers, "group.id": "restart-check",
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=10)
        assert set(topics.names) <= set(metadata.topics)
        assert len(metadata.topics["transactions"].partitions) == isolated_cfg.services.kafka.partitions
        ends = [consumer.get_watermark_offsets(TopicPartition("transactions", p), timeout=10)[1]
                for p in metadata.topics["transactions"].partitions]
        assert sum(ends) == 2 and sorted(ends)[-1] == 2  # one key, one partition
    finally:
        consumer.close()


def test_kafka_without_its_jars_says_how_to_fetch_them(isolated_cfg, monkeypatch, tmp_path):
    from plumbing import spark

    monkeypatch.setattr(spark, "JARS_DIR", tmp_path / "no-jars")
    with pytest.raises(ServiceError, match=r"kafka: the 'broker' jars are missing .*make setup.*"
                                           r"bash scripts/fetch_jars.sh broker"):
        services.up(isolated_cfg, only=["kafka"])


def test_s3_endpoint_accepts_put_and_get(s3_services):
    client = s3_client(s3_services)
    bucket = s3_services.s3.buckets[0]
    client.put_object(Bucket=bucket, Key="tests/hello.txt", Body=b"hello lake")
    assert client.get_object(Bucket=bucket, Key="tests/hello.txt")["Body"].read() == b"hello lake"


def test_mlflow_server_answers(local_services):
    with urllib.request.urlopen(f"{local_services.mlflow.tracking_uri}/health", timeout=5) as resp:
        assert resp.status == 200
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=local_services.mlflow.tracking_uri)
    assert client.get_experiment_by_name("Default") is not None


def test_cli_status_reports_and_help_works(local_services):
    env = {**os.environ, "TESSERA_PROFILE": "local"}
    tessera = [sys.executable, "-m", "jobs.cli"]
    out = subprocess.run([*tessera, "status"], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "redis" in out.stdout and "healthy" in out.stdout
    assert re.search(rf"^kafka +healthy +127.0.0.1:{local_services.services.kafka.port} +pid \d+$", out.stdout,
                     flags=re.MULTILINE), out.stdout
    from jobs.cli import JOBS

    def help_of(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*tessera, command, "--help"], capture_output=True, text=True,
                              cwd=REPO_ROOT, env=env, timeout=120)

    # Each --help is a process of its own that imports its job (several seconds of CPU for
    # the Spark ones): two at a time, one per core.
    commands = ("up", "down", "status", *JOBS, "test", "bench")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for command, help_out in zip(commands, pool.map(help_of, commands), strict=True):
            assert help_out.returncode == 0, (command, help_out.stderr)
            assert "usage:" in help_out.stdout


def test_cli_config_error_exits_2_with_message():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--profile", "nope", "status"],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 2
    assert "unknown profile 'nope'" in out.stderr


def test_status_says_why_a_running_service_does_not_answer():
    status = services.ServiceStatus("redis", True, 4321, "127.0.0.1", 6390, healthy=False,
                                    problem="AuthenticationError: invalid password")
    assert "running, not answering" in status.line()
    assert status.line().endswith("(AuthenticationError: invalid password)")
    assert "(" not in services.ServiceStatus("redis", True, 4321, "127.0.0.1", 6390, healthy=True).line()
