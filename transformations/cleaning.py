"""Turn raw events into typed, validated rows, and say why a bad row is bad.

Pure PySpark: no I/O, no session, no actions, windows or sorts, so every function here
works on a static DataFrame (the batch job) and on a streaming one (the streaming job)
alike.

Every function returns the declared columns of the event type (``schemas.SCHEMAS``)
plus two more:

- ``raw``: the record as it arrived (the JSON line) - what a dead-letter table keeps;
- ``reject_reason``: null for a valid row, otherwise exactly one of

  ==========================  ===========================================================
  ``oversize``                a JSON line longer than ``MAX_RECORD_BYTES`` (64 KiB; ours
                              are ~250 bytes): not parsed at all
  ``broken_json``             not a JSON object (truncated, garbage, empty, an array, ...)
  ``missing_field:<col>``     a required column is absent or JSON ``null``
  ``wrong_type:<col>``        a value that cannot be read as the column's type
                              (``"12,50"`` for a double, ``"29/03/2026"`` for a timestamp)
  ``negative_amount``         ``amount < 0``
  ``future_timestamp``        a timestamp later than ``now + max_future`` (default 1 day)
  ``unknown_value:<col>``     a value outside the column's declared values
                              (``schemas.ALLOWED_VALUES``: currency, channel, activity type)
  ==========================  ===========================================================

  When a row has several problems the first in this table wins, and within a kind the
  first column in schema order.

How JSON is read, and why: each line is parsed with ``from_json`` against the declared
field names but with every field as a *string* (PERMISSIVE mode, with a
``_corrupt_record`` column to catch unparseable lines); each string is then
``try_cast`` to its declared type. A value that is present but fails the cast is a
``wrong_type``; a value that is absent is a ``missing_field``. Parsing straight into
typed fields could not tell those two apart (both come back null). Consequences of the
choice, all deliberate:

- numbers written as JSON strings (``"amount": "12.5"``) are accepted;
- a string column accepts any JSON scalar (``"user_id": 17`` reads as ``"17"``);
- a timestamp without an offset is read in the session time zone (UTC in this
  project); with an offset (``2026-03-29T01:30:00+01:00``) it lands on the right
  instant;
- text after the closing brace of the object makes the line ``broken_json``.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transformations.schemas import ALLOWED_VALUES, SCHEMAS

RAW = "raw"
REJECT_REASON = "reject_reason"

# The reject kinds; a missing_field / wrong_type reason carries ":<column>".
BROKEN_JSON = "broken_json"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NEGATIVE_AMOUNT = "negative_amount"
FUTURE_TIMESTAMP = "future_timestamp"
OVERSIZE = "oversize"
UNKNOWN_VALUE = "unknown_value"
# In the generator's code order (it writes every kind but oversize): codes stay, new kinds go last.
REJECT_KINDS = (BROKEN_JSON, MISSING_FIELD, WRONG_TYPE, NEGATIVE_AMOUNT, FUTURE_TIMESTAMP, OVERSIZE, UNKNOWN_VALUE)

# A JSON line longer than this is rejected unparsed: a producer bug or an attack, never an
# event (ours are ~250 bytes), and parsing megabytes per record would stall a micro-batch.
MAX_RECORD_BYTES = 64 * 1024

DEFAULT_MAX_FUTURE = dt.timedelta(days=1)

_JSON = "_json"                        # the struct of strings parsed from a line
_CORRUPT_RECORD = "_corrupt_record"   # set by from_json when the line cannot be parsed


def reject_kind(reason: Column) -> Column:
    """The kind of a reject reason without its column: ``missing_field:amount`` -> ``missing_field``."""
    return F.split(reason, ":").getItem(0)


# ------------------------------------------------------------------------ JSON input
def parse_json_events(raw: DataFrame, event_type: str, now: Column | dt.datetime | None = None,
                      max_future: dt.timedelta = DEFAULT_MAX_FUTURE) -> DataFrame:
    """Parse JSON lines in column ``value`` (Spark's text source, or Kafka's value) into the
    declared columns of ``event_type`` plus ``raw`` and ``reject_reason``.

    ``now`` is the clock for ``future_timestamp`` (default ``current_timestamp()``: the
    batch's start, or the micro-batch's in streaming).
    """
    schema = SCHEMAS[event_type]
    is_oversize = F.coalesce(F.octet_length(F.col(RAW)) > MAX_RECORD_BYTES, F.lit(False))
    json_struct = F.from_json(
        F.col(RAW), _all_strings(schema),
        {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT_RECORD},
    )
    parsed = raw.select(
        F.col("value").cast(T.StringType()).alias(RAW),  # Kafka's value is binary
    ).select(
        F.col(RAW),
        F.when(~is_oversize, json_struct).alias(_JSON),
        is_oversize.alias(OVERSIZE),
    )

    def text(name: str) -> Column:
        return F.col(f"{_JSON}.{name}")

    typed = {f.name: _cast(text(f.name), f.dataType) for f in schema.fields}

    # One object per line: from_json stops after the first object and ignores what
    # follows, so also insist the trimmed line starts with "{" and ends with "}".
    line = F.trim(F.col(RAW))
    is_broken = (
        F.col(_JSON).isNull()
        | text(_CORRUPT_RECORD).isNotNull()
        | ~F.coalesce(line.startswith("{") & line.endswith("}"), F.lit(False))
    )
    reasons = [(F.col(OVERSIZE), F.lit(OVERSIZE)), (is_broken, F.lit(BROKEN_JSON))]
    reasons += [(text(f.name).isNull(), F.lit(f"{MISSING_FIELD}:{f.name}"))
                for f in schema.fields if not f.nullable]
    reasons += [(text(f.name).isNotNull() & typed[f.name].isNull(), F.lit(f"{WRONG_TYPE}:{f.name}"))
                for f in schema.fields if f.dataType != T.StringType()]
    reasons += _value_checks(typed, event_type, now, max_future)

    return parsed.select(
        *[typed[f.name].alias(f.name) for f in schema.fields],
        F.col(RAW),
        _first_reason(reasons).alias(REJECT_REASON),
    )


# ----------------------------------------------------------------------- typed input
def validate_typed_events(df: DataFrame, event_type: str, now: Column | dt.datetime | None = None,
                          max_future: dt.timedelta = DEFAULT_MAX_FUTURE) -> DataFrame:
    """Check typed rows (e.g. read from Parquet) and add ``raw`` and ``reject_reason``.

    Columns beyond the declared ones are kept, after them, unchecked.

    Typed files cannot hold broken JSON, so the reasons here are ``missing_field`` (null
    in a required column), ``wrong_type`` (a column stored with another type whose values
    do not cast), ``negative_amount`` and ``future_timestamp``. ``raw`` is the row as JSON
    for rejected rows only (null for valid rows, to spare the serialisation).
    """
    schema = SCHEMAS[event_type]
    absent = [f.name for f in schema.fields if f.name not in df.columns]
    if absent:
        raise ValueError(f"{event_type}: the input has no column(s) {', '.join(absent)}")

    stored_types = dict(df.dtypes)
    typed = {}
    reasons = []
    for f in schema.fields:
        if stored_types[f.name] == f.dataType.simpleString():
            typed[f.name] = F.col(f.name)
        else:  # stored with another type: cast, and flag the values that do not fit
            typed[f.name] = _cast(F.col(f.name), f.dataType)
    reasons += [(F.col(f.name).isNull(), F.lit(f"{MISSING_FIELD}:{f.name}"))
                for f in schema.fields if not f.nullable]
    reasons += [(F.col(f.name).isNotNull() & typed[f.name].isNull(), F.lit(f"{WRONG_TYPE}:{f.name}"))
                for f in schema.fields if stored_types[f.name] != f.dataType.simpleString()]
    reasons += _value_checks(typed, event_type, now, max_future)

    reason = _first_reason(reasons)
    original_row = F.to_json(F.struct(*[F.col(f.name) for f in schema.fields]))
    passed_through = [F.col(name) for name in df.columns if name not in schema.fieldNames()]
    return df.select(
        *[typed[f.name].alias(f.name) for f in schema.fields],
        *passed_through,  # e.g. where the row came from; the checks ignore them
        F.when(reason.isNotNull(), original_row).alias(RAW),
        reason.alias(REJECT_REASON),
    )


# --------------------------------------------------------------------- after checks
def split_valid(df: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(valid rows with the declared columns only, rejected rows with raw and reason).

    Both are lazy views of ``df``: evaluating both evaluates ``df`` twice, so in a batch
    job persist ``df`` first, and in streaming do the split inside ``foreachBatch`` (on a
    persisted micro-batch) or run two queries.
    """
    valid = df.where(F.col(REJECT_REASON).isNull()).drop(RAW, REJECT_REASON)
    rejected = df.where(F.col(REJECT_REASON).isNotNull())
    return valid, rejected


