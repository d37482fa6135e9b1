"""Shared fixtures: one SparkSession per test run, the profiles' real services; the tiers.

Services are started by the project's own code (plumbing.services.up), exactly as
`tessera up` does; a developer's already running services are reused.

Tiers (markers registered in pytest.ini, docs/testing.md):
- ``e2e``: a module that declares ``pytestmark = pytest.mark.e2e`` (jobs in processes of
  their own, a cluster, notebooks, a scratch clone);
- ``integration``: any other test that needs a service fixture (Redis, S3, MLflow, Kafka);
- ``unit``: the rest, which start no service (a local Spark session at most).
The tier follows from the fixtures, so a unit test cannot reach a service by accident.
Tests run in tier order, unit first: a broken transformation fails in the first minute.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from plumbing import services
from plumbing.config import Config, load_config
from plumbing.spark import get_spark, jar_paths, s3a_conf

# Fixtures that start services: the profiles' shared ones, and test_services' own set.
SERVICE_FIXTURES = frozenset({"local_services", "s3_services", "isolated_cfg"})
TIERS = ("unit", "integration", "e2e")

# The Spark JVMs of the tests run tiny data through many different plans: most of their
# CPU goes to starting up and compiling, little to running the compiled code. So every
# driver JVM of the test run gets C1 only (no C2 compiler threads competing for the two
# cores) and the serial collector. Measured here: one spark-submit of a small job took
# 21-25 CPU s without, 12 with; the README's batch-features example 112 CPU s against 101;
# the tests' own session (this process's JVM) over two runs of the batch job 163 CPU s
# against 113. SPARK_SUBMIT_OPTS reaches every JVM started through spark-submit, and
# pyspark starts its JVM that way too: the session below, the jobs the tests run in
# processes of their own, the notebooks' kernels. Not the Kafka broker, not a user's runs.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("SPARK_SUBMIT_OPTS", TEST_JVM_OPTIONS)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if not (item.get_closest_marker("e2e") or item.get_closest_marker("integration")):
            needs_services = SERVICE_FIXTURES & set(item.fixturenames)
            item.add_marker("integration" if needs_services else "unit")
    items.sort(key=lambda item: next(index for index, tier in enumerate(TIERS) if item.get_closest_marker(tier)))


@pytest.fixture(autouse=True)
def _unit_tests_start_no_service(request, monkeypatch) -> None:
    """A unit test that starts a service fails, naming the fix: a service fixture, or an
    explicit ``integration`` marker (a test that asks for one with getfixturevalue)."""
    if request.node.get_closest_marker("unit"):
        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} is in the unit tier but starts a service: "
                                 f"use a service fixture or mark it integration (docs/testing.md)")
        monkeypatch.setattr(services, "up", refuse)


@pytest.fixture(scope="session")
def local_cfg() -> Config:
    return load_config("local")


@pytest.fixture(scope="session")
def s3_cfg() -> Config:
    return load_config("s3")


def both_profiles_session_cfg(local_cfg: Config, s3_cfg: Config) -> Config:
    """The local profile, plus what the s3 profile's session has: the s3a class path, the S3
    log store's jar and the s3a settings for the s3 profile's endpoint. One test session then
    reads and writes local tables and the s3 profile's ``s3a://`` tables alike."""
    s3_class_path = ":".join(jar_paths(s3_cfg, "s3"))
    extra = {**s3a_conf(s3_cfg),
             "spark.jars": ",".join(jar_paths(local_cfg, "spark") + jar_paths(s3_cfg, "s3", subfolder="delta")),
             "spark.driver.extraClassPath": s3_class_path,
             "spark.executor.extraClassPath": s3_class_path,
             **local_cfg.spark.extra_conf}
    spark_cfg = local_cfg.spark.model_copy(update={"extra_conf": extra})
    return local_cfg.model_copy(update={"spark": spark_cfg})


# The unit tests' DataFrames hold a few rows each, in many different plans: Spark's machinery
# for large data only costs them time. For a run of the unit tier alone (unit_session_cfg):
UNIT_SPARK_CONF = {
    # Each plan's operators and expressions are interpreted, not compiled to Java and then by
    # Janino (whole-stage code generation, and the generated projections and predicates
    # otherwise used outside it): on a few rows, compiling cost far more than it saved.
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    # Adaptive execution re-plans after each shuffle: one partition of a few rows gains nothing.
    "spark.sql.adaptive.enabled": "false",
}


