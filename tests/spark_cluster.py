"""A Spark standalone cluster on loopback, started from the pyspark install: one master and
N workers, each its own JVM (``spark-class org.apache.spark.deploy.{master.Master,worker.Worker}``),
with logs and work folders under a given folder. Used by the cluster test and the cluster
benchmark; a profile points at it with ``TESSERA__SPARK__MASTER=spark://127.0.0.1:<port>``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyspark

SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def _workers_alive(ui_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as resp:
        import json

        return sum(1 for w in json.load(resp)["workers"] if w["state"] == "ALIVE")


@contextmanager
def standalone_cluster(folder: Path, workers: int = 2, cores: int = 1, memory: str = "3g",
                       timeout_s: float = 90, java_options: str = "") -> Iterator[str]:
    """Start a master and ``workers`` workers on 127.0.0.1; yield the master URL; stop them all.

    ``java_options`` go to every JVM of the cluster: the master, the workers and the
    executors they start (which inherit the workers' environment), through
    ``JAVA_TOOL_OPTIONS``. The tests pass conftest.TEST_JVM_OPTIONS (C1 only, serial GC)."""
    folder.mkdir(parents=True, exist_ok=True)
    port, ui_port = free_port(), free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(folder),
           "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}
    if java_options:
        env["JAVA_TOOL_OPTIONS"] = java_options
    processes = [_start([str(SPARK_CLASS), "org.apache.spark.deploy.master.Master",
                         "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)],
                        folder / "master.log", env)]
    url = f"spark://127.0.0.1:{port}"
    try:
        for index in range(workers):
            work = folder / f"worker-{index}"
            work.mkdir(exist_ok=True)
            processes.append(_start(
                [str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                 "--cores", str(cores), "--memory", memory, "--work-dir", str(work),
                 "--webui-port", str(free_port())],
                folder / f"worker-{index}.log", env))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if _workers_alive(ui_port) == workers:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"the standalone cluster did not start within {timeout_s:.0f} s; "
                                   f"see the logs in {folder}")
            time.sleep(0.5)
        yield url
    finally:
        for process in reversed(processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
