"""What each micro-batch did: its counts, the progress log line, the MLflow run's metrics.

Freshness
    Each Redis value carries its event time (Feast's ``_ts`` field). Per micro-batch the job
    reports the end-to-end lag of its accepted events, from event time to the end of the
    micro-batch's Redis writes (an upper bound for each value): p50 and p99.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from jobs.streaming.schemas import ACCEPTED, EVENT_TYPE, MALFORMED, STATUS, TOO_LATE
from jobs.streaming.settings import StreamSettings
from jobs.streaming.source import source_description
from plumbing import tracking
from plumbing.config import Config
from plumbing.online_store import WriteResult
from transformations.schemas import EVENT_TYPES
from transformations.windows import EVENT_TIME

STREAMING_EXPERIMENT = "tessera/stream-features"


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class BatchCounts:
    """What a micro-batch held, counted on the driver (exact percentiles)."""

    by_type: dict[str, dict[str, int]]      # event type -> received / accepted / malformed / too_late
    first_event_time: dict[str, datetime]   # event type -> its earliest accepted event
    event_micros_p01: int | None            # percentiles of the accepted events' times (all types)
    event_micros_p50: int | None

    @classmethod
    def of(cls, records: pa.Table, accepted: dict[str, pa.Table]) -> BatchCounts:
        by_type = {event_type: dict.fromkeys(("received", ACCEPTED, MALFORMED, TOO_LATE), 0)
                   for event_type in EVENT_TYPES}
        counted = records.group_by([EVENT_TYPE, STATUS]).aggregate([([], "count_all")])
        for event_type, status, count in zip(counted[EVENT_TYPE].to_pylist(), counted[STATUS].to_pylist(),
                                             counted["count_all"].to_pylist(), strict=True):
            by_type[event_type][status] += count
            by_type[event_type]["received"] += count
        first_event_time = {event_type: pc.min(events[EVENT_TIME]).as_py().astimezone(timezone.utc)
                            for event_type, events in accepted.items()}
        micros = np.concatenate([_micros(events[EVENT_TIME]) for events in accepted.values()] or [np.zeros(0)])
        if not len(micros):
            return cls(by_type, first_event_time, None, None)
        p01, p50 = np.percentile(micros, [1, 50], method="lower")
        return cls(by_type, first_event_time, int(p01), int(p50))

    def total(self, name: str) -> int:
        return sum(counts[name] for counts in self.by_type.values())


@dataclass(frozen=True)
class BatchProgress:
    """What one micro-batch did: the progress log line and the MLflow metrics."""

    batch_id: int
    counts: BatchCounts
    online: WriteResult
    watermark: datetime
    lag_p50_s: float | None
    lag_p99_s: float | None
    duration_s: float
    steps_s: dict[str, float]  # seconds per step: collect, history, features, redis, lake
    feature_input_events: int  # rows the tables' Spark jobs computed over: events (new and history), precounted rows

    def metrics(self) -> dict[str, float]:
        metrics = {
            "received": self.counts.total("received"),
            "accepted": self.counts.total(ACCEPTED),
            "malformed": self.counts.total(MALFORMED),
            "too_late": self.counts.total(TOO_LATE),
            "online_written": self.online.written,
            "online_skipped_older": self.online.skipped_older,
            "online_skipped_expired": self.online.skipped_expired,
            "feature_input_events": self.feature_input_events,
            "duration_s": self.duration_s,
            "events_per_s": self.counts.total("received") / self.duration_s if self.duration_s else 0.0,
            **{f"{step}_s": seconds for step, seconds in self.steps_s.items()},
        }
        if self.lag_p50_s is not None and self.lag_p99_s is not None:  # both or neither
            metrics.update(lag_p50_s=self.lag_p50_s, lag_p99_s=self.lag_p99_s)
        return metrics

    def line(self) -> str:
        """key=value pairs: readable, and parsed by bench/bench_streaming.py."""
        values: dict[str, object] = {"batch": self.batch_id,
                  **{event_type: self.counts.by_type[event_type]["received"] for event_type in EVENT_TYPES}}
        values.update({name: round(value, 3) if isinstance(value, float) else value
                       for name, value in self.metrics().items()})
        values["watermark"] = self.watermark.strftime("%Y-%m-%dT%H:%M:%SZ")
        return "stream-features " + " ".join(f"{name}={value}" for name, value in values.items())


class StreamRun:
    """The job's MLflow run: per-micro-batch metrics, logged without blocking the stream."""

    def __init__(self, cfg: Config, settings: StreamSettings):
        tracking.configure_tracking(cfg)
        experiment_id = tracking.use_experiment(STREAMING_EXPERIMENT, (
            "One run per start of the streaming job: per micro-batch its events (accepted, malformed, too "
            "late), freshness p50/p99 and the time of each step; tags `source` and `input` say what it read."))
        self.client = MlflowClient()
        self.run_id = self.client.create_run(
            experiment_id, run_name="stream_features",
            tags={"checkpoint": str(settings.checkpoint_location), "source": cfg.events.source,
                  "input": source_description(cfg)}).info.run_id
        trigger = ("availableNow" if settings.available_now
                   else f"processingTime {settings.trigger_interval.total_seconds()}s")
        self.client.log_batch(self.run_id, params=[
            Param("allowed_lateness_s", str(settings.allowed_lateness.total_seconds())),
            Param("trigger", trigger),
            Param("max_files_per_trigger", str(settings.max_files_per_trigger)),
            Param("max_records_per_trigger", str(settings.max_records_per_trigger)),
            Param("max_future_s", str(settings.max_future.total_seconds())),
        ])

    def log(self, progress: BatchProgress) -> None:
        now_ms = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now_ms, progress.batch_id) for name, value in progress.metrics().items()]
        # Asynchronous: a slow or absent tracking server must not hold up the stream.
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)

    def end(self, status: str) -> None:
        mlflow.flush_async_logging()
        self.client.set_terminated(self.run_id, status)


def seconds_since(instant_s: float, event_micros: int | None) -> float | None:
    return None if event_micros is None else instant_s - event_micros / 1_000_000
