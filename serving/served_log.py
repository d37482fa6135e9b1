"""Served features, sampled: what the API answered, kept in the Delta table ``served_features``.

A skew check compares what the model is served with what it learned from; for that the
API keeps a sample of its answers (``serving.served_log``): each entity of a
``/v1/features`` or ``/v1/predict`` answer is kept with probability ``sample_fraction``,
as one row: when, which endpoint, the entity, every feature's value and status, and for
a prediction the model version and the score.

The request never waits for it. Answering puts the sampled rows in a buffer in memory
(a list append under a lock); a thread of its own appends the buffer to Delta every
``flush_interval_s`` through ``deltalake`` (no Spark in the API). A full buffer
(``buffer_rows``) drops the new rows and counts them
(``tessera_served_log_rows_total{outcome="dropped"}``); an append that fails drops its
rows, counts them (``failed``) and logs why: the answers go on either way. Stopping
the app flushes what is left.

Each uvicorn worker has its own buffer and appends on its own; Delta's blind appends
from several writers do not conflict.
"""
from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from plumbing.config import Config, ServedLogConfig
from plumbing.lake import LakeTable
from serving import metrics

log = logging.getLogger(__name__)

SERVED_FEATURES = "served_features"
SERVED_AT = "served_at"
SERVED_FEATURES_SCHEMA = T.StructType([
    T.StructField(SERVED_AT, T.TimestampType(), nullable=False),
    T.StructField("endpoint", T.StringType(), nullable=False),       # features | predict
    T.StructField("entity", T.MapType(T.StringType(), T.StringType()), nullable=False),
    T.StructField("feature_values", T.MapType(T.StringType(), T.DoubleType()), nullable=False),
    T.StructField("feature_statuses", T.MapType(T.StringType(), T.StringType()), nullable=False),
    T.StructField("model_name", T.StringType(), nullable=True),      # predict only
    T.StructField("model_version", T.StringType(), nullable=True),
    T.StructField("score", T.DoubleType(), nullable=True),
])


ARROW_SCHEMA = to_arrow_schema(SERVED_FEATURES_SCHEMA, timezone="UTC")


def served_features_table(cfg: Config) -> LakeTable:
    return LakeTable.for_config(cfg, SERVED_FEATURES, time_column=SERVED_AT)


class ServedLog:
    """The sampled answers of one API process and the thread that appends them to Delta."""

    def __init__(self, table: LakeTable, settings: ServedLogConfig, rng: random.Random | None = None):
        self.table, self.settings = table, settings
        self._rng = rng or random.Random()
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.sample_fraction > 0

    # ---- on the event loop: cheap, never blocks on I/O -----------------------------------
    def sample(self, count: int) -> list[int]:
        """Which of ``count`` answered entities to keep (most of the time: none)."""
        fraction = self.settings.sample_fraction
        if fraction <= 0:
            return []
        if fraction >= 1:
            return list(range(count))
        return [number for number in range(count) if self._rng.random() < fraction]

    def add(self, endpoint: str, served_at: datetime, refs: Sequence[str], results: Sequence[dict],
            model: tuple[str, str] | None = None, scores: Sequence[float] | None = None) -> None:
        """Buffer one row per entity ``results`` entry (``entity``, ``values`` and ``statuses``
        in ``refs`` order, as the features answer has them); ``model`` (name, version) and
        ``scores`` for a prediction."""
        rows = [{
            SERVED_AT: served_at, "endpoint": endpoint, "entity": list(result["entity"].items()),
            "feature_values": [(ref, None if value is None else float(value))
                               for ref, value in zip(refs, result["values"], strict=True)],
            "feature_statuses": list(zip(refs, result["statuses"], strict=True)),
            "model_name": model[0] if model else None, "model_version": model[1] if model else None,
            "score": float(scores[number]) if scores is not None else None,
        } for number, result in enumerate(results)]
        with self._lock:
            room = max(0, self.settings.buffer_rows - len(self._rows))
            self._rows.extend(rows[:room])
        metrics.SERVED_LOG_ROWS.labels("sampled").inc(min(room, len(rows)))
        if len(rows) > room:
            metrics.SERVED_LOG_ROWS.labels("dropped").inc(len(rows) - room)

    # ---- the appending thread -----------------------------------------------------------
    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and append what is still buffered."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.flush_interval_s):
            self.flush()

    def flush(self) -> int:
        """Append the buffered rows in one commit; return how many were written."""
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return 0
        try:
            self.table.append_arrow(pa.Table.from_pylist(rows, schema=ARROW_SCHEMA), SERVED_FEATURES_SCHEMA)
        except Exception:  # a lake outage must not reach the answers: count, log, go on
            metrics.SERVED_LOG_ROWS.labels("failed").inc(len(rows))
            log.exception("served features: %d sampled rows not written to %s", len(rows), self.table)
            return 0
        metrics.SERVED_LOG_ROWS.labels("written").inc(len(rows))
        return len(rows)
