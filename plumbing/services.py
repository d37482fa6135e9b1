"""Local services the project starts itself: Redis (one node, or a three-master Redis
Cluster with ``redis.mode: cluster``), an S3-compatible endpoint (moto), an
MLflow tracking server and a Kafka broker (KRaft, no ZooKeeper); and, on demand, Feast's
web UI (``tessera feast ui``).

Each service runs as its own process group, bound to loopback, with a PID file and a
log in ``<data_dir>/run``. ``up`` is idempotent (a healthy service is left alone),
waits for a health check with a timeout, and refuses with a clear message when the port
is taken by something else. ``down`` stops the whole process group (TERM, then KILL)
and checks that nothing is left.
"""
from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from plumbing.config import PROFILE_ENV, Config

SERVICE_NAMES = ("redis", "s3", "mlflow", "kafka", "feast-ui")


class ServiceError(RuntimeError):
    """A service could not be started, checked or stopped; the message says why."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    enabled: bool
    pid: int | None
    host: str
    port: int
    healthy: bool
    problem: str | None = None  # why the health check failed, when it raised
    where: str | None = None    # instead of host:port and pid (a Redis Cluster's nodes)

    def line(self) -> str:
        if not self.enabled:
            return f"{self.name:8s} not used by this profile"
        state = "healthy" if self.healthy else ("running, not answering" if self.pid else "stopped")
        pid = f"pid {self.pid}" if self.pid else "no pid"
        because = f"  ({self.problem})" if self.problem and not self.healthy else ""
        return f"{self.name:8s} {state:24s} {self.where or f'{self.host}:{self.port}  {pid}'}{because}"


# ---------------------------------------------------------------- process helpers
def _pid_file(cfg: Config, name: str) -> Path:
    return cfg.run_dir / f"{name}.pid"


def _read_pid(cfg: Config, name: str) -> int | None:
    path = _pid_file(cfg, name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _executable(name: str) -> str:
    """Prefer the tool installed beside the running interpreter (the project's venv)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name} is not installed: run `make setup` (it installs OS packages when root)")
    return found


def _wait(check: Callable[[], bool], timeout_s: float, what: str, pid: int, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    last_problem = "its health check answered no"
    while time.monotonic() < deadline:
        if not _alive(pid):
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ServiceError(f"{what} exited while starting; last log lines ({log}):\n{tail}")
        try:
            if check():
                return
        except Exception as error:  # not ready yet: connection refused, 503, ...
            last_problem = f"{type(error).__name__}: {error}"
        time.sleep(0.3)
    raise ServiceError(f"{what} did not become healthy within {timeout_s:.0f}s (last: {last_problem}); see {log}")


def _start(cfg: Config, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    log = cfg.run_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})}, cwd=cfg.run_dir)
    _pid_file(cfg, name).write_text(str(proc.pid))
    return proc.pid


