"""One typed configuration for every job, service and the API.

A profile is a YAML file in ``conf/`` (``local``, ``s3``) or any path. Values can be
overridden with environment variables named ``TESSERA__SECTION__KEY`` (double
underscores separate levels), e.g. ``TESSERA__REDIS__PORT=6400``. The text of an
override is parsed as YAML, so ``6400`` is an int and ``[a, b]`` a list.

``${data_dir}`` inside a string is replaced by the resolved ``data_dir`` so a profile
can say where things live relative to one root. Relative ``data_dir`` is relative to the
repository root (not the working directory), so a job started from anywhere finds the
same lake.

Any unknown key, missing value or wrong type raises :class:`ConfigError` naming the
key and the file (or the environment variable) it came from.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
ENV_PREFIX = "TESSERA__"
PROFILE_ENV = "TESSERA_PROFILE"
# The S3 key and secret used with a profile's own endpoint when the environment has none
# (moto accepts any): Config.s3_keys.
FALLBACK_S3_KEY = "testing"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(_Section):
    master: str = "local[*]"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(4, ge=1)
    ui_enabled: bool = False
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    # Free-form Spark settings for clusters (spark.executor.memory, jars, ...).
    extra_conf: dict[str, str] = Field(default_factory=dict)


class S3Config(_Section):
    """The S3-compatible endpoint: moto_server on loopback locally, real S3 in production."""

    endpoint_url: str | None = None  # None means AWS itself
    region: str = "us-east-1"
    # Names of the environment variables holding the keys (never the keys themselves).
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    buckets: list[str] = Field(default_factory=list)


class LakeConfig(_Section):
    """The offline store: Delta tables (delta-spark) under one root URI (local path or s3a://bucket/prefix)."""

    root: str


class EventsConfig(_Section):
    history_uri: str  # historical raw events (Parquet), local path or s3://
    landing_dir: str  # live JSON-lines files land here (source: files)
    # Where live events come from: Kafka topics (one per event type), or the landing folder.
    source: Literal["files", "kafka"] = "kafka"
    # None: the broker `tessera up` starts (services.kafka); a cluster: "host1:9092,host2:9092".
    kafka_bootstrap_servers: str | None = None
    # Topics are <prefix><event type>: transactions, activity, chargebacks by default.
    kafka_topic_prefix: str = ""


class RedisConfig(_Section):
    # standalone: one Redis (with replicas, if any) at host:port. cluster: Redis Cluster,
    # found through the seed nodes cluster_nodes ("host:port"; none: host:port alone);
    # `tessera up` then starts one master on each seed node and creates the cluster.
    mode: Literal["standalone", "cluster"] = "standalone"
    cluster_nodes: list[str] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(6390, ge=1, le=65535)
    db: int = Field(0, ge=0)
    password_env: str = "TESSERA_REDIS_PASSWORD"
    # A managed Redis: an ACL user (None: Redis's "default" user), TLS, and the CA bundle
    # that signed the server's certificate (None: the system's). The local redis-server
    # that `tessera up` starts speaks plain TCP on loopback, so keep these off with it.
    username: str | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None
    start_local: bool = True  # `tessera up` starts redis-server; False for a managed Redis

    @model_validator(mode="after")
    def _cluster_settings(self) -> RedisConfig:
        for node in self.cluster_nodes:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"cluster_nodes: {node!r} is not host:port")
        if self.mode == "cluster" and self.db != 0:
            raise ValueError("db: Redis Cluster has only database 0")
        return self

    def seed_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of the cluster's seed nodes: ``cluster_nodes``, else host:port."""
        nodes = [(host, int(port)) for host, _, port in (node.rpartition(":") for node in self.cluster_nodes)]
        return nodes or [(self.host, self.port)]


class MlflowConfig(_Section):
    scheme: Literal["http", "https"] = "http"
    host: str = "127.0.0.1"
    port: int = Field(5010, ge=1, le=65535)
    backend_store_uri: str
    artifacts_uri: str
    start_local: bool = True

    @property
    def tracking_uri(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class S3ServiceConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9010, ge=1, le=65535)
    start_local: bool = True


class KafkaServiceConfig(_Section):
    """The Kafka broker `tessera up` starts: one KRaft node (broker and controller), loopback."""

    host: str = "127.0.0.1"
    port: int = Field(9290, ge=1, le=65535)             # clients (PLAINTEXT)
    controller_port: int = Field(9291, ge=1, le=65535)  # the KRaft controller quorum
    partitions: int = Field(4, ge=1)                    # of each event topic it creates
    heap: str = "512m"
    start_local: bool = True  # False with a Kafka cluster (set events.kafka_bootstrap_servers)


class ServicesConfig(_Section):
    s3: S3ServiceConfig = S3ServiceConfig()
    kafka: KafkaServiceConfig = KafkaServiceConfig()
    start_timeout_s: float = Field(30.0, gt=0)


class MonitoringConfig(_Section):
    """Drift of a table version's features against a reference version (plumbing.feature_stats)."""

    psi_warn: float = Field(0.2, gt=0)            # population stability index over this: a warning
    ks_warn: float = Field(0.1, gt=0, le=1)       # largest CDF gap over this: a warning
    psi_block: float | None = Field(None, gt=0)   # set: a PSI over it blocks publication (off by default)


class ServedLogConfig(_Section):
    """The API's sample of its answers, kept in the lake table served_features (serving.served_log)."""

    sample_fraction: float = Field(0.0, ge=0, le=1)  # of the answered entities; 0: off
    buffer_rows: int = Field(10_000, ge=1)           # waiting for the next append; more are dropped (counted)
    flush_interval_s: float = Field(5.0, gt=0)       # between appends


class ServingConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8010, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    api_key_env: str = "TESSERA_API_KEY"
    require_api_key: bool = False
    max_entities: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1)
    request_timeout_s: float = Field(2.0, gt=0)
    served_log: ServedLogConfig = ServedLogConfig()


class Config(_Section):
    profile: str
    data_dir: Path
    spark: SparkConfig = SparkConfig()
    s3: S3Config = S3Config()
    lake: LakeConfig
    events: EventsConfig
    redis: RedisConfig = RedisConfig()
    mlflow: MlflowConfig
    services: ServicesConfig = ServicesConfig()
    serving: ServingConfig = ServingConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    source_file: Path | None = None

    # ---- derived locations, all under data_dir -------------------------------------
    @property
    def run_dir(self) -> Path:
        """PID files, logs and generated secrets of the local services."""
        return self.data_dir / "run"

    @property
    def checkpoint_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    def storage_options(self, uri: str | None = None) -> dict[str, str]:
        """Options for deltalake / pyarrow to reach ``uri`` (default: the lake root);
        empty for local paths."""
        if not (uri or self.lake.root).startswith(("s3://", "s3a://")):
            return {}
        opts = {"AWS_REGION": self.s3.region}
        if self.s3.endpoint_url:
            opts.update(AWS_ENDPOINT_URL=self.s3.endpoint_url, AWS_ALLOW_HTTP="true")
        key, secret = self.s3_keys()
        if key and secret:
            opts.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
        return opts

    def s3_keys(self) -> tuple[str | None, str | None]:
        """The S3 access key and secret, from the environment variables the profile names.
        The one place of the fallback: a profile with an ``endpoint_url`` (moto locally)
        gets ``"testing"`` for a missing key, as moto accepts any; against AWS itself a
        missing key stays None, so the SDK's own credential chain applies."""
        key, secret = os.environ.get(self.s3.access_key_env), os.environ.get(self.s3.secret_key_env)
        if self.s3.endpoint_url:
            key, secret = key or FALLBACK_S3_KEY, secret or FALLBACK_S3_KEY
        return key, secret

    def kafka_bootstrap_servers(self) -> str:
        """``events.kafka_bootstrap_servers``, or the local broker's address when it is unset."""
        if self.events.kafka_bootstrap_servers:
            return self.events.kafka_bootstrap_servers
        if self.services.kafka.start_local:
            return f"{self.services.kafka.host}:{self.services.kafka.port}"
        raise ConfigError(f"events.kafka_bootstrap_servers: not set, and services.kafka.start_local is false "
                          f"[in {self.source_file}]")

    def kafka_topic(self, event_type: str) -> str:
        return self.events.kafka_topic_prefix + event_type

    def redis_password(self) -> str:
        """From the variable named by ``redis.password_env``; when that is unset, a random
        one generated once into ``<run_dir>/redis.password`` (mode 0600) and reused by
        every later command of the profile. Never in the repository."""
        from_env = os.environ.get(self.redis.password_env)
        if from_env:
            return from_env
        path = self.run_dir / "redis.password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(24))
        return path.read_text().strip()


def _profile_path(profile_or_path: str | os.PathLike[str] | None) -> Path:
    name = str(profile_or_path or os.environ.get(PROFILE_ENV) or "local")
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate.resolve()
    path = CONF_DIR / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {name!r}: no file {path} (profiles: {', '.join(known)})")
    return path


def _apply_env_overrides(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, str]:
    """Set TESSERA__A__B=value into raw["a"]["b"]; return {dotted key: env var name}."""
    origins: dict[str, str] = {}
    for var, text in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in var[len(ENV_PREFIX):].split("__") if k]
        if not keys:
            continue
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(keys)}: environment variable {var} sets a key inside "
                                  f"{key!r}, which is not a section")
            node = child
        node[keys[-1]] = yaml.safe_load(text) if text != "" else ""
        origins[".".join(keys)] = var
    return origins


def _substitute(value: Any, data_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace("${data_dir}", data_dir)
    if isinstance(value, dict):
        return {k: _substitute(v, data_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, data_dir) for v in value]
    return value


def load_config(profile_or_path: str | os.PathLike[str] | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Load a profile (name in conf/ or a YAML path), apply env overrides, validate."""
    path = _profile_path(profile_or_path)
    environ = dict(os.environ if environ is None else environ)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    origins = _apply_env_overrides(raw, environ)

    data_dir = Path(str(raw.get("data_dir", ".tessera/" + path.stem)))
    if not data_dir.is_absolute():
        data_dir = REPO_ROOT / data_dir
    raw["data_dir"] = str(data_dir)
    raw = _substitute(raw, str(data_dir))
    raw.setdefault("profile", path.stem)
    raw["source_file"] = str(path)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            source = f"environment variable {origins[key]}" if key in origins else str(path)
            got = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {message}{got} [in {source}]")
        raise ConfigError(f"invalid configuration {path}:\n  " + "\n  ".join(problems)) from None


def add_profile_option(parser: argparse.ArgumentParser) -> None:
    """The ``--profile`` option, as every command line spells it: a profile name in conf/ or
    a YAML path; by default ``$TESSERA_PROFILE``, else ``local`` (read when the parser is
    built, so ``tessera --profile X <command>`` reaches the command's own parser)."""
    parser.add_argument("--profile", default=os.environ.get(PROFILE_ENV, "local"),
                        help=f"config profile name in conf/ or a YAML path (default: ${PROFILE_ENV} or local)")


def load_config_for_command(profile_or_path: str | os.PathLike[str] | None, program: str) -> Config:
    """:func:`load_config` for a command-line entry point: a bad profile prints one line,
    ``<program>: <problem>``, and exits with code 2 (the jobs' bad-usage code)."""
    try:
        return load_config(profile_or_path)
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
