"""The lake tables of events (the feature tables are in ``transformations.catalog``).

``bronze_<event_type>``
    Every accepted event, once: the batch job replaces its date range from the history,
    the streaming job appends each micro-batch from the landing zone. The stream computes
    its windows over it, so online values count the history too, and the consistency
    check recomputes the batch values from it. Each row says where it came from
    (``query_id``: the stream's checkpoint query, or ``batch-features``) and when it arrived.

``dead_letter_<event_type>`` (batch) and ``stream_dead_letter_<event_type>`` (stream)
    Malformed records with the raw record, the reason and the arrival time. Two tables,
    because a batch re-run replaces its range of dead letters (so each malformed history
    row is filed once) and must not erase what the stream filed in the same days.

``ingest_dead_letter_<event_type>`` (``tessera ingest``)
    The rows of an imported file that do not fit, with the source row as it was read and
    the import's id: a table of its own, so the batch job's re-runs never erase them.
"""
from __future__ import annotations

from typing import Literal

from plumbing.config import Config
from plumbing.lake import LakeTable

EVENT_TIME = "event_time"
FILED_AT = "filed_at"
# Where a bronze row came from: when it arrived, and the stream's checkpoint query and
# micro-batch (batch ids restart with a new checkpoint), or BATCH_JOB_QUERY_ID and -1.
ARRIVED_AT = "arrived_at"
QUERY_ID = "query_id"
BATCH_ID = "batch_id"
BATCH_JOB_QUERY_ID = "batch-features"


def bronze_table(cfg: Config, event_type: str) -> LakeTable:
    return LakeTable.for_config(cfg, f"bronze_{event_type}", time_column=EVENT_TIME)


def dead_letter_table(cfg: Config, event_type: str, source: Literal["batch", "stream", "ingest"]) -> LakeTable:
    name = {"batch": f"dead_letter_{event_type}", "stream": f"stream_dead_letter_{event_type}",
            "ingest": f"ingest_dead_letter_{event_type}"}[source]
    return LakeTable.for_config(cfg, name, time_column=FILED_AT)
