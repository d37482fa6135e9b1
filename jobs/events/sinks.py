"""Where generated events go: history files (local or S3), the landing folder, Kafka."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.events.simulation import Slice
from plumbing.config import Config, load_config
from plumbing.kafka import EventProducer, KafkaTopics, ensure_topics
from plumbing.storage import filesystem_and_root
from transformations.schemas import (
    EVENT_ENTITY_COLUMNS,
    EVENT_TYPES,
)


def open_filesystem(uri: str, cfg=None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path in it for a local path or s3://bucket/prefix."""
    if not uri.startswith(("s3://", "s3a://")):
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    cfg = cfg if cfg is not None else load_config()
    return filesystem_and_root(uri, cfg.storage_options(uri))


class HistoryWriter:
    """Parquet or JSON-lines files under <out>/<event_type>/[date=YYYY-MM-DD/]part-NNNNN.<ext>."""

    def __init__(self, out: str, fmt: str, partition_by_date: bool, overwrite: bool, cfg=None):
        self.out, self.fmt, self.partition_by_date = out, fmt, partition_by_date
        self.fs, self.root = open_filesystem(out, cfg)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        self.files = 0
        for event_type in EVENT_TYPES:
            folder = f"{self.root}/{event_type}"
            existing = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True))
            if any(info.type == pafs.FileType.File for info in existing):
                if not overwrite:
                    raise FileExistsError(f"{out}/{event_type} already holds files; pass --overwrite to replace them")
                self.fs.delete_dir_contents(folder, missing_dir_ok=True)

    def write(self, event_type: str, window: Slice, table: pa.Table, json_bytes: bytes | None) -> None:
        if table.num_rows == 0:
            return
        folder = f"{self.root}/{event_type}"
        if self.partition_by_date:
            day = dt.datetime.fromtimestamp(window.start_ms / 1000, dt.timezone.utc).date()
            folder += f"/date={day.isoformat()}"
        if self.is_local:  # S3 has no folders to create
            self.fs.create_dir(folder, recursive=True)
        path = f"{folder}/part-{window.index:05d}.{'parquet' if self.fmt == 'parquet' else 'jsonl'}"
        if self.fmt == "parquet":
            pq.write_table(table, path, filesystem=self.fs)
        else:
            with self.fs.open_output_stream(path) as stream:
                stream.write(json_bytes)
        self.files += 1


class LandingWriter:
    """JSON-lines files in <landing_dir>/<event_type>/, each appearing whole: written under
    a hidden name (.name.tmp, ignored by Spark's file source) and renamed in one step."""

    def __init__(self, landing_dir: str, run_tag: str):
        if landing_dir.startswith(("s3://", "s3a://")):
            raise ValueError("live mode writes to a local landing folder, not to S3")
        self.root = Path(landing_dir).expanduser().resolve()
        self.run_tag = run_tag
        self.files = 0
        for event_type in EVENT_TYPES:
            (self.root / event_type).mkdir(parents=True, exist_ok=True)

    def write(self, event_type: str, window: Slice, json_bytes: bytes, table: pa.Table) -> None:
        if not json_bytes:
            return
        start = dt.datetime.fromtimestamp(window.start_ms / 1000, dt.timezone.utc)
        # Names sort by time and never repeat across runs (the run tag has seed and clock).
        name = f"{start:%Y%m%dT%H%M%S}.{start.microsecond // 1000:03d}Z-{self.run_tag}-{window.index:06d}.jsonl"
        folder = self.root / event_type
        temporary = folder / f".{name}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(json_bytes)
        os.replace(temporary, folder / name)  # atomic on one filesystem
        self.files += 1

    def window_done(self) -> None:
        """Each file is in place once written."""

    def __str__(self) -> str:
        return str(self.root)


class KafkaWriter:
    """One record per JSON line on the event type's topic, keyed by the event's entity
    (``EVENT_ENTITY_COLUMNS``; no key when a malformed record lacks it). A window's records
    are acknowledged by the broker before the next window starts (``window_done``)."""

    unit = "records"

    def __init__(self, topics: KafkaTopics):
        ensure_topics(topics)  # a new prefix, or a cluster without them yet
        self.topics = topics
        self.producer = EventProducer(topics)

    @property
    def files(self) -> int:
        return self.producer.sent

    def write(self, event_type: str, window: Slice, json_bytes: bytes, table: pa.Table) -> None:
        if not json_bytes:
            return
        lines = json_bytes.split(b"\n")[:-1]  # one record per line; the text has no other newlines
        keys = [None if key is None else key.encode() for key in
                table.column(EVENT_ENTITY_COLUMNS[event_type]).to_pylist()]
        assert len(lines) == len(keys), (event_type, len(lines), len(keys))
        self.producer.send(event_type, lines, keys)

    def window_done(self) -> None:
        self.producer.flush()

    def __str__(self) -> str:
        return str(self.topics)


def live_destination(cfg: Config) -> str | KafkaTopics:
    """Where live events go for a profile: its Kafka topics, or its landing folder."""
    return KafkaTopics.of(cfg) if cfg.events.source == "kafka" else cfg.events.landing_dir
