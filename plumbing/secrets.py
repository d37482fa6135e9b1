"""Secrets are never in the repository: they come from the environment or are generated.

The local Redis password is taken from the variable named by ``redis.password_env``;
when that is unset, a random one is generated once into ``<data_dir>/run/redis.password``
(mode 0600) and reused by every later command of the same profile.
"""
from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plumbing.config import Config


def redis_password(cfg: Config) -> str:
    from_env = os.environ.get(cfg.redis.password_env)
    if from_env:
        return from_env
    path = cfg.run_dir / "redis.password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(24))
    return path.read_text().strip()
