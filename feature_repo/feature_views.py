"""One feature view per feature table of ``transformations.catalog``: same name, same
features and types, same ttl. Nothing is declared twice: add a feature to the catalog
and it appears here."""
from feast import FeatureView, Field
from feast.types import Float64, Int64, String

from feature_repo.data_sources import push_source
from feature_repo.entities import ENTITY_BY_JOIN_KEY
from plumbing.config import Config
from transformations.catalog import FEATURE_TABLES
from transformations.tables import FeatureTable

_FEAST_TYPES = {"bigint": Int64, "double": Float64}


def feature_view(cfg: Config, table: FeatureTable) -> FeatureView:
    # The entity column is listed in the schema so that `feast apply` needs no schema
    # inference, which would read the Delta table (it may not exist yet).
    return FeatureView(
        name=table.name,
        entities=[ENTITY_BY_JOIN_KEY[table.entity_column]],
        ttl=table.ttl,
        schema=[Field(name=table.entity_column, dtype=String),
                *[Field(name=feature.name, dtype=_FEAST_TYPES[feature.dtype], description=feature.description)
                  for feature in table.features]],
        source=push_source(cfg, table),
        online=True,
        description=(f"Built from {' and '.join(table.sources)} events by "
                     f"{table.build.__module__}.{table.build.__name__}."),
    )


def feature_views(cfg: Config) -> dict[str, FeatureView]:
    return {name: feature_view(cfg, table) for name, table in FEATURE_TABLES.items()}
