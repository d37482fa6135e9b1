"""Where Redis is, and one connection pool (or cluster client) per process and settings."""
from __future__ import annotations

from dataclasses import dataclass, field

import redis
from redis.cluster import ClusterNode, RedisCluster

from plumbing.config import Config


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is: plain values, so a writer pickles cheaply into Spark tasks."""

    host: str
    port: int
    db: int
    password: str | None = field(default=None, repr=False)
    username: str | None = None      # redis.username (ACL user)
    ssl: bool = False                # redis.ssl: TLS to a managed Redis
    ssl_ca_certs: str | None = None  # redis.ssl_ca_certs: CA bundle (None: the system's)
    mode: str = "standalone"         # redis.mode: standalone | cluster
    nodes: tuple[tuple[str, int], ...] = ()  # cluster mode: the seed nodes (host, port)

    @classmethod
    def from_config(cls, cfg: Config) -> RedisSettings:
        return cls(cfg.redis.host, cfg.redis.port, cfg.redis.db, cfg.redis_password(),
                   cfg.redis.username, cfg.redis.ssl, cfg.redis.ssl_ca_certs, cfg.redis.mode,
                   tuple(cfg.redis.seed_nodes()) if cfg.redis.mode == "cluster" else ())

    @property
    def cluster(self) -> bool:
        return self.mode == "cluster"

    def client_options(self) -> dict:
        """The connection options redis-py's clients (sync and asyncio) take for these
        settings; for a cluster client, without the address and db (see ``cluster_nodes``)."""
        options: dict = {"password": self.password, "username": self.username}
        if not self.cluster:
            options.update(host=self.host, port=self.port, db=self.db)
        if self.ssl:
            options.update(ssl=True, ssl_ca_certs=self.ssl_ca_certs)
        return options


_POOLS: dict[RedisSettings, redis.ConnectionPool] = {}
_CLUSTERS: dict[RedisSettings, RedisCluster] = {}


def redis_client(settings: RedisSettings) -> redis.Redis | RedisCluster:
    """A client on this process's one connection pool for ``settings`` (cheap to call);
    in cluster mode, :func:`cluster_client` (the same commands, each routed by its key).

    redis-py pools notice a fork and reconnect, so Spark's forked Python workers are safe.
    """
    if settings.cluster:
        return cluster_client(settings)
    pool = _POOLS.get(settings)
    if pool is None:
        options = settings.client_options()
        if options.pop("ssl", False):  # a pool takes TLS as its connection class
            options["connection_class"] = redis.SSLConnection
        pool = _POOLS[settings] = redis.ConnectionPool(
            **options, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)
    return redis.Redis(connection_pool=pool)


def cluster_client(settings: RedisSettings) -> RedisCluster:
    """This process's one Redis Cluster client for ``settings``: it learns the slot map
    from the seed nodes and keeps a connection pool per node."""
    client = _CLUSTERS.get(settings)
    if client is None:
        client = _CLUSTERS[settings] = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in settings.nodes],
            **settings.client_options(), socket_connect_timeout=5, socket_timeout=30)
    return client
