"""What the stream's records and writes look like: the columns the job adds, the lake
tables' schemas (bronze, dead letters: each row stamped with its micro-batch) and the
Arrow schemas the in-memory history keeps (one schema, so history and new events concatenate).
"""
from __future__ import annotations

from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from plumbing.event_tables import ARRIVED_AT, BATCH_ID, QUERY_ID
from transformations.merchants import PRECOUNTED_SCHEMA
from transformations.schemas import EVENT_TYPES, SCHEMAS
from transformations.user_transactions import LIFETIME_BASELINE_SCHEMA
from transformations.windows import EVENT_TIME

# Columns the job adds to the records.
EVENT_TYPE = "event_type"
STATUS = "status"
ACCEPTED, MALFORMED, TOO_LATE = "accepted", "malformed", "too_late"


def _nullable(schema: T.StructType) -> T.StructType:
    return T.StructType([T.StructField(f.name, f.dataType, nullable=True) for f in schema.fields])


# What the job appends to the lake: the events (bronze) and the rejected records (dead letters),
# each row stamped with its micro-batch.
_STAMP_FIELDS = [T.StructField(BATCH_ID, T.LongType()), T.StructField(QUERY_ID, T.StringType())]
BRONZE_SCHEMAS = {event_type: T.StructType([*_nullable(SCHEMAS[event_type]).fields,
                                            T.StructField(ARRIVED_AT, T.TimestampType()), *_STAMP_FIELDS])
                  for event_type in EVENT_TYPES}
DEAD_LETTER_SCHEMA = T.StructType([
    T.StructField(EVENT_TYPE, T.StringType()), T.StructField("raw", T.StringType()),
    T.StructField("reject_reason", T.StringType()), T.StructField(EVENT_TIME, T.TimestampType()),
    T.StructField("source", T.StringType()), T.StructField("filed_at", T.TimestampType()),
    T.StructField(ARRIVED_AT, T.TimestampType()), *_STAMP_FIELDS,
])
# The events as the features read them, in Arrow (one schema, so history and new events concatenate).
EVENT_ARROW_SCHEMAS = {event_type: to_arrow_schema(_nullable(SCHEMAS[event_type]), timezone="UTC")
                       for event_type in EVENT_TYPES}
BASELINE_ARROW_SCHEMA = to_arrow_schema(_nullable(LIFETIME_BASELINE_SCHEMA), timezone="UTC")
PRECOUNTED_ARROW_SCHEMA = to_arrow_schema(PRECOUNTED_SCHEMA, timezone="UTC")