def _stop_pid(pid: int, timeout_s: float = 15.0) -> None:
    """TERM the process group, then KILL it if it lingers; return when all are gone."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not _alive(pid) and not _group_alive(pid):
                return
            time.sleep(0.1)
    raise ServiceError(f"process group {pid} survived SIGKILL")


def _reap(pid: int) -> None:
    """Collect the exit status when the service is our own child (started in this process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().split(") ", 1)[1].split()
        except (FileNotFoundError, IndexError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


# ---------------------------------------------------------------- the services
class _Service(ABC):
    name: str

    def __init__(self, cfg: Config):
        self.cfg = cfg

    enabled: bool
    host: str
    port: int

    @abstractmethod
    def argv(self) -> list[str]: ...
    def env(self) -> dict[str, str]: return {}
    @abstractmethod
    def healthy(self) -> bool: ...
    def after_start(self) -> None: return None  # a hook: nothing to do by default

    def status(self) -> ServiceStatus:
        pid = _read_pid(self.cfg, self.name)
        healthy, problem = False, None
        if self.enabled and _port_open(self.host, self.port):
            try:
                healthy = self.healthy()
            except Exception as error:  # status reports it; it never raises
                problem = f"{type(error).__name__}: {error}"
        return ServiceStatus(self.name, self.enabled, pid, self.host, self.port, healthy, problem)

    def up(self) -> str:
        if not self.enabled:
            return f"{self.name}: not used by profile {self.cfg.profile}"
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        pid = _read_pid(self.cfg, self.name)
        if pid and _port_open(self.host, self.port):
            _wait(self.healthy, self.cfg.services.start_timeout_s, self.name, pid, self._log)
            self.after_start()
            return f"{self.name}: already running (pid {pid}) on {self.host}:{self.port}"
        if pid:  # our process lives but does not listen: a half-started leftover
            _stop_pid(pid)
        if _port_open(self.host, self.port):
            raise ServiceError(
                f"{self.name}: port {self.port} on {self.host} is taken by another process. Stop it, "
                f"or choose another port in {self.cfg.source_file} or with the environment variable "
                f"TESSERA__{self._port_key.upper().replace('.', '__')}=<port>.")
        pid = _start(self.cfg, self.name, self.argv(), self.env())
        try:
            _wait(self.healthy, self.cfg.services.start_timeout_s, self.name, pid, self._log)
            self.after_start()
        except BaseException:
            _stop_pid(pid)
            raise
        return f"{self.name}: started (pid {pid}) on {self.host}:{self.port}"

    def down(self) -> str:
        pid = _read_pid(self.cfg, self.name)
        _pid_file(self.cfg, self.name).unlink(missing_ok=True)
        if not pid:
            return f"{self.name}: not running"
        _stop_pid(pid)
        return f"{self.name}: stopped (pid {pid})"

    @property
    def _log(self) -> Path:
        return self.cfg.run_dir / f"{self.name}.log"

    _port_key = ""


class RedisService(_Service):
    name = "redis"
    _port_key = "redis.port"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.enabled = cfg.redis.start_local
        self.host, self.port = cfg.redis.host, cfg.redis.port

    def argv(self) -> list[str]:
        data = self.cfg.data_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.cfg.run_dir / "redis.conf"
        # Written fresh each start; 0600 because it holds the password.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join([
                f"bind {self.host}",
                f"port {self.port}",
                "protected-mode yes",
                f"requirepass {self.cfg.redis_password()}",
                f"dir {data}",
                "appendonly yes",          # persistence: a restart keeps the online store
                "appendfsync everysec",
                "save 60 1000",
                "daemonize no",
                "", ]))
        return [_executable("redis-server"), str(conf)]

    def healthy(self) -> bool:
        import redis

        client = redis.Redis(host=self.host, port=self.port, password=self.cfg.redis_password(),
                             socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()


class RedisClusterService(_Service):
    """``redis.mode: cluster``: a Redis Cluster of one master per seed node
    (``redis.cluster_nodes``, at least three, on this machine), each a ``redis-server
    --cluster-enabled yes`` of the same OS package, with the password and persistence of
    the single node (its own folder ``<data_dir>/redis/<port>``, its log and PID file
    ``redis-<port>`` in the run folder). The first ``up`` creates the cluster
    (``redis-cli --cluster create``, slots spread evenly, no replicas); later starts
    rejoin it from each node's ``nodes.conf``. Healthy: every node answers and the
    cluster's state is ``ok``. Each node also uses its port + 10000 (the cluster bus)."""

    name = "redis"
    _port_key = "redis.cluster_nodes"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.enabled = cfg.redis.start_local
        self.nodes = cfg.redis.seed_nodes()
        self.host, self.port = self.nodes[0]

    def _node_name(self, port: int) -> str:
        return f"{self.name}-{port}"

    def _client(self, host: str, port: int):
        import redis

        return redis.Redis(host=host, port=port, password=self.cfg.redis_password(), socket_timeout=2)

    def argv(self) -> list[str]:
        raise NotImplementedError("a cluster has one command line per node: see _node_argv")

    def _ping(self, host: str, port: int) -> bool:
        client = self._client(host, port)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _node_argv(self, host: str, port: int) -> list[str]:
        data = self.cfg.data_dir / "redis" / str(port)
        data.mkdir(parents=True, exist_ok=True)
        conf = self.cfg.run_dir / f"{self._node_name(port)}.conf"
        password = self.cfg.redis_password()
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join([
                f"bind {host}",
                f"port {port}",
                "protected-mode yes",
                f"requirepass {password}",
                f"masterauth {password}",     # a replica added later authenticates with it
                f"dir {data}",
                "cluster-enabled yes",
                f"cluster-config-file {data / 'nodes.conf'}",  # the cluster's state, kept by Redis
                "cluster-node-timeout 5000",
                "appendonly yes",
                "appendfsync everysec",
                "save 60 1000",
                "daemonize no",
                "", ]))
        return [_executable("redis-server"), str(conf)]

    def _cluster_info(self, host: str, port: int) -> dict[str, str]:
        client = self._client(host, port)
        try:
            return {str(key): str(value) for key, value in client.cluster("info").items()}
        finally:
            client.close()

    def healthy(self) -> bool:
        return all(self._cluster_info(host, port).get("cluster_state") == "ok" for host, port in self.nodes)

    def _check_nodes(self) -> None:
        if len(self.nodes) < 3:
            raise ServiceError(f"redis: a Redis Cluster needs at least three masters; redis.cluster_nodes in "
                               f"{self.cfg.source_file} lists {len(self.nodes)}")
        for host, _ in self.nodes:
            if not host.startswith("127.") and host != "localhost":
                raise ServiceError(f"redis: `tessera up` starts cluster nodes on loopback only, not {host}; "
                                   f"set redis.start_local: false for a cluster elsewhere")

    def up(self) -> str:
        if not self.enabled:
            return f"{self.name}: not used by profile {self.cfg.profile}"
        self._check_nodes()
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        timeout_s = self.cfg.services.start_timeout_s
        started: list[int] = []
        try:
            for host, port in self.nodes:
                name = self._node_name(port)
                pid = _read_pid(self.cfg, name)
                if pid and _port_open(host, port):
                    continue
                if pid:  # a half-started leftover
                    _stop_pid(pid)
                for taken in (port, port + 10000):
                    if _port_open(host, taken):
                        raise ServiceError(
                            f"{self.name}: port {taken} on {host} is taken by another process (a cluster node "
                            f"uses its port and port + 10000). Stop it, or choose other ports in "
                            f"redis.cluster_nodes of {self.cfg.source_file}.")
                pid = _start(self.cfg, name, self._node_argv(host, port))
                started.append(pid)
                _wait(partial(self._ping, host, port), timeout_s, name, pid, self.cfg.run_dir / f"{name}.log")
            if not any(int(self._cluster_info(host, port).get("cluster_slots_assigned", 0))
                       for host, port in self.nodes):
                self._create_cluster()
            pid = _read_pid(self.cfg, self._node_name(self.port)) or 0
            _wait(self.healthy, timeout_s, f"{self.name} cluster", pid, self._log)
        except BaseException:
            for pid in started:
                _stop_pid(pid)
            raise
        what = "started" if started else "already running"
        return f"{self.name}: {what}, a cluster of {len(self.nodes)} masters on {self._addresses()}"

    def _create_cluster(self) -> None:
        """``redis-cli --cluster create``: slots spread over the nodes, no replicas."""
        command = [_executable("redis-cli"), "--cluster", "create",
                   *(f"{host}:{port}" for host, port in self.nodes), "--cluster-replicas", "0", "--cluster-yes"]
        out = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=self.cfg.services.start_timeout_s,
                             env={**os.environ, "REDISCLI_AUTH": self.cfg.redis_password()})
        with open(self._log, "a") as log:
            log.write(out.stdout + out.stderr)
        if out.returncode != 0 or "[OK] All 16384 slots covered" not in out.stdout:
            raise ServiceError(f"{self.name}: redis-cli --cluster create failed (see {self._log}):\n"
                               f"{(out.stdout + out.stderr)[-2000:]}")

    def down(self) -> str:
        stopped = []
        for _, port in self.nodes:
            name = self._node_name(port)
            pid = _read_pid(self.cfg, name)
            _pid_file(self.cfg, name).unlink(missing_ok=True)
            if pid:
                _stop_pid(pid)
                stopped.append(str(pid))
        if not stopped:
            return f"{self.name}: not running"
        return f"{self.name}: stopped the cluster's nodes (pids {', '.join(stopped)})"

    def status(self) -> ServiceStatus:
        pids = [_read_pid(self.cfg, self._node_name(port)) for _, port in self.nodes]
        healthy, problem = False, None
        if self.enabled and all(_port_open(host, port) for host, port in self.nodes):
            try:
                healthy = self.healthy()
            except Exception as error:  # status reports it; it never raises
                problem = f"{type(error).__name__}: {error}"
        running = [pid for pid in pids if pid]
        where = (f"cluster of {len(self.nodes)} masters {self._addresses()}  "
                 f"pids {', '.join(str(pid) if pid else '-' for pid in pids)}")
        return ServiceStatus(self.name, self.enabled, running[0] if running else None, self.host, self.port,
                             healthy, problem, where=where)

    def _addresses(self) -> str:
        return ", ".join(f"{host}:{port}" for host, port in self.nodes)

    @property
    def _log(self) -> Path:
        return self.cfg.run_dir / f"{self.name}-cluster.log"


