"""Two Spark drivers append to one Delta table on the S3 endpoint at the same time (as the
batch job and the stream do to ``bronze_*``): every commit of both lands, because commits
go through S3's conditional PUT (``dev.tessera.delta.S3ConditionalPutLogStore``,
``plumbing/spark.py``). Each driver is a process of its own with its own JVM.
"""
from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest
from deltalake import DeltaTable

from plumbing.config import REPO_ROOT
from plumbing.lake import LakeTable

APPENDS = 6
DRIVER = """
import sys, time
from datetime import datetime, timezone
from pathlib import Path
from plumbing.config import load_config
from plumbing.lake import LakeTable
from plumbing.spark import get_spark

cfg = load_config("s3")
spark = get_spark(cfg, "two-drivers")
table = LakeTable(sys.argv[1], cfg.storage_options())
print("log store:", spark.conf.get("spark.delta.logStore.s3a.impl"), flush=True)
table.read(spark).count()  # warm S3A up before the start line: both drivers begin writing together
barrier = Path(sys.argv[4])
(barrier / sys.argv[2]).touch()
while len(list(barrier.iterdir())) < 2:
    time.sleep(0.05)
for i in range(int(sys.argv[3])):
    rows = spark.createDataFrame([(sys.argv[2], i, datetime(2026, 1, 1, tzinfo=timezone.utc))],
                                 "driver string, i int, event_ts timestamp")
    table.write(rows)
"""


def _moto_rejections(cfg) -> int:
    """Conditional PUTs the S3 endpoint refused so far (HTTP 412: the version was taken)."""
    log = cfg.run_dir / "s3.log"
    return sum(1 for line in log.read_text(errors="replace").splitlines() if '" 412 ' in line)


@pytest.mark.e2e
def test_two_drivers_appending_to_one_s3_table_lose_no_commit(spark, s3_services, tmp_path):
    cfg = s3_services
    table = LakeTable(f"s3a://tessera-lake/test_two_drivers/{uuid.uuid4().hex[:12]}", cfg.storage_options())
    # The table exists first: two writers creating one table conflict by design (Delta's rule).
    table.write(spark.createDataFrame([("setup", 0, datetime(2026, 1, 1, tzinfo=timezone.utc))],
                                      "driver string, i int, event_ts timestamp"))
    rejected_before = _moto_rejections(cfg)
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, table.uri, name, str(APPENDS), str(tmp_path)],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name in ("a", "b")]
    outputs = [driver.communicate(timeout=900)[0] for driver in drivers]
    for driver, output in zip(drivers, outputs, strict=True):
        assert driver.returncode == 0, output[-4000:]
        assert "log store: dev.tessera.delta.S3ConditionalPutLogStore" in output

    log = DeltaTable(table.uri, storage_options=cfg.storage_options())
    assert log.version() == 2 * APPENDS  # version 0 made the table, then one per append
    counts = {row["driver"]: row["i_count"]
              for row in log.to_pyarrow_table().group_by("driver").aggregate([("i", "count")]).to_pylist()}
    assert counts == {"setup": 1, "a": APPENDS, "b": APPENDS}
    # The drivers did race for versions, and S3 settled each race (not luck of timing).
    assert _moto_rejections(cfg) > rejected_before
