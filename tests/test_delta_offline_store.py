"""The Delta offline store's own reader and writer (Feast's DuckDB module has them only as
private functions): Delta sources read through deltalake, anything else refused by name."""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from feast import FileSource
from feast.data_format import DeltaFormat, ParquetFormat

from feature_repo.delta_offline_store import read_data_source, refuse_write


def test_a_delta_source_reads_the_tables_current_snapshot(tmp_path):
    rows = pa.table({"user_id": ["u1", "u2"], "event_timestamp": pa.array(
        [datetime(2026, 12, 1, tzinfo=timezone.utc)] * 2, pa.timestamp("us", tz="UTC")), "x": [1, 2]})
    write_deltalake(str(tmp_path / "t"), rows)
    write_deltalake(str(tmp_path / "t"), rows.slice(0, 1), mode="overwrite")  # version 1: one row
    source = FileSource(name="t", path=str(tmp_path / "t"), file_format=DeltaFormat(),
                        timestamp_field="event_timestamp")
    assert read_data_source(source, str(tmp_path), {}).to_pyarrow().column("user_id").to_pylist() == ["u1"]


def test_another_source_and_any_write_are_refused_by_name(tmp_path):
    parquet = FileSource(name="plain", path=str(tmp_path / "p.parquet"), file_format=ParquetFormat(),
                         timestamp_field="event_timestamp")
    with pytest.raises(ValueError, match="'plain'.*Delta tables only"):
        read_data_source(parquet, str(tmp_path), {})
    with pytest.raises(NotImplementedError, match="'plain'.*tessera batch-features"):
        refuse_write(None, parquet, str(tmp_path), "overwrite", False)