class S3Service(_Service):
    name = "s3"
    _port_key = "services.s3.port"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.enabled = cfg.services.s3.start_local
        self.host, self.port = cfg.services.s3.host, cfg.services.s3.port

    def argv(self) -> list[str]:
        return [_executable("moto_server"), "-H", self.host, "-p", str(self.port)]

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/moto-api/", timeout=2) as resp:
            return resp.status == 200

    def after_start(self) -> None:
        from plumbing.s3 import s3_client

        client = s3_client(self.cfg)
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in self.cfg.s3.buckets:
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)


class MlflowService(_Service):
    name = "mlflow"
    _port_key = "mlflow.port"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.enabled = cfg.mlflow.start_local
        self.host, self.port = cfg.mlflow.host, cfg.mlflow.port

    def argv(self) -> list[str]:
        backend = self.cfg.mlflow.backend_store_uri
        if backend.startswith("sqlite:///"):
            Path(backend[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        artifacts = self.cfg.mlflow.artifacts_uri
        if "://" not in artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
        # The server proxies artifacts (mlflow-artifacts:/), so clients need no S3 keys.
        return [_executable("mlflow"), "server", "--host", self.host, "--port", str(self.port),
                "--backend-store-uri", backend, "--artifacts-destination", artifacts,
                "--workers", "1"]

    def env(self) -> dict[str, str]:
        env = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               # MLflow 3's job runner (GenAI jobs, unused here) starts seven huey
               # consumers of ~250 MB each per server.
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if self.cfg.s3.endpoint_url and self.cfg.mlflow.artifacts_uri.startswith("s3://"):
            env["MLFLOW_S3_ENDPOINT_URL"] = self.cfg.s3.endpoint_url
            key, secret = self.cfg.s3_keys()  # never None with an endpoint_url
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = str(key), str(secret)
            env["AWS_DEFAULT_REGION"] = self.cfg.s3.region
        return env

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.cfg.mlflow.tracking_uri}/health", timeout=2) as resp:
            return resp.status == 200


class KafkaService(_Service):
    """One Kafka node in KRaft combined mode (broker and controller, no ZooKeeper) on
    loopback, from the jars in ``.jars/broker`` (``jars/pom.xml``), data in
    ``<data_dir>/kafka``. The data folder is formatted once (a new cluster id); later
    starts reuse it, so topics and offsets survive ``down``/``up``. ``after_start``
    creates the event topics (``plumbing.kafka``)."""

    name = "kafka"
    _port_key = "services.kafka.port"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.settings = cfg.services.kafka
        self.enabled = self.settings.start_local
        self.host, self.port = self.settings.host, self.settings.port

    @property
    def data(self) -> Path:
        return self.cfg.data_dir / "kafka"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _class_path(self) -> str:
        from plumbing.spark import JARS_DIR, SparkSetupError, jar_paths

        try:
            jar_paths(self.cfg, "broker")
        except SparkSetupError as exc:
            raise ServiceError(f"kafka: {exc}") from None
        return str(JARS_DIR / "broker" / "*")  # one argument; java expands the * itself

    def _java(self, *args: str, heap: bool = False) -> list[str]:
        run = self.cfg.run_dir
        memory = ["-Xms256m", f"-Xmx{self.settings.heap}", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError",
                  "-XX:TieredStopAtLevel=1"] if heap else []
        return [_executable("java"), *memory, "-Djava.awt.headless=true", "-Dlog4j2.shutdownHookEnabled=false",
                f"-Dlog4j2.configurationFile={run / 'kafka-log4j2.properties'}", f"-Dkafka.logs.dir={run}",
                "-cp", self._class_path(), *args]

    def _write_configs(self) -> Path:
        run, settings = self.cfg.run_dir, self.settings
        if settings.controller_port != self.port and _port_open(self.host, settings.controller_port):
            raise ServiceError(
                f"kafka: controller port {settings.controller_port} on {self.host} is taken by another process. "
                f"Stop it, or choose another port in {self.cfg.source_file} or with the environment variable "
                f"TESSERA__SERVICES__KAFKA__CONTROLLER_PORT=<port>.")
        listeners = (f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{settings.controller_port}")
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": listeners,
            "advertised.listeners": listeners,
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "controller.quorum.bootstrap.servers": f"{self.host}:{settings.controller_port}",
            "log.dirs": str(self.data),
            "num.partitions": str(settings.partitions),
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",  # topics are made on purpose (plumbing.kafka)
            "num.network.threads": "2",
            "num.io.threads": "2",
        }
        server = run / "kafka-server.properties"
        server.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
        (run / "kafka-log4j2.properties").write_text("\n".join([
            "name=tessera-kafka",
            "appender.file.type=File",
            "appender.file.name=file",
            "appender.file.fileName=${sys:kafka.logs.dir}/kafka-server.log",
            "appender.file.layout.type=PatternLayout",
            "appender.file.layout.pattern=[%d] %p %m (%c)%n",
            "rootLogger.level=INFO",
            "rootLogger.appenderRef.file.ref=file",
            "logger.kafka.name=kafka",
            "logger.kafka.level=WARN",
            "logger.apache.name=org.apache.kafka",
            "logger.apache.level=WARN",
            "logger.state.name=state.change.logger",
            "logger.state.level=WARN",
            "logger.started.name=kafka.server.KafkaRaftServer",
            "logger.started.level=INFO",
            ""]))
        return server

    def _format_once(self, server: Path) -> None:
        """Format the data folder for a new single-node cluster, unless it already is."""
        if (self.data / "meta.properties").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        cluster_id = ""
        while not cluster_id or cluster_id.startswith("-"):  # Kafka's own rule for random ids
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        out = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(server)),
            capture_output=True, text=True, timeout=max(120.0, self.cfg.services.start_timeout_s),
            cwd=self.cfg.run_dir, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise ServiceError(f"kafka: formatting {self.data} failed:\n{(out.stdout + out.stderr)[-2000:]}")

    def argv(self) -> list[str]:
        server = self._write_configs()
        self._format_once(server)
        return self._java("kafka.Kafka", str(server), heap=True)

    def healthy(self) -> bool:
        from plumbing.kafka import broker_ids

        return _port_open(self.host, self.port) and bool(broker_ids(self.bootstrap_servers, timeout_s=2.0))

    def after_start(self) -> None:
        from plumbing.kafka import KafkaTopics, ensure_topics

        ensure_topics(KafkaTopics(self.bootstrap_servers, self.cfg.events.kafka_topic_prefix,
                                  self.settings.partitions), timeout_s=self.cfg.services.start_timeout_s)