def unit_session_cfg(local_cfg: Config) -> Config:
    """The local profile's session for a run of the unit tier alone: one partition per
    shuffle and per local collection, since the unit tests' DataFrames hold a few rows and
    each further task costs its scheduling (measured on 2 cores, 247 unit tests: 135-138 s
    with the profile's 4, 97-104 s with 1), and ``UNIT_SPARK_CONF``. No S3 class path
    either (no unit test reaches S3), which measured no difference on its own.

    Only for the unit tier alone: the integration and e2e tests run the jobs on more data
    (the batch job's history, the stream's micro-batches), where code generation and
    adaptive execution pay, and the session of a whole run is the jobs' own settings."""
    spark_cfg = local_cfg.spark.model_copy(update={"shuffle_partitions": 1,
                                                   "extra_conf": {**local_cfg.spark.extra_conf,
                                                                  **UNIT_SPARK_CONF}})
    return local_cfg.model_copy(update={"spark": spark_cfg})


# `make test-fast` (`-m unit`, no path given): the unit tier's Spark session starts in a
# thread while pytest imports the test modules (feast, mlflow, Great Expectations: ~15 s of
# one core, all modules are imported whatever -m selects), so the JVM's start (~10 s, on
# the other core) is no longer waited for after the collection.
_early_session: dict[str, Future] = {}


def _whole_unit_tier(config) -> bool:
    return (config.getoption("markexpr") == "unit"
            and config.args_source == pytest.Config.ArgsSource.TESTPATHS)


def pytest_sessionstart(session) -> None:
    if _whole_unit_tier(session.config):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unit-spark-session")
        _early_session["spark"] = pool.submit(get_spark, unit_session_cfg(load_config("local")), "tests")
        pool.shutdown(wait=False)  # the thread ends with its one task


def pytest_sessionfinish(session) -> None:
    """Stops the early session when no test took it (--collect-only, no test selected)."""
    future = _early_session.pop("spark", None)
    if future is not None and future.exception() is None:
        future.result().stop()


@pytest.fixture(scope="session")
def spark(request, local_cfg, s3_cfg):
    """One session for the whole run. A run of unit tests only gets ``unit_session_cfg``
    (started early for the whole tier: ``pytest_sessionstart``); any other run (``make
    test`` included, its unit tier too) the profile's partitions and both profiles' class
    paths."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    early = _early_session.pop("spark", None)
    if early is not None:
        session = early.result()  # its exception, if it failed to start
    else:
        unit_only = all(item.get_closest_marker("unit") for item in request.session.items)
        cfg = unit_session_cfg(local_cfg) if unit_only else both_profiles_session_cfg(local_cfg, s3_cfg)
        session = get_spark(cfg, "tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def local_services(local_cfg) -> Config:
    """Redis and MLflow of the local profile, up for the whole run."""
    services.up(local_cfg)
    return local_cfg


@pytest.fixture(scope="session")
def batch_job_lake(local_services, spark, tmp_path_factory):
    """One run of the batch job, every table, on the local profile: a generated history of
    ``BATCH_EVENTS`` over three days, 1 % of them malformed (so it writes every kind of
    table it writes: features, bronze and dead letters). Returns ``(cfg, results)``.

    Computed once per test run (a run costs 35-80 s here) and shared by the batch job's
    tests, which re-run ranges on it (each re-run replaces its range: the tables stay what
    one run writes), and by the lake's test that opens every table the job wrote."""
    from jobs import batch_features
    from tests.generated_lake import BATCH_END, BATCH_NOW, BATCH_START, generate_batch_history

    root = tmp_path_factory.mktemp("batch_job_lake")
    cfg = load_config("local", environ={**os.environ, "TESSERA__LAKE__ROOT": str(root / "lake"),
                                        "TESSERA__EVENTS__HISTORY_URI": str(root / "history")})
    generate_batch_history(cfg)
    results = batch_features.run(cfg, BATCH_START, BATCH_END, now=BATCH_NOW, online=False, spark=spark)
    return cfg, results


@pytest.fixture(scope="session")
def s3_services(s3_cfg) -> Config:
    """Redis, the S3 endpoint (buckets created) and MLflow of the s3 profile."""
    services.up(s3_cfg)
    return s3_cfg
