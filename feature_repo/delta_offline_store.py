"""Feast's DuckDB offline store, reading the lake's Delta tables through ``deltalake``.

Why not a stock offline store: Feast's DuckDB store reads Delta with DuckDB's ``delta``
extension, which DuckDB downloads at run time (no network here), and the ``file`` (dask)
store reads a Delta folder as plain Parquet, files removed from the table included.
``deltalake`` reads the table's current snapshot (its log), on a local path or S3.

Used through ``feature_store.yaml``::

    offline_store:
      type: feature_repo.delta_offline_store.DeltaOfflineStore

On S3, the ``storage_options`` of that section (written from the profile by
``plumbing.feast_repo``: region, endpoint, keys) reach deltalake: in the reads, and in
what ``feast apply`` does with a source (validate it, infer its columns). Feast's own
``FileSource.validate`` opens the path with ``pyarrow.fs.FileSystem.from_uri``, which
knows no endpoint and asks public AWS for the bucket (``Could not resolve host:
<bucket>.s3.<region>.amazonaws.com``); its column inference passes deltalake the endpoint
alone, without the region, the keys or plain http.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TypeGuard

import ibis
import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable
from feast.data_format import DeltaFormat
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores import duckdb as feast_duckdb
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import (
    get_historical_features_ibis,
    pull_all_from_table_or_query_ibis,
    pull_latest_from_table_or_query_ibis,
)
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import RepoConfig
from pydantic import StrictStr

logger = logging.getLogger(__name__)


def is_delta_source(data_source: DataSource) -> TypeGuard[FileSource]:
    return isinstance(data_source, FileSource) and isinstance(data_source.file_format, DeltaFormat)


def delta_table(data_source: FileSource, repo_path: Path | str | None, storage_options: dict[str, str]) -> DeltaTable:
    """The source's Delta table, opened with the store's storage options (the profile's
    endpoint, region and keys on S3)."""
    path = FileSource.get_uri_for_file_path(repo_path, data_source.path)
    return DeltaTable(path, storage_options=storage_options or None)


def read_data_source(data_source: DataSource, repo_path: str, storage_options: dict[str, str]) -> ibis.Table:
    """A Delta source as a lazy ibis table over its current snapshot. Every source of the
    repository is a Delta table (feature_repo/data_sources.py); Feast's readers of other
    formats are private functions of its DuckDB module, so another source is refused."""
    if not is_delta_source(data_source):
        raise ValueError(f"source {data_source.name!r}: this offline store reads Delta tables only "
                         f"(a FileSource with file_format=DeltaFormat())")
    snapshot = delta_table(data_source, repo_path, storage_options).to_pyarrow_dataset()
    # DuckDB scans the Arrow dataset in place, with column and filter push-down.
    return ibis.memtable(snapshot)


def refuse_write(table: ibis.Table, data_source: DataSource, repo_path: str, *args) -> None:
    """The writer Feast's ibis functions are handed (saved datasets, offline pushes): the
    lake's tables are written by the project's own writer only, validated and tracked."""
    raise NotImplementedError(f"writing to {data_source.name!r} through Feast is not supported: the lake's Delta "
                              "tables are written by `tessera batch-features`")


def _io(config: RepoConfig) -> dict:
    """What every Feast ibis function is handed to read sources and stage results: this
    store's reader (:func:`read_data_source`, as Feast calls a reader, (source, repo path),
    with the store's storage options bound), its writer, and the staging settings."""
    return {"data_source_reader": partial(read_data_source, storage_options=config.offline_store.storage_options),
            "data_source_writer": refuse_write,
            "staging_location": config.offline_store.staging_location,
            "staging_location_endpoint_override": config.offline_store.staging_location_endpoint_override}


class DeltaOfflineStoreConfig(feast_duckdb.DuckDBOfflineStoreConfig):
    type: StrictStr = "feature_repo.delta_offline_store.DeltaOfflineStore"
    storage_options: dict[str, str] = {}  # deltalake's, e.g. AWS_ENDPOINT_URL; empty for local paths


class DeltaOfflineStore(feast_duckdb.DuckDBOfflineStore):
    """The three reads of Feast's DuckDB store (training sets, materialization), each
    calling Feast's own ibis implementation with :func:`read_data_source`; and the
    validation and column inference of Delta sources through the same storage options."""

    def validate_data_source(self, config: RepoConfig, data_source: DataSource) -> None:
        """What Feast's ``FileSource.validate`` checks (the table is there, it has the
        timestamp column; a warning if not, as Feast's), read with the store's options."""
        if not is_delta_source(data_source):
            return super().validate_data_source(config, data_source)
        try:
            table = delta_table(data_source, config.repo_path, config.offline_store.storage_options)
            names = [field.name for field in table.schema().fields]
        except Exception as exc:  # e.g. no table yet: `feast apply` may precede the first batch
            logger.warning("Could not validate Delta source %r at %r: %s", data_source.name, data_source.path, exc)
            return
        if data_source.timestamp_field and data_source.timestamp_field not in names:
            logger.warning("Timestamp field %r not found in Delta source %r at %r. Available columns: %s",
                           data_source.timestamp_field, data_source.name, data_source.path, names)

    @staticmethod
    def offline_write_batch(config: RepoConfig, feature_view: FeatureView, table, progress) -> None:
        """Refused: the lake's tables are written by the project's writer (validated,
        tracked); Feast's Delta writer would open S3 with the endpoint alone (no region,
        keys or http) and is broken on deltalake 1.x. Push to the online store only."""
        raise NotImplementedError(
            f"pushing to the offline store ({feature_view.name}) is not supported: the lake's Delta tables "
            "are written by `tessera batch-features`; push with to=PushMode.ONLINE")

    def get_table_column_names_and_types_from_data_source(
        self, config: RepoConfig, data_source: DataSource
    ) -> Iterable[tuple[str, str]]:
        if not is_delta_source(data_source):
            return super().get_table_column_names_and_types_from_data_source(config, data_source)
        table = delta_table(data_source, config.repo_path, config.offline_store.storage_options)
        schema = pa.schema(table.schema().to_arrow())
        return zip(schema.names, map(str, schema.types), strict=True)

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        return get_historical_features_ibis(
            config=config,
            feature_views=feature_views,
            feature_refs=feature_refs,
            entity_df=entity_df,
            registry=registry,
            project=project,
            full_feature_names=full_feature_names,
            **_io(config),
            filter_by_created_timestamp=filter_by_created_timestamp,
        )

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        return pull_latest_from_table_or_query_ibis(
            config=config,
            data_source=data_source,
            join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            start_date=start_date,
            end_date=end_date,
            **_io(config),
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        return pull_all_from_table_or_query_ibis(
            config=config,
            data_source=data_source,
            join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            start_date=start_date,
            end_date=end_date,
            **_io(config),
        )