def drop_duplicate_events(df: DataFrame, entity_col: str, id_col: str) -> DataFrame:
    """Keep one row per event (producers retry, so the same event can arrive twice): per
    ``(entity_col, id_col)``, the entity the event belongs to and its id.

    Batch: hash-partition by the entity, then ``dropDuplicates``. The windows partition
    by the same entity, so Spark reuses this one shuffle for the dedupe and the windows
    (deduplicating by the id alone cost a shuffle of its own: ~1/6 of the batch job).
    A ``repartition`` on input already partitioned this way is planned away. Which of
    the duplicates survives is not defined (they are the same event).

    Streaming: ``dropDuplicatesWithinWatermark``, which needs ``withWatermark`` on the
    event time upstream and keeps an id in state only until the watermark passes it, so
    state stays bounded; a duplicate arriving later than the allowed lateness is not
    caught. (Plain ``dropDuplicates`` on a stream would keep every id forever.)
    """
    keys = [entity_col, id_col]
    if df.isStreaming:
        return df.dropDuplicatesWithinWatermark(keys)
    return df.repartition(F.col(entity_col)).dropDuplicates(keys)


# ------------------------------------------------------------------------- internals
def _all_strings(schema: T.StructType) -> T.StructType:
    """The declared field names, all as strings, plus the corrupt-record column."""
    return T.StructType(
        [T.StructField(f.name, T.StringType(), True) for f in schema.fields]
        + [T.StructField(_CORRUPT_RECORD, T.StringType(), True)]
    )


