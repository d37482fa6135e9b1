"""Where Redis is, and one connection pool per process and settings."""
from __future__ import annotations

from dataclasses import dataclass, field

import redis

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

    @classmethod
    def from_config(cls, cfg: Config) -> RedisSettings:
        return cls(cfg.redis.host, cfg.redis.port, cfg.redis.db, cfg.redis_password(),
                   cfg.redis.username, cfg.redis.ssl, cfg.redis.ssl_ca_certs)

    def client_options(self) -> dict:
        """The connection options redis-py's clients (sync and asyncio) take for these settings."""
        options = {"host": self.host, "port": self.port, "db": self.db, "password": self.password,
                   "username": self.username}
        if self.ssl:
            options.update(ssl=True, ssl_ca_certs=self.ssl_ca_certs)
        return options


_POOLS: dict[RedisSettings, redis.ConnectionPool] = {}


def redis_client(settings: RedisSettings) -> redis.Redis:
    """A client on this process's one connection pool for ``settings`` (cheap to call).

    redis-py pools notice a fork and reconnect, so Spark's forked Python workers are safe.
    """
    pool = _POOLS.get(settings)
    if pool is None:
        options = settings.client_options()
        if options.pop("ssl", False):  # a pool takes TLS as its connection class
            options["connection_class"] = redis.SSLConnection
        pool = _POOLS[settings] = redis.ConnectionPool(
            **options, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)
    return redis.Redis(connection_pool=pool)
