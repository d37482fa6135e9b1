"""Local services the project starts itself: Redis, an S3-compatible endpoint (moto) and
an MLflow tracking server.

Each service runs as its own process group, bound to loopback, with a PID file and a
log in ``<data_dir>/run``. ``up`` is idempotent (a healthy service is left alone),
waits for a health check with a timeout, and refuses with a clear message when the port
is taken by something else. ``down`` stops the whole process group (TERM, then KILL)
and checks that nothing is left.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from plumbing.config import Config

SERVICE_NAMES = ("redis", "s3", "mlflow")


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

    def line(self) -> str:
        if not self.enabled:
            return f"{self.name:7s} not used by this profile"
        state = "healthy" if self.healthy else ("running, not answering" if self.pid else "stopped")
        pid = f"pid {self.pid}" if self.pid else "no pid"
        return f"{self.name:7s} {state:24s} {self.host}:{self.port}  {pid}"


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
    while time.monotonic() < deadline:
        if not _alive(pid):
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ServiceError(f"{what} exited while starting; last log lines ({log}):\n{tail}")
        try:
            if check():
                return
        except Exception:  # not ready yet: connection refused, 503, ...
            pass
        time.sleep(0.3)
    raise ServiceError(f"{what} did not become healthy within {timeout_s:.0f}s; see {log}")


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
class _Service:
    name: str

    def __init__(self, cfg: Config):
        self.cfg = cfg

    enabled: bool
    host: str
    port: int

    def argv(self) -> list[str]: ...
    def env(self) -> dict[str, str]: return {}
    def healthy(self) -> bool: ...
    def after_start(self) -> None: ...

    def status(self) -> ServiceStatus:
        pid = _read_pid(self.cfg, self.name)
        healthy = False
        if self.enabled and _port_open(self.host, self.port):
            try:
                healthy = self.healthy()
            except Exception:
                healthy = False
        return ServiceStatus(self.name, self.enabled, pid, self.host, self.port, healthy)

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
        env = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
        if self.cfg.s3.endpoint_url and self.cfg.mlflow.artifacts_uri.startswith("s3://"):
            env["MLFLOW_S3_ENDPOINT_URL"] = self.cfg.s3.endpoint_url
            env.setdefault("AWS_ACCESS_KEY_ID", os.environ.get(self.cfg.s3.access_key_env, "testing"))
            env.setdefault("AWS_SECRET_ACCESS_KEY", os.environ.get(self.cfg.s3.secret_key_env, "testing"))
            env["AWS_DEFAULT_REGION"] = self.cfg.s3.region
        return env

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.cfg.mlflow.tracking_uri}/health", timeout=2) as resp:
            return resp.status == 200


def _services(cfg: Config, only: list[str] | None = None) -> list[_Service]:
    # Order matters: the MLflow server may keep its artifacts in the S3 endpoint.
    all_services = [RedisService(cfg), S3Service(cfg), MlflowService(cfg)]
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


def status(cfg: Config, only: list[str] | None = None) -> list[ServiceStatus]:
    return [service.status() for service in _services(cfg, only)]