class FeastUiService(_Service):
    """Feast's web UI (the feature catalog) on the profile's registry, on loopback. Started
    on demand, by ``tessera feast ui`` or ``up --only feast-ui``; a plain ``up`` leaves it
    out, while ``status`` and ``down`` include it whenever it runs. The port it listens on
    is kept beside its PID file, for ``status``."""

    name = "feast-ui"
    host = "127.0.0.1"
    DEFAULT_PORT = 8888  # Feast's own default

    def __init__(self, cfg: Config, port: int | None = None):
        super().__init__(cfg)
        self.enabled = True
        self.port = port or self._recorded_port() or self.DEFAULT_PORT

    @property
    def _port_file(self) -> Path:
        return self.cfg.run_dir / f"{self.name}.port"

    def _recorded_port(self) -> int | None:
        try:
            return int(self._port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        return _read_pid(self.cfg, self.name) is not None

    def up(self) -> str:
        # The port is an option of `tessera feast ui`, not a config key: say so (the base names a key).
        if not self.running() and _port_open(self.host, self.port):
            raise ServiceError(f"{self.name}: port {self.port} on {self.host} is taken by another process. "
                               f"Stop it, or choose another port: tessera feast ui --port <port>.")
        return super().up()

    def argv(self) -> list[str]:
        from plumbing.feast_repo import feast_command

        self._port_file.write_text(str(self.port))
        command, _ = feast_command(self.cfg, ["ui", "--host", self.host, "--port", str(self.port)])
        return command

    def env(self) -> dict[str, str]:
        # feature_repo/ builds the objects of this profile.
        return {PROFILE_ENV: str(self.cfg.source_file or self.cfg.profile)}

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=2) as resp:
            return resp.status == 200


