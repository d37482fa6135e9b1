"""What the stream reads of Spark's checkpoint, pinned against Spark's public API.

The stream applies each micro-batch's event-time watermark itself (its query has no
stateful operator, so Spark lets older rows through), and it must be the value Spark
recorded for that micro-batch: the one Spark reuses when it re-runs the micro-batch after a
crash. No public API hands it to ``foreachBatch``, so ``batch_watermark`` reads it from the
checkpoint's offset log. This test runs a small query and holds what that read returns
equal to the watermark Spark reports for the same micro-batch through
``StreamingQuery.recentProgress`` (public): a Spark whose checkpoint layout differs fails
here, loudly, not in production.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from jobs.streaming.source import batch_watermark

START = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
LATENESS = timedelta(seconds=60)


def test_the_offset_logs_watermark_is_the_one_spark_reports(spark, tmp_path):
    folder, checkpoint = tmp_path / "in", tmp_path / "checkpoint"
    folder.mkdir()
    # One file a micro-batch (maxFilesPerTrigger 1, oldest file first), event times rising.
    for number in range(3):
        path = folder / f"{number}.txt"
        path.write_text(f"{(START + timedelta(minutes=10 * number)).isoformat()}\n")
        os.utime(path, (1_700_000_000 + number, 1_700_000_000 + number))
    read: dict[int, datetime] = {}

    def record(batch, batch_id):
        read[batch_id] = batch_watermark(checkpoint, batch_id)
        batch.collect()  # as the job does: the watermark moves with the rows Spark runs through

    stream = (spark.readStream.option("maxFilesPerTrigger", 1).text(str(folder))
              .select(F.col("value").cast("timestamp").alias("event_time"))
              .withWatermark("event_time", f"{int(LATENESS.total_seconds())} seconds"))
    query = (stream.writeStream.foreachBatch(record).option("checkpointLocation", str(checkpoint))
             .trigger(availableNow=True).start())
    query.awaitTermination(120)
    assert not query.isActive, "the query did not drain 3 files in 120 s"

    reported = {progress.batchId: datetime.fromisoformat(progress.eventTime["watermark"].replace("Z", "+00:00"))
                for progress in query.recentProgress}
    assert sorted(reported) == sorted(read) == [0, 1, 2]
    assert read == reported
    # And the values are what the watermark means: the newest earlier event time minus the lateness.
    assert read == {0: datetime.fromtimestamp(0, timezone.utc), 1: START - LATENESS,
                    2: START + timedelta(minutes=10) - LATENESS}


def test_an_offset_log_of_another_layout_fails_loudly(tmp_path):
    (tmp_path / "offsets").mkdir()
    (tmp_path / "offsets" / "0").write_text('v2\n{"batchWatermarkMs": 0}\n')
    with pytest.raises(RuntimeError, match="offset log"):
        batch_watermark(tmp_path, 0)
    (tmp_path / "offsets" / "0").write_text('v1\n{"watermark": 0}\n')
    with pytest.raises(RuntimeError, match="batchWatermarkMs"):
        batch_watermark(tmp_path, 0)