def _cast(column: Column, data_type: T.DataType) -> Column:
    """try_cast: null instead of an error (Spark 4 runs in ANSI mode) when a value does not fit."""
    if data_type == T.StringType():
        return column.cast(T.StringType())
    return column.try_cast(data_type)


def _now_column(now: Column | dt.datetime | None) -> Column:
    if now is None:
        return F.current_timestamp()
    if isinstance(now, Column):
        return now
    return F.lit(now)


def _value_checks(typed: dict[str, Column], event_type: str, now: Column | dt.datetime | None,
                  max_future: dt.timedelta) -> list[tuple[Column, Column]]:
    """The checks on values that parsed: negative amounts, timestamps too far ahead and
    values outside a column's declared ones."""
    schema = SCHEMAS[event_type]
    checks = []
    if "amount" in typed:
        checks.append((typed["amount"] < 0, F.lit(NEGATIVE_AMOUNT)))
    latest_allowed = _now_column(now) + F.lit(max_future)
    checks += [(typed[f.name] > latest_allowed, F.lit(FUTURE_TIMESTAMP))
               for f in schema.fields if f.dataType == T.TimestampType()]
    checks += [(~typed[name].isin(*allowed), F.lit(f"{UNKNOWN_VALUE}:{name}"))
               for name, allowed in ALLOWED_VALUES[event_type].items()]
    return checks


def _first_reason(reasons: list[tuple[Column, Column]]) -> Column:
    """CASE WHEN c1 THEN r1 WHEN c2 THEN r2 ... END: the first failing check, else null.

    A condition that is null (comparing a null value) does not fire, so a row is only
    rejected for a problem it really has.
    """
    (first_condition, first_reason), *others = reasons
    expression = F.when(first_condition, first_reason)
    for condition, reason in others:
        expression = expression.when(condition, reason)
    return expression.otherwise(F.lit(None).cast(T.StringType()))