def _services(cfg: Config, only: list[str] | None = None) -> list[_Service]:
    # Order matters: the MLflow server may keep its artifacts in the S3 endpoint.
    redis_service: _Service = RedisClusterService(cfg) if cfg.redis.mode == "cluster" else RedisService(cfg)
    all_services = [redis_service, S3Service(cfg), MlflowService(cfg), KafkaService(cfg)]
    feast_ui = FeastUiService(cfg)
    if (only and feast_ui.name in only) or feast_ui.running():  # on demand only
        all_services.append(feast_ui)
    unknown = set(only or []) - set(SERVICE_NAMES)
    if unknown:
        raise ServiceError(f"unknown service(s) {sorted(unknown)}; known: {', '.join(SERVICE_NAMES)}")
    return [s for s in all_services if not only or s.name in only]


@contextmanager
def _exclusive(cfg: Config):
    """One `up`/`down` at a time per profile: parallel test runs and jobs may call `up` at once."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.run_dir / "services.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def up(cfg: Config, only: list[str] | None = None) -> list[str]:
    with _exclusive(cfg):
        return [service.up() for service in _services(cfg, only)]


def down(cfg: Config, only: list[str] | None = None) -> list[str]:
    with _exclusive(cfg):
        return [service.down() for service in reversed(_services(cfg, only))]


def feast_ui_up(cfg: Config, port: int | None = None) -> str:
    """Start Feast's UI on ``port`` (a restart when it runs on another one)."""
    with _exclusive(cfg):
        return FeastUiService(cfg, port).up()


def status(cfg: Config, only: list[str] | None = None) -> list[ServiceStatus]:
    return [service.status() for service in _services(cfg, only)]
