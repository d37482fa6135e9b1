"""What a feature table is: its entity, its timestamp, its features and their valid
ranges. The batch job, the validation suites, the Feast definitions and the online
store all read these specs, so a feature is declared in exactly one place."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from pyspark.sql import DataFrame


@dataclass(frozen=True)
class Feature:
    name: str                      # carries its window: txn_amount_sum_24h
    dtype: str                     # Spark SQL type name: "bigint" | "double"
    description: str
    min_value: float | None = 0.0  # inclusive bounds checked by the validation suite
    max_value: float | None = None
    nullable: bool = False


@dataclass(frozen=True)
class FeatureTable:
    name: str                      # the Delta table and Feast feature view name
    entity_column: str             # user_id | merchant_id
    timestamp_column: str          # event_timestamp: the instant the row's values hold from
    sources: tuple[str, ...]       # the event types `build` reads, in its parameter order
    features: tuple[Feature, ...]
    ttl: timedelta                 # a value older than this is expired (null) as of a time T
    build: Callable[..., DataFrame]  # the transformation: one DataFrame per source -> this table

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        return [self.entity_column, self.timestamp_column, *self.feature_names]
