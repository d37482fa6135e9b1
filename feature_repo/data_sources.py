"""Where Feast finds each feature table: the Delta table in the lake (offline reads,
training sets, ``feast materialize``), wrapped in a push source (the streaming job's
side door: every table is also computed by the streaming job).

The lake is local or S3, from the active profile. On S3 the profile's endpoint (moto on
loopback, or none for AWS) goes into ``s3_endpoint_override`` for Feast's own tools; the
offline store reads, validates (``feast apply``) and infers the columns of these sources
through deltalake with all of the profile's S3 settings: endpoint, region, keys, http
(``feature_repo/delta_offline_store.py``). Feast's own validation would ask public AWS.
"""
from feast import FileSource, PushSource
from feast.data_format import DeltaFormat

from plumbing.config import Config
from plumbing.lake import table_uri
from transformations.tables import FeatureTable


def lake_uri(cfg: Config, table: FeatureTable) -> str:
    """The table's Delta table (plumbing.lake's place), s3a:// spelled s3:// for Feast."""
    uri = table_uri(cfg, table.name)
    return "s3://" + uri[len("s3a://"):] if uri.startswith("s3a://") else uri


def lake_source(cfg: Config, table: FeatureTable) -> FileSource:
    uri = lake_uri(cfg, table)
    return FileSource(
        name=f"{table.name}_lake",
        path=uri,
        file_format=DeltaFormat(),
        timestamp_field=table.timestamp_column,
        s3_endpoint_override=cfg.s3.endpoint_url if uri.startswith("s3://") else None,
        description=f"Delta table of {table.name}, partitioned by event_date.",
    )


def push_source(cfg: Config, table: FeatureTable) -> PushSource:
    return PushSource(name=f"{table.name}_push", batch_source=lake_source(cfg, table))
