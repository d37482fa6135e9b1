"""Shared fixtures: one SparkSession per test run, the profiles' real services.

Services are started by the project's own code (plumbing.services.up), exactly as
`tessera up` does; a developer's already running services are reused.
"""
from __future__ import annotations

import os
import sys

import pytest

from plumbing import services
from plumbing.config import Config, load_config
from plumbing.spark import get_spark


@pytest.fixture(scope="session")
def local_cfg() -> Config:
    return load_config("local")


@pytest.fixture(scope="session")
def s3_cfg() -> Config:
    return load_config("s3")


@pytest.fixture(scope="session")
def spark(local_cfg):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = get_spark(local_cfg, "tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def local_services(local_cfg) -> Config:
    """Redis and MLflow of the local profile, up for the whole run."""
    services.up(local_cfg)
    return local_cfg


@pytest.fixture(scope="session")
def s3_services(s3_cfg) -> Config:
    """Redis, the S3 endpoint (buckets created) and MLflow of the s3 profile."""
    services.up(s3_cfg)
    return s3_cfg
