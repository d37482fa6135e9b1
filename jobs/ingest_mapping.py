"""The mapping of ``tessera ingest``: a YAML file that says where each declared column of an
event type comes from in an export, and the reading and mapping of the export with it.

The file's keys are documented in docs/your_own_events.md ("Bringing an export in"):
``columns:`` (per declared column a source column, ``{constant: ...}`` or ``{expr: ...}``),
``defaults:`` (the value of a column the export lacks, or leaves empty), ``fraud_flag:``
(a column of the export that says a transaction was fraud: the label source of ``tessera
train --labels flag``), ``time_format:``, ``time_zone:``, ``read_options:``, ``format:`` and
``event_type:``. Every problem is an :class:`IngestError` naming the file, line and key.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from transformations.schemas import ACTIVITY, CHARGEBACKS, SCHEMAS, TRANSACTIONS

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
SOURCE_ROW = "_source_row"
ROW_HASH = "_row_hash"
UNPARSED = "_unparsed_"  # + time column: the source had a value the time format did not parse
DEFAULTED = "_defaulted_"  # + column: the row had no value there and got the default
FRAUD_FLAG = "_fraud_flag"  # the mapped fraud flag (boolean), when the mapping has one
FLAG_UNPARSED = "_fraud_flag_unparsed"  # a flag present but not a boolean
FLAG_REASON = "wrong_type:fraud_flag"

# Columns real exports often lack, and what a row without one gets. "ZZ" is the ISO 3166
# code for an unknown country; the nullable columns (session_id, success) stay null.
# currency and channel have no default of their own: each of their values must be one of
# the allowed ones (schemas.ALLOWED_VALUES), so the mapping states it (defaults: or constant:).
DEFAULTS: dict[str, dict[str, str]] = {
    TRANSACTIONS: {"device_id": "unknown", "country": "ZZ"},
    ACTIVITY: {"device_id": "unknown", "country": "ZZ"},
    CHARGEBACKS: {},
}
# What a default means downstream, said in the summary when rows got one.
DEFAULT_EFFECTS: dict[tuple[str, str], str] = {
    (TRANSACTIONS, "country"): "txn_distinct_countries_24h counts it as one country; the model's country input "
                               "is that value",
    (TRANSACTIONS, "currency"): "the model's currency input is that value",
    (TRANSACTIONS, "channel"): "the model's channel input is that value",
}
NO_FEATURE = "no feature reads it"


class IngestError(Exception):
    """Unusable input or mapping: nothing was written. The message says what and where."""


@dataclass(frozen=True)
class Source:
    """Where one declared column comes from: a source column, a constant or a SQL expression."""
    kind: str  # "column" | "constant" | "expr"
    value: Any
    line: int  # in the mapping file, for messages
    time_format: str | None = None
    time_zone: str | None = None


@dataclass(frozen=True)
class Mapping:
    path: str
    event_type: str
    columns: dict[str, Source]
    read_options: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    canonical: str = ""  # the mapping as sorted JSON: part of the import id
    defaults: dict[str, str] = field(default_factory=dict)  # built-in ones and the mapping's
    fraud_flag: Source | None = None

    def describe(self, target: str) -> str:
        line = self.fraud_flag.line if target == "fraud_flag" and self.fraud_flag else self.columns[target].line
        return f"{self.path}, line {line}, key '{target}'"


_SPEC_KEYS = {"column", "constant", "expr", "time_format", "time_zone"}


def _source(path: str, line: int, target: str, spec: Any, data: dict[str, Any]) -> Source:
    options = spec if isinstance(spec, dict) else {"column": spec}
    kinds = [kind for kind in ("column", "constant", "expr") if kind in options]
    extra = sorted(set(options) - _SPEC_KEYS)
    if len(kinds) != 1 or extra or (kinds[0] != "constant" and not isinstance(options[kinds[0]], str)):
        raise IngestError(f"{path}, line {line}, key '{target}': give a source column name, or exactly one "
                          f"of column:, constant:, expr: (with time_format:, time_zone: for times)")
    return Source(kinds[0], options[kinds[0]], line, options.get("time_format", data.get("time_format")),
                  options.get("time_zone", data.get("time_zone")))


def load_mapping(path: str, event_type: str) -> Mapping:
    """Parse and check a mapping file (IngestError naming the line on any problem)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise IngestError(f"cannot read the mapping {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise IngestError(f"the mapping {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise IngestError(f"the mapping {path} needs a 'columns:' section (declared column: source)")
    known = {"event_type", "columns", "read_options", "format", "time_format", "time_zone", "defaults", "fraud_flag"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise IngestError(f"the mapping {path} has unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    if data.get("event_type", event_type) != event_type:
        raise IngestError(f"the mapping {path} is for {data['event_type']!r}, not {event_type!r}")
    assert isinstance(node, yaml.MappingNode)
    top_lines = {key.value: key.start_mark.line + 1 for key, _ in node.value}
    lines = {key.value: key.start_mark.line + 1
             for top_key, top_value in node.value if top_key.value in ("columns", "defaults")
             and isinstance(top_value, yaml.MappingNode) for key, _ in top_value.value}

    schema = SCHEMAS[event_type]
    declared = schema.fieldNames()
    columns: dict[str, Source] = {}
    for target, spec in data["columns"].items():
        line = lines.get(target, 0)
        if target not in declared:
            raise IngestError(f"{path}, line {line}: '{target}' is not a column of {event_type} "
                              f"(declared: {', '.join(declared)})")
        columns[target] = _source(path, line, target, spec, data)

    given_defaults = data.get("defaults") or {}
    if not isinstance(given_defaults, dict):
        raise IngestError(f"{path}, line {top_lines.get('defaults', 0)}: 'defaults:' is a mapping of "
                          f"column: value")
    for target, value in given_defaults.items():
        string_column = target in declared and schema[target].dataType == T.StringType()
        if not string_column or isinstance(value, dict | list):
            raise IngestError(f"{path}, line {lines.get(target, 0)}, defaults: '{target}': a default is one value "
                              f"for a text column of {event_type}")
    defaults = {**DEFAULTS[event_type], **{k: str(v) for k, v in given_defaults.items()}}

    missing = [f.name for f in schema.fields if not f.nullable and f.name not in columns and f.name not in defaults]
    if missing:
        raise IngestError(f"the mapping {path} has no entry for the required column(s) {', '.join(missing)} "
                          f"of {event_type}: map each under columns:, or, for text the export lacks, give the "
                          f"value of every row under defaults: (e.g. defaults: {{{missing[0]}: ...}})")
    fraud_flag = None
    if "fraud_flag" in data:
        if event_type != TRANSACTIONS:
            raise IngestError(f"{path}, line {top_lines['fraud_flag']}: a fraud_flag belongs to transactions")
        fraud_flag = _source(path, top_lines["fraud_flag"], "fraud_flag", data["fraud_flag"], data)
    fmt = data.get("format")
    if fmt is not None and fmt not in set(FORMATS.values()):
        raise IngestError(f"the mapping {path}: format {fmt!r} is not one of csv, parquet, jsonl")
    return Mapping(path, event_type, columns, {str(k): str(v) for k, v in (data.get("read_options") or {}).items()},
                   fmt, json.dumps(data, sort_keys=True, default=str), defaults, fraud_flag)


def default_note(event_type: str, column: str, value: str) -> str:
    """What a column's default means for the features, for the summary."""
    return f"'{value}': " + DEFAULT_EFFECTS.get((event_type, column), NO_FEATURE)


# ------------------------------------------------------------------ reading and mapping
def read_input(spark: SparkSession, uri: str, fmt: str, read_options: dict[str, str]) -> DataFrame:
    """The input as Spark reads it: CSV with a header and every column a string (ids keep
    their leading zeros; the cast is validation's), Parquet with its own types, JSON lines."""
    path = "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri
    options = {"header": "true", "inferSchema": "false", "multiLine": "false", "mode": "PERMISSIVE",
               **read_options} if fmt == "csv" else dict(read_options)
    reader = spark.read.options(**options)
    try:
        if fmt == "csv":
            return reader.csv(path)
        if fmt == "parquet":
            return reader.parquet(path)
        return reader.json(path)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc.getCondition()):
            raise IngestError(f"no file at {uri}") from None
        if "UNABLE_TO_INFER_SCHEMA" in str(exc.getCondition()):
            raise IngestError(f"{uri} has no data (an empty file?): nothing written") from None
        raise


def _quoted(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")


def map_columns(source: DataFrame, mapping: Mapping) -> DataFrame:
    """The declared columns from the mapping, plus the source row (as JSON, for dead letters),
    its hash (for the import id), per time column whether its text failed to parse, per
    column with a default whether the row got it, and the fraud flag when mapped."""
    schema = SCHEMAS[mapping.event_type]
    selected: list[Column] = []
    flags: list[Column] = []
    for f in schema.fields:
        spec = mapping.columns.get(f.name)
        default = mapping.defaults.get(f.name)
        if spec is None:  # a column the export lacks: its default, else (optional) null
            selected.append((F.lit(default) if default is not None else F.lit(None)).cast(f.dataType).alias(f.name))
            if default is not None:
                flags.append(F.lit(True).alias(DEFAULTED + f.name))
            continue
        column = _resolve(source, mapping, f.name, spec)
        if f.dataType == T.TimestampType():
            column, failed = _as_instant(source, column, spec)
            flags.append(failed.alias(UNPARSED + f.name))
        if default is not None:  # a value the row lacks (null, or blank text) gets the default
            text = F.trim(column.cast(T.StringType()))
            empty = column.isNull() | (text == "")
            flags.append(empty.alias(DEFAULTED + f.name))
            column = F.when(empty, F.lit(default)).otherwise(column)
        selected.append(column.alias(f.name))
    if mapping.fraud_flag is not None:
        raw = _resolve(source, mapping, "fraud_flag", mapping.fraud_flag)
        text = F.trim(raw.cast(T.StringType()))
        # true/false, 1/0, yes/no, y/n, t/f in any case; empty: not flagged.
        flag = F.when(raw.isNull() | (text == ""), F.lit(False)).otherwise(text.try_cast(T.BooleanType()))
        flags += [flag.alias(FRAUD_FLAG), flag.isNull().alias(FLAG_UNPARSED)]
    source_columns = [_quoted(name) for name in source.columns]
    return source.select(*selected, *flags,
                         F.to_json(F.struct(*source_columns)).alias(SOURCE_ROW),
                         F.xxhash64(*source_columns).alias(ROW_HASH))


def _resolve(source: DataFrame, mapping: Mapping, target: str, spec: Source) -> Column:
    if spec.kind == "constant":
        return F.lit(spec.value)
    if spec.kind == "column":
        if spec.value not in source.columns:
            raise IngestError(f"no column '{spec.value}' in the input, named by {mapping.describe(target)}; "
                              f"{_input_columns(source)}")
        return _quoted(spec.value)
    try:
        column = F.expr(spec.value)
        with _quiet_analysis_errors():
            _ = source.select(column).schema  # analysed now: an unknown column fails here, by name
    except AnalysisException as exc:
        missing = exc.getMessageParameters() or {}
        name = missing.get("objectName", "")
        what = f"no column {name} in the input" if name else f"the expression does not work: {exc.getCondition()}"
        raise IngestError(f"{what}, used by {mapping.describe(target)} ({spec.value}); "
                          f"{_input_columns(source)}") from None
    return column


@contextmanager
def _quiet_analysis_errors() -> Iterator[None]:
    """PySpark logs every analysis error with its stack trace to stderr; here the error is
    expected and turned into one line, so its loggers stay quiet meanwhile."""
    loggers = [logging.getLogger(name) for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger")]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in zip(loggers, before, strict=True):
            logger.disabled = disabled


def _input_columns(source: DataFrame) -> str:
    names = source.columns
    listed = "the input has the columns " + ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
        listed += " (one column: is the delimiter right? read_options: {sep: ...} in the mapping)"
    return listed


def _as_instant(source: DataFrame, column: Column, spec: Source) -> tuple[Column, Column]:
    """A UTC instant from text (parsed with the time format) or a naive timestamp (read in the
    source time zone, DST included: to_utc_timestamp); an instant stays as it is. Returns the
    instant and whether a present value failed to parse."""
    stored = source.select(column).schema.fields[0].dataType
    if isinstance(stored, T.StringType):
        text = F.trim(column)
        parsed = (F.try_to_timestamp(text, F.lit(spec.time_format)) if spec.time_format
                  else text.try_cast(T.TimestampType()))
        failed = text.isNotNull() & (text != "") & parsed.isNull()
    elif isinstance(stored, T.TimestampNTZType):
        parsed, failed = column.cast(T.TimestampType()), F.lit(False)
    else:  # an instant already (or a type validation will judge)
        return column, F.lit(False)
    if spec.time_zone:
        parsed = F.to_utc_timestamp(parsed, spec.time_zone)
    return parsed, failed
